"""The shared model loader: fetch (directory, az://, models:/), the one integrity rule, the session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgeloop.core.errors import (
    EdgeloopError,
    IntegrityError,
    InvalidModelError,
    ModelFetchError,
    ModelSessionError,
)
from edgeloop.core.model_card import MODEL_CARD_FILE, MODEL_FILE, ModelCard
from edgeloop.core.model_loader import (
    OrtSettings,
    fetch_model,
    fetch_verified,
    open_model,
    parse_registry_uri,
    verify_model,
)
from edgeloop.testing.models import build_tiny_model_dir


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("loader") / "m", size=32, version="4")


@pytest.fixture
def model(tmp_path: Path, built: Path) -> Path:
    """A private copy, safe to change."""
    return Path(shutil.copytree(built, tmp_path / "model"))


def _flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_card(directory: Path, **changes) -> None:
    card = json.loads((directory / MODEL_CARD_FILE).read_text())
    card.update(changes)
    (directory / MODEL_CARD_FILE).write_text(json.dumps(card))


def _with_extra_file(directory: Path, name: str = "labels.txt") -> None:
    (directory / name).write_text("ok\nscratch\ndent\nstain\n")
    ModelCard.load(directory).with_digests(directory).save(directory)


# -- verify ---------------------------------------------------------------------------------------------
def test_a_good_model_is_verified_opened_and_runs(model: Path):
    verified = verify_model(model)
    assert verified.card.version == "4" and verified.model_bytes == (model / MODEL_FILE).read_bytes()
    assert verified.session_source() == verified.model_bytes  # the bytes that were checked are loaded
    opened = open_model(model, OrtSettings(providers=["cpu"], intra_op_threads=1))
    assert opened.session_info.provider == "CPUExecutionProvider"
    probs, emb = opened.session.run(None, {"images": np.zeros((2, 3, 32, 32), np.float32)})
    assert probs.shape == (2, 4) and emb.shape == (2, 8)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_a_model_file_changed_after_its_card_was_written_is_refused(model: Path):
    _flip_a_bit(model / MODEL_FILE)
    for attempt in (verify_model, open_model, lambda d: ModelCard.load(d).verify(d)):
        with pytest.raises(IntegrityError, match="model.onnx has sha256 .* changed after the model") as info:
            attempt(model)
        assert str(model) in str(info.value) and "refused" in str(info.value)
        assert info.value.reason.startswith("model.onnx") and str(model) not in info.value.reason
    assert isinstance(info.value, EdgeloopError)  # the CLI prints it as one line


@pytest.mark.parametrize("files", [{}, {"labels.txt": "0" * 64}], ids=["no digests", "model not listed"])
def test_a_card_without_a_digest_for_the_model_file_is_refused(model: Path, files):
    (model / "labels.txt").write_text("x")
    _edit_card(model, files=files)
    with pytest.raises(IntegrityError, match="lists no digest for model.onnx"):
        open_model(model)
    with pytest.raises(IntegrityError, match="lists no digest for model.onnx"):
        ModelCard.load(model).verify(model)  # the card's own check is the same rule


def test_every_listed_file_must_be_there_unchanged(model: Path):
    _with_extra_file(model)
    assert verify_model(model).session_source() == model / MODEL_FILE  # may hold external data: by path
    (model / "labels.txt").write_text("ok\n")
    with pytest.raises(IntegrityError, match="labels.txt has sha256"):
        verify_model(model)
    (model / "labels.txt").unlink()
    with pytest.raises(IntegrityError, match="labels.txt is listed in the model card but missing"):
        open_model(model)
    (model / MODEL_FILE).unlink()
    with pytest.raises(IntegrityError, match="model.onnx is listed in the model card but missing"):
        verify_model(model)


def test_a_missing_or_invalid_card_is_an_invalid_model(tmp_path: Path, model: Path):
    with pytest.raises(InvalidModelError, match="no model_card.json in"):
        verify_model(tmp_path)
    _edit_card(model, labels="not a list")
    with pytest.raises(InvalidModelError, match="not a valid model card"):
        open_model(model)


def test_bytes_onnx_runtime_cannot_read_are_a_session_error(model: Path):
    (model / MODEL_FILE).write_bytes(b"not an onnx graph")
    ModelCard.load(model).with_digests(model).save(model)  # digests match: the file itself is bad
    with pytest.raises(ModelSessionError, match="ONNX Runtime cannot open the model"):
        open_model(model)


# -- fetch ----------------------------------------------------------------------------------------------
def test_fetch_a_local_directory(built: Path, tmp_path: Path):
    assert fetch_model(built).directory == built
    assert fetch_model(f"file://{built}").directory == built
    assert fetch_model(built.parent).directory == built  # the single sub-directory with a card
    with pytest.raises(ModelFetchError, match="does not exist"):
        fetch_model(tmp_path / "missing")
    with pytest.raises(ModelFetchError, match="holds no model_card.json"):
        fetch_model(tmp_path)
    for uri in ("models:/inspection@champion", "az://models/inspection/3"):
        with pytest.raises(ModelFetchError, match="needs edgeloop settings"):
            fetch_model(uri)
    assert parse_registry_uri("models:/inspection/7") == ("inspection", None, "7")
    with pytest.raises(ModelFetchError, match="models:/NAME@ALIAS or models:/NAME/VERSION"):
        parse_registry_uri("models:/a/b/c")


class FakeBlobStore:
    def __init__(self, blobs: dict[str, bytes]):
        self.blobs = blobs

    def list(self, container: str, prefix: str = ""):
        return [n.split("/", 1)[1] for n in self.blobs if n.startswith(f"{container}/{prefix}")]

    def download_to(self, uri, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.blobs[f"{uri.container}/{uri.path}"])
        return path


def test_fetch_a_blob_prefix_then_verify_it(built: Path, tmp_path: Path, monkeypatch):
    from edgeloop.core.blob import BlobStore

    blobs = {f"models/inspection/abc/{p.name}": p.read_bytes() for p in built.iterdir()}
    blobs["models/inspection/abc/../escape.txt"] = b"never written outside the download"
    store = FakeBlobStore(blobs)
    monkeypatch.setattr(BlobStore, "from_settings", classmethod(lambda cls, settings: store))
    verified = fetch_verified("az://models/inspection/abc", SimpleNamespace(), cache_dir=tmp_path / "c")
    assert verified.card.version == "4" and tmp_path / "c" in verified.directory.parents
    assert not any(tmp_path.rglob("escape.txt"))

    blobs[f"models/inspection/abc/{MODEL_FILE}"] = b"swapped in the store"
    with pytest.raises(IntegrityError, match="model.onnx has sha256"):
        fetch_verified("az://models/inspection/abc", SimpleNamespace(), cache_dir=tmp_path / "c")
    with pytest.raises(ModelFetchError, match="no blobs under az://models/other"):
        fetch_model("az://models/other", SimpleNamespace(), cache_dir=tmp_path / "c")


class FakeRegistry:
    """The MLflow calls the loader makes, over local directories: version 3 of 'inspection' is champion."""

    def __init__(self, sources: dict[str, Path]):
        self.sources = sources
        self.downloads = 0

    def client(self, tracking_uri=None, registry_uri=None):
        from mlflow.exceptions import MlflowException

        registry = self

        class Client:
            def get_model_version_by_alias(self, name, alias):
                if (name, alias) != ("inspection", "champion"):
                    raise MlflowException(f"Registered model alias {alias} not found.")
                return SimpleNamespace(version=3)

            def get_model_version(self, name, version):
                if str(version) not in registry.sources:
                    raise MlflowException(f"Model Version (name={name}, version={version}) not found")
                return SimpleNamespace(version=int(version))

            def get_model_version_download_uri(self, name, version):
                return str(registry.sources[str(version)])

        return Client()

    def download_artifacts(self, artifact_uri, dst_path, tracking_uri=None):
        self.downloads += 1
        return shutil.copytree(artifact_uri, dst_path, dirs_exist_ok=True)


@pytest.fixture
def registry(built: Path, monkeypatch) -> FakeRegistry:
    import mlflow.artifacts
    import mlflow.tracking

    fake = FakeRegistry({"3": built})
    monkeypatch.setattr(mlflow.tracking, "MlflowClient", fake.client)
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", fake.download_artifacts)
    return fake


def test_a_registered_version_is_cached_by_version_and_verified_on_every_use(registry, tmp_path: Path):
    settings = SimpleNamespace(mlflow_tracking_uri=lambda: "http://mlflow.invalid")
    cache = tmp_path / "cache"
    fetched = fetch_model("models:/inspection@champion", settings, cache)
    assert fetched.registry_version == "3" and fetched.alias == "champion"
    assert fetched.directory == cache / "inspection" / "3"
    assert fetch_model("models:/inspection/3", settings, cache).directory == fetched.directory
    assert registry.downloads == 1  # a version's files never change: fetched once
    assert not [p for p in (cache / "inspection").iterdir() if p.name.startswith(".partial-")]

    _flip_a_bit(fetched.directory / MODEL_FILE)
    with pytest.raises(IntegrityError, match="model.onnx has sha256"):
        fetch_verified("models:/inspection@champion", settings, cache)
    with pytest.raises(ModelFetchError, match="alias canary not found"):
        fetch_model("models:/inspection@canary", settings, cache)
    no_cache = fetch_model("models:/inspection/3", settings)  # without a cache: a fresh directory
    assert cache not in no_cache.directory.parents and verify_model(no_cache.directory).card.version == "4"


def test_an_mlmodel_that_would_load_another_file_is_refused(model: Path):
    """A registered version is an MLflow model: its MLmodel must make MLflow load the verified model.onnx."""
    flavors = "flavors:\n  onnx:\n    data: {onnx}\n  python_function:\n    data: {pyfunc}\n    loader_module: mlflow.onnx\n"
    (model / "MLmodel").write_text(flavors.format(onnx=MODEL_FILE, pyfunc=MODEL_FILE))
    verify_model(model)
    (model / "MLmodel").write_text(flavors.format(onnx=MODEL_FILE, pyfunc="other.onnx"))
    with pytest.raises(IntegrityError, match="MLmodel makes MLflow load .*other.onnx"):
        verify_model(model)
    (model / "MLmodel").write_text("flavors: [unclosed\n")
    with pytest.raises(IntegrityError, match="not a readable MLflow model descriptor"):
        verify_model(model)


@pytest.mark.parametrize(
    ("tampered", "message"),
    [
        ("loader_module: mlflow.onnx", "loader_module: evil.loader"),
        ("loader_module: mlflow.onnx", "loader_module: mlflow.onnx\n    code: code"),
        ("loader_module: mlflow.onnx", "loader_module: mlflow.onnx\n    python_model: python_model.pkl"),
        ("    code: null\n", "    code: src\n"),
        ("flavors:\n", "flavors:\n  sklearn:\n    pickled_model: model.pkl\n"),
    ],
)
def test_an_mlmodel_that_would_run_anything_else_is_refused(model: Path, tampered, message):
    """Keeping ``data: model.onnx`` is not enough: another loader, code or a pickle would run unverified."""
    good = (
        "flavors:\n  onnx:\n    code: null\n    data: model.onnx\n  python_function:\n    data: model.onnx\n"
        "    env:\n      virtualenv: python_env.yaml\n    loader_module: mlflow.onnx\n"
    )
    (model / "MLmodel").write_text(good)
    verify_model(model)
    (model / "MLmodel").write_text(good.replace(tampered, message))
    with pytest.raises(IntegrityError, match="MLmodel"):
        verify_model(model)


@pytest.mark.parametrize(
    "doc", ["flavors: [x]\n", "flavors:\n  onnx: x\n  python_function: y\n", "- a list\n"]
)
def test_a_malformed_mlmodel_is_an_integrity_error_not_a_crash(model: Path, doc):
    (model / "MLmodel").write_text(doc)
    with pytest.raises(IntegrityError, match="not a readable MLflow model descriptor"):
        verify_model(model)
