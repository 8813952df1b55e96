"""`edgeloop stream --model DIR` refuses a model that fails its card's digests, like the server does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeloop.cli import cli
from edgeloop.core.errors import IntegrityError
from edgeloop.stream.predictors import OnnxPredictor
from edgeloop.testing.models import build_tiny_model_dir


@pytest.fixture(scope="module")
def good_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("stream-integrity") / "m", size=64, version="1")


@pytest.fixture
def model(tmp_path: Path, good_model: Path) -> Path:
    return Path(shutil.copytree(good_model, tmp_path / "model"))


def test_a_tampered_model_stops_the_stream_before_it_starts(model: Path, short_video: Path):
    assert OnnxPredictor(model).model_version == "1"  # the untouched copy loads
    data = bytearray((model / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (model / "model.onnx").write_bytes(bytes(data))
    result = CliRunner().invoke(cli, ["stream", "--model", str(model), "--no-mqtt", str(short_video)])
    assert result.exit_code == 2, result.output
    assert f"error: the model in {model} is refused: model.onnx has sha256" in result.output
    assert "Traceback" not in result.output and "finished" not in result.output  # no source was read


def test_a_card_without_digests_is_refused_not_warned_about(model: Path):
    card = json.loads((model / "model_card.json").read_text())
    card["files"] = {}
    (model / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(IntegrityError, match="lists no digest for model.onnx"):
        OnnxPredictor(model)
