"""The model digest is bound to what is served: it covers the card, and a pinned digest refuses
any model whose card or files differ from the approved one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgeloop.core.errors import IntegrityError, ModelFetchError
from edgeloop.core.model_card import MODEL_CARD_FILE, ModelCard
from edgeloop.core.model_loader import (
    REGISTRY_DIGEST_TAG,
    inside,
    open_model,
    parse_registry_uri,
    verify_model,
)
from edgeloop.testing.models import build_tiny_model_dir


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("digest") / "m", size=32, version="1")


@pytest.fixture
def model(tmp_path: Path, built: Path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "model"))


def _edit_card(directory: Path, **changes) -> None:
    card = json.loads((directory / MODEL_CARD_FILE).read_text())
    card.update(changes)
    (directory / MODEL_CARD_FILE).write_text(json.dumps(card, indent=2))


def test_the_digest_survives_save_and_load_and_ignores_formatting(model: Path):
    card = ModelCard.load(model)
    digest = card.digest()
    card.save(model)
    assert ModelCard.load(model).digest() == digest
    doc = json.loads((model / MODEL_CARD_FILE).read_text())
    (model / MODEL_CARD_FILE).write_text(json.dumps(doc, sort_keys=True))  # same content, other bytes
    assert ModelCard.load(model).digest() == digest


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: {"labels": list(reversed(c["labels"]))},
        lambda c: {"preprocessing": {**c["preprocessing"], "mean": [0.5, 0.5, 0.5]}},
        lambda c: {"input_name": "pixels"},
        lambda c: {"name": "other"},
    ],
    ids=["label order", "preprocessing", "input name", "name"],
)
def test_an_edited_card_changes_the_digest_and_is_refused_where_one_is_pinned(model: Path, edit):
    approved = ModelCard.load(model).digest()
    _edit_card(model, **edit(json.loads((model / MODEL_CARD_FILE).read_text())))
    assert ModelCard.load(model).digest() != approved
    verify_model(model)  # the files still match the card: only a pin can tell
    with pytest.raises(IntegrityError, match="pins"):
        verify_model(model, expected_digest=approved)
    with pytest.raises(IntegrityError, match="pins"):
        open_model(model, expected_digest=approved)


def test_a_pinned_digest_that_matches_opens(model: Path):
    digest = ModelCard.load(model).digest()
    assert verify_model(model, expected_digest=digest).card.digest() == digest
    assert verify_model(model, expected_digest="sha256:" + digest.upper()).directory == model
    with pytest.raises(IntegrityError, match="malformed"):
        verify_model(model, expected_digest="unset")


@pytest.mark.parametrize("entry", ["../outside.bin", "/etc/hostname", "sub/../../outside.bin"])
def test_a_card_listing_files_outside_its_directory_is_refused(model: Path, entry: str):
    card = json.loads((model / MODEL_CARD_FILE).read_text())
    card["files"][entry] = "0" * 64
    (model / MODEL_CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(IntegrityError, match="outside the model directory"):
        verify_model(model)


@pytest.mark.parametrize("name", ["../x", "/abs/x", "a/../../x"])
def test_downloads_cannot_land_outside_their_directory(tmp_path: Path, name: str):
    with pytest.raises(ModelFetchError, match="outside"):
        inside(tmp_path / "dl", name, "az://models/m")
    assert inside(tmp_path / "dl", "v1/model.onnx", "az://models/m") == tmp_path / "dl" / "v1" / "model.onnx"


@pytest.mark.parametrize("uri", ["models:/..@champion", "models:/../1", "models:/m/..", "models:/.@a"])
def test_registry_uris_cannot_name_parent_directories(uri: str):
    with pytest.raises(ModelFetchError):
        parse_registry_uri(uri)


def test_producers_and_consumers_agree_on_names():
    """The registry writes the tag the loader checks; the InferenceService sets the variable the server reads."""
    from edgeloop.deploy.validate import DIGEST_ENV
    from edgeloop.pipelines.registry import MODEL_DIGEST
    from edgeloop.serving.__main__ import DIGEST_ENV as SERVING_DIGEST_ENV

    assert REGISTRY_DIGEST_TAG == MODEL_DIGEST
    assert SERVING_DIGEST_ENV == DIGEST_ENV
