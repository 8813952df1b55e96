"""The fast paths (direct gRPC/REST handlers, probabilities-only runs, several ONNX Runtime sessions)
answer exactly what bare ONNX Runtime computes, under concurrent mixed traffic."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import onnxruntime as ort

from edgeloop.core.preprocessing import Preprocess, PreprocessConfig
from edgeloop.serving.launcher import running_server
from edgeloop.testing.media import random_frames


def test_two_sessions_and_mixed_outputs_match_bare_onnx_runtime(model_dirs):
    frames = random_frames(24, 64, seed=5)
    x = Preprocess(PreprocessConfig(size=64)).batch(list(frames))
    probs, emb = ort.InferenceSession(str(model_dirs["1"] / "model.onnx")).run(None, {"images": x})
    extra = ["--ort_sessions", "2", "--max_batch_size", "8", "--max_batch_wait_ms", "5"]
    with running_server([model_dirs["1"]], extra_args=extra) as srv:
        md = httpx.get(srv.rest_url + "/v2/models/inspection").json()
        assert md["parameters"]["sessions"] == 2

        def one(i: int) -> None:
            client = srv.grpc_client() if i % 2 else srv.rest_client()
            want_embedding = i % 3 == 0
            rows = slice(i % 24, i % 24 + 1 + i % 3)
            with client:
                pred = client.infer_frames(frames[rows], embedding=want_embedding)
            np.testing.assert_allclose(pred.probabilities, probs[rows], atol=1e-5)
            if want_embedding:
                assert pred.embedding is not None
                np.testing.assert_allclose(pred.embedding, emb[rows], atol=1e-5)
            else:
                assert pred.embedding is None

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(96)))  # re-raises the first failure
        batches = [ln for ln in httpx.get(srv.rest_url + "/metrics").text.splitlines()]
        sizes = [ln for ln in batches if ln.startswith("edgeloop_serving_batch_size_count")]
        assert sizes and float(sizes[0].split()[-1]) < 96  # requests shared runs


def test_default_server_runs_one_session_per_core_and_answers_like_bare_onnx_runtime(model_dirs):
    """With no options: one session per usable core, batches of at most 4 rows;
    concurrent gRPC and REST clients still get exactly what bare ONNX Runtime computes."""
    import os

    frames = random_frames(16, 64, seed=9)
    x = Preprocess(PreprocessConfig(size=64)).batch(list(frames))
    probs = ort.InferenceSession(str(model_dirs["1"] / "model.onnx")).run(["probabilities"], {"images": x})[0]
    with running_server([model_dirs["1"]]) as srv:
        md = httpx.get(srv.rest_url + "/v2/models/inspection").json()
        assert md["parameters"]["sessions"] == len(os.sched_getaffinity(0))
        assert md["parameters"]["batching"]["max_batch_size"] == 4

        def one(i: int) -> None:
            with srv.grpc_client() if i % 2 else srv.rest_client() as client:
                pred = client.infer_frames(frames[i % 16 : i % 16 + 1])
            np.testing.assert_allclose(pred.probabilities, probs[i % 16 : i % 16 + 1], atol=1e-5)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(64)))


def test_h2load_counts_only_what_the_server_answered(model_dirs):
    """The benchmark's gRPC load generator (h2load, installed by `make setup`) drives real
    ModelInfer calls: the server's own counters show every answered image and no errors."""
    from benchmarks import loadgen
    from benchmarks.serving_bench import served_images

    frames = random_frames(1, 64, seed=2)
    with running_server([model_dirs["1"]]) as srv:
        before = served_images(srv.rest_url, "inspection")
        r = loadgen.h2load_grpc(srv.grpc_target, loadgen.grpc_body("inspection", frames), 1.0, 4)
        after = served_images(srv.rest_url, "inspection")
    assert r is not None, "h2load is missing: `make setup` installs it (Debian package nghttp2-client)"
    assert r["requests"] > 0 and r["errors"] == 0 and r["mean_ms"] > 0
    assert before is not None and after is not None
    assert after[1] == before[1]  # no errors counted by the server
    assert 0 <= after[0] - before[0] - r["requests"] <= 4  # at most the calls in flight at the end
