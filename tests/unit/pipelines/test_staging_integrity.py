"""The staging evaluation refuses a candidate or reference model that fails its card's digests,
before the staging server is started."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeloop.core.errors import IntegrityError
from edgeloop.pipelines.staging import run_staging_evaluation
from edgeloop.testing.models import build_linear_model_dir


def _tamper(model: Path) -> Path:
    data = bytearray((model / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (model / "model.onnx").write_bytes(bytes(data))
    return model


def _no_server(*args, **kwargs):
    raise AssertionError("the staging server must not start for a refused model")


@pytest.mark.parametrize("which", ["candidate", "reference"])
def test_a_tampered_model_is_refused_before_serving(tmp_path: Path, which: str):
    candidate = build_linear_model_dir(tmp_path / "candidate")
    reference = build_linear_model_dir(tmp_path / "reference")
    _tamper(candidate if which == "candidate" else reference)
    (tmp_path / "ds").mkdir()
    with pytest.raises(IntegrityError, match="model.onnx has sha256 .* changed after the model") as info:
        run_staging_evaluation(
            None,
            tmp_path / "ds",
            candidate,
            reference_model_dir=reference,
            compare_with_champion=False,
            serve=_no_server,
        )
    assert str(tmp_path / which) in str(info.value)  # says which model
