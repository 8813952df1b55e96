"""Execution provider choice with fallback, and the thread settings a session gets (the shared loader's)."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from edgeloop.core.model_loader import OrtSettings, choose_providers, open_session, provider_name


def test_choose_providers_keeps_the_configured_order_of_what_exists_and_ends_with_cpu():
    available = ["CPUExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider"]
    assert choose_providers(["tensorrt", "cuda", "openvino", "cpu"], available) == [
        "CUDAExecutionProvider",
        "OpenVINOExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert choose_providers(["openvino", "cuda"], available)[0] == "OpenVINOExecutionProvider"
    assert choose_providers(["tensorrt"], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert provider_name("TRT") == "TensorrtExecutionProvider"


def test_session_options_are_set_deliberately():
    so = OrtSettings(intra_op_threads=3, allow_spinning=False).session_options()
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 1
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_a_provider_that_fails_to_start_falls_back_to_the_next(tiny_dirs, monkeypatch):
    real = ort.InferenceSession

    def flaky(path, sess_options=None, providers=None):
        if providers[0] == "CUDAExecutionProvider":
            raise RuntimeError("libcudart.so.12: cannot open shared object file")
        return real(path, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(ort, "InferenceSession", flaky)
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    sess, info = open_session(tiny_dirs["1"] / "model.onnx", OrtSettings(providers=["cuda", "cpu"]))
    assert info.provider == "CPUExecutionProvider"
    assert info.tried and info.tried[0][0] == "CUDAExecutionProvider" and "libcudart" in info.tried[0][1]
    assert sess.get_inputs()[0].name == "images"


def test_no_provider_at_all_is_an_error(tiny_dirs, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("nope")

    monkeypatch.setattr(ort, "InferenceSession", broken)
    with pytest.raises(RuntimeError, match="no execution provider"):
        open_session(tiny_dirs["1"] / "model.onnx", OrtSettings())
