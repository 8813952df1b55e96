"""The kserve model end to end in-process (no server): any input kind -> label + probabilities."""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.infer_type import InferInput, InferRequest

from edgeloop.core.preprocessing import Preprocess, PreprocessConfig
from edgeloop.serving import codec
from edgeloop.serving.client import grpc_request, grpc_response
from edgeloop.serving.errors import InvalidInputError, VersionNotFoundError
from edgeloop.serving.model import OnnxImageModel
from edgeloop.serving.sources import resolve
from edgeloop.testing.media import encode_jpeg, random_frames
from edgeloop.testing.oip import binary_request


@pytest.fixture(scope="module")
def model(tiny_dirs):
    m = OnnxImageModel(
        "inspection", [resolve(str(tiny_dirs["1"])), resolve(f"{tiny_dirs['2']}#alias=candidate")]
    )
    assert m.load() and m.ready
    return m


def reference(tiny_dir, frames):
    x = Preprocess(PreprocessConfig(size=64)).batch(list(frames))
    return ort.InferenceSession(str(tiny_dir / "model.onnx")).run(None, {"images": x})


def infer(model, req):
    return asyncio.run(model(req))[0]


def frames_request(frames, version=None, **params):
    inp = InferInput("images", list(frames.shape), "UINT8")
    inp._raw_data = frames.tobytes()
    return InferRequest("inspection", [inp], parameters=params or None, model_version=version)


def test_frames_give_the_same_answer_as_onnx_runtime(model, tiny_dirs):
    frames = random_frames(4, 64, seed=5)
    resp = infer(model, frames_request(frames))
    probs, _ = reference(tiny_dirs["1"], frames)
    out = {o.name: o.data for o in resp.outputs}
    np.testing.assert_allclose(out["probabilities"], probs, atol=1e-5)
    labels = np.array(["ok", "scratch", "dent", "stain"])[probs.argmax(1)]
    assert [b.decode() for b in out["label"]] == list(labels)
    assert resp.model_version == "1" and "embedding" not in out


def test_versions_aliases_and_embedding(model, tiny_dirs):
    frames = random_frames(2, 64, seed=6)
    resp = infer(model, frames_request(frames, "candidate", embedding=True))
    probs, emb = reference(tiny_dirs["2"], frames)
    out = {o.name: o.data for o in resp.outputs}
    assert resp.model_version == "2"
    np.testing.assert_allclose(out["probabilities"], probs, atol=1e-5)
    np.testing.assert_allclose(out["embedding"], emb, atol=1e-5)
    with pytest.raises(VersionNotFoundError):
        infer(model, frames_request(frames, "nope"))


def test_grpc_request_from_our_client_is_decoded_by_kserve_and_served(model, tiny_dirs):
    jpegs = [encode_jpeg(f) for f in random_frames(3, 100, seed=7)]
    wire = grpc_request("inspection", jpegs, version="1", embedding=True).SerializeToString()
    kreq = InferRequest.from_grpc(pb.ModelInferRequest.FromString(wire))
    resp = infer(model, kreq)
    pred = grpc_response(pb.ModelInferResponse.FromString(resp.to_grpc().SerializeToString()))
    assert len(pred.labels) == 3 and pred.embedding.shape == (3, 8) and pred.model_version == "1"


def test_v1_dict_requests(model):
    resp = infer(model, {"instances": random_frames(2, 64).tolist(), "parameters": {"model_version": "2"}})
    assert resp["model_version"] == "2" and len(resp["predictions"]) == 2
    assert set(resp["predictions"][0]) == {"label", "probabilities"}


def test_wrong_input_name_and_unknown_outputs_are_client_errors(model):
    frames = random_frames(1, 64)
    req = frames_request(frames)
    req.inputs[0]._name = "pixels"
    with pytest.raises(InvalidInputError, match="'images'"):
        infer(model, req)
    req = codec.decode_rest_v2(*_binary(frames, outputs=[{"name": "logits"}]), "inspection")
    with pytest.raises(InvalidInputError, match="unknown outputs"):
        infer(model, req)


def _binary(frames, outputs=None):
    return binary_request(frames, "UINT8", outputs=outputs)


def test_metadata_names_versions_aliases_and_provider(model):
    md = model.metadata()
    assert md["versions"] == ["1", "2"] and md["platform"] == "onnxruntime_onnx"
    assert md["parameters"]["aliases"] == {"champion": "1", "candidate": "2"}
    assert md["parameters"]["execution_provider"] == "CPUExecutionProvider"
    assert model.metadata("candidate")["parameters"]["version"] == "2"
