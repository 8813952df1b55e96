"""The server refuses a model whose files changed after its card was written, through its load path."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from edgeloop.serving.errors import IntegrityRefusedError, http_status
from edgeloop.serving.model import OnnxImageModel
from edgeloop.serving.sources import resolve


def _count(metric: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def test_the_server_refuses_a_tampered_model_and_does_not_become_ready(tiny_dirs, tiny_copy):
    onnx_path = tiny_copy / "model.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, after the card was written
    onnx_path.write_bytes(bytes(data))
    refused = ("edgeloop_serving_integrity_failures_total", {"model": "guarded"})
    failed = ("edgeloop_serving_model_load_failures_total", {"model": "guarded", "reason": "integrity"})
    before = (_count(*refused), _count(*failed))
    model = OnnxImageModel("guarded", [resolve(str(tiny_dirs["2"])), resolve(f"{tiny_copy}#version=7")])
    with pytest.raises(IntegrityRefusedError) as info:
        model.load()  # what the server runs before it listens: all versions must pass
    message = info.value.message
    assert message.startswith("model guarded version 7 refused: model.onnx has sha256")
    assert "changed after the model was exported" in message
    assert str(tiny_copy) not in message  # the client is not told server paths
    assert http_status(info.value) == 422
    assert not model.ready
    assert (_count(*refused), _count(*failed)) == (before[0] + 1, before[1] + 1)  # counted once
