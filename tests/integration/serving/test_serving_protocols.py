"""Every protocol against a real server, checked against ONNX Runtime on the same inputs."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest

from edgeloop.core.preprocessing import Preprocess, PreprocessConfig, decode_image
from edgeloop.testing.media import encode_jpeg, random_frames

LABELS = np.array(["ok", "scratch", "dent", "stain"])


def ort_reference(model_dir, x):
    return ort.InferenceSession(str(model_dir / "model.onnx")).run(None, {"images": x})


def normalised(frames):
    return Preprocess(PreprocessConfig(size=64)).batch(list(frames))


def test_rest_binary_and_grpc_match_onnx_runtime(server, model_dirs):
    frames = random_frames(5, 64, seed=11)
    probs, emb = ort_reference(model_dirs["1"], normalised(frames))
    with server.grpc_client() as g, server.rest_client() as r:
        for pred in (g.infer_frames(frames, embedding=True), r.infer_frames(frames, embedding=True)):
            np.testing.assert_allclose(pred.probabilities, probs, atol=1e-5)
            np.testing.assert_allclose(pred.embedding, emb, atol=1e-5)
            assert pred.labels == list(LABELS[probs.argmax(1)]) and pred.model_version == "1"


def test_rest_json_v2_and_jpeg_bytes(server, model_dirs):
    frames = random_frames(2, 120, seed=12)
    jpegs = [encode_jpeg(f) for f in frames]
    probs, _ = ort_reference(
        model_dirs["1"], Preprocess(PreprocessConfig(size=64)).batch([decode_image(j) for j in jpegs])
    )
    body = {
        "inputs": [
            {
                "name": "images",
                "shape": [2],
                "datatype": "BYTES",
                "data": [{"b64": base64.b64encode(j).decode()} for j in jpegs],
            }
        ]
    }
    r = httpx.post(f"{server.rest_url}/v2/models/inspection/infer", json=body)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    np.testing.assert_allclose(np.array(out["probabilities"]["data"]).reshape(2, 4), probs, atol=1e-5)
    assert out["label"]["data"] == list(LABELS[probs.argmax(1)])
    with server.grpc_client() as g:
        np.testing.assert_allclose(g.infer_images(jpegs).probabilities, probs, atol=1e-5)


def test_v1_predict(server, model_dirs):
    frames = random_frames(2, 64, seed=13)
    probs, _ = ort_reference(model_dirs["1"], normalised(frames))
    r = httpx.post(f"{server.rest_url}/v1/models/inspection:predict", json={"instances": frames.tolist()})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    np.testing.assert_allclose([p["probabilities"] for p in preds], probs, atol=1e-5)


def test_kserve_own_clients(server, model_dirs):
    from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

    x = normalised(random_frames(3, 64, seed=14))
    probs, _ = ort_reference(model_dirs["2"], x)

    async def main():
        inp = InferInput("images", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        req = InferRequest("inspection", [inp], model_version="candidate")
        grpc_client = InferenceGRPCClient(server.grpc_target, timeout=30)
        g = await grpc_client.infer(req)
        await grpc_client.close()
        inp = InferInput("images", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=False)
        rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        r = await rest.infer(server.rest_url, InferRequest("inspection", [inp]), model_name="inspection")
        await rest.close()
        return g, r

    g, r = asyncio.run(main())
    assert g.model_version == "2"
    np.testing.assert_allclose(g.get_output_by_name("probabilities").as_numpy(), probs, atol=1e-5)
    assert [
        s.decode() if isinstance(s, bytes) else s for s in g.get_output_by_name("label").as_numpy()
    ] == list(LABELS[probs.argmax(1)])
    # no version: the champion (kserve's REST client drops model_version, so compare the numbers)
    champion, _ = ort_reference(model_dirs["1"], x)
    np.testing.assert_allclose(r.get_output_by_name("probabilities").as_numpy(), champion, atol=1e-5)


@pytest.mark.parametrize("version,expected", [("1", "1"), ("2", "2"), ("champion", "1"), ("candidate", "2")])
def test_version_and_alias_selection_on_both_protocols(server, model_dirs, version, expected):
    frames = random_frames(2, 64, seed=15)
    probs, _ = ort_reference(model_dirs[expected], normalised(frames))
    with server.grpc_client() as g, server.rest_client() as r:
        for pred in (g.infer_frames(frames, version=version), r.infer_frames(frames, version=version)):
            assert pred.model_version == expected
            np.testing.assert_allclose(pred.probabilities, probs, atol=1e-5)


def test_metadata_ready_and_metrics(server):
    md = httpx.get(f"{server.rest_url}/v2/models/inspection").json()
    assert md["versions"] == ["1", "2"] and md["parameters"]["execution_provider"] == "CPUExecutionProvider"
    assert (
        httpx.get(f"{server.rest_url}/v2/models/inspection/versions/candidate/ready").json()["version"] == "2"
    )
    with server.grpc_client() as g:
        assert g.ready() and g.metadata("2")["versions"] == ["1", "2"]
    # concurrency so the batcher has something to batch, then read the metrics
    with server.rest_client() as r:
        r.infer_frames(random_frames(1, 64))
    metrics = httpx.get(f"{server.rest_url}/metrics").text
    for name in (
        "edgeloop_serving_request_seconds_bucket",
        "edgeloop_serving_batch_size_bucket",
        "edgeloop_serving_queue_rows",
        "edgeloop_serving_model_info{digest=",
        'protocol="rest_v2_binary"',
        'protocol="grpc"',
    ):
        assert name in metrics, name
    assert 'execution_provider="CPUExecutionProvider"' in metrics


def test_concurrent_grpc_requests_are_batched(server):
    from edgeloop.serving.client import AsyncGrpcClient

    frames = random_frames(1, 64)

    async def main():
        c = AsyncGrpcClient(server.grpc_target)
        preds = await asyncio.gather(*(c.infer(frames) for _ in range(64)))
        await c.aclose()
        return preds

    preds = asyncio.run(main())
    assert len({p.labels[0] for p in preds}) == 1
    metrics = httpx.get(f"{server.rest_url}/metrics").text
    sizes = [
        line
        for line in metrics.splitlines()
        if line.startswith("edgeloop_serving_batch_size_bucket")
        and 'le="1.0"' in line
        and 'version="1"' in line
    ]
    count = [
        line
        for line in metrics.splitlines()
        if line.startswith("edgeloop_serving_batch_size_count") and 'version="1"' in line
    ]
    assert float(sizes[0].split()[-1]) < float(count[0].split()[-1]), "some batches should hold >1 row"


def test_binary_outputs_on_request(server):
    frames = random_frames(1, 64)
    raw = frames.tobytes()
    hdr = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [1, 64, 64, 3],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    )
    r = httpx.post(
        f"{server.rest_url}/v2/models/inspection/infer",
        content=hdr + raw,
        headers={"Inference-Header-Content-Length": str(len(hdr))},
    )
    assert r.status_code == 200
    hl = int(r.headers["inference-header-content-length"])
    doc = orjson.loads(r.content[:hl])
    assert [o["name"] for o in doc["outputs"]] == ["probabilities"]
    assert np.frombuffer(r.content[hl:], np.float32).shape == (4,)
