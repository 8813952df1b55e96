"""`edgeloop monitor scan` and the model runner refuse a model that fails its card's digests."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeloop.cli import cli
from edgeloop.core.errors import IntegrityError
from edgeloop.monitoring.model import ModelRunner
from edgeloop.testing.models import build_tiny_model_dir


@pytest.fixture
def tampered(tmp_path: Path) -> Path:
    model = build_tiny_model_dir(tmp_path / "model", size=32, version="1")
    assert ModelRunner(model).card.version == "1"  # loads before the change
    data = bytearray((model / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (model / "model.onnx").write_bytes(bytes(data))
    return model


def test_a_scan_with_a_tampered_model_is_refused_before_it_reads_traffic(
    tampered: Path, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # no stack, no state dir needed: the refusal comes first
    scan = ["monitor", "scan", "--model-dir", str(tampered)]
    loop = ["monitor", "run", "--model-dir", str(tampered), "--metrics-port", "0", "--iterations", "1"]
    for args in (scan, loop):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert f"error: the model in {tampered} is refused: model.onnx has sha256" in result.output
        assert "Traceback" not in result.output


def test_the_model_runner_refuses_a_tampered_model(tampered: Path):
    with pytest.raises(IntegrityError, match="model.onnx has sha256 .* changed after the model"):
        ModelRunner(tampered)
