"""Loading a version and moving the champion under load, and refusing a tampered model, on a live server."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import onnxruntime as ort

from edgeloop.core.preprocessing import Preprocess, PreprocessConfig
from edgeloop.serving.client import ClientError
from edgeloop.serving.launcher import running_server
from edgeloop.testing.media import random_frames
from edgeloop.testing.waits import join

ADMIN = "/edgeloop/admin/models/inspection"


def test_hot_switch_of_the_champion_under_load_drops_no_request(model_dirs):
    frames = random_frames(2, 64, seed=21)
    x = Preprocess(PreprocessConfig(size=64)).batch(list(frames))
    expected = {
        v: ort.InferenceSession(str(model_dirs[v] / "model.onnx")).run(None, {"images": x})[0]
        for v in ("1", "3")
    }
    allow = ["--admin_allow_source", str(model_dirs["1"].parent)]
    with running_server([model_dirs["1"]], admin=True, extra_args=allow) as srv:
        stop = threading.Event()
        failures: list[str] = []
        seen: dict[str, int] = {}
        lock = threading.Lock()

        def hammer(kind: str) -> None:
            client = srv.grpc_client() if kind == "grpc" else srv.rest_client()
            with client:
                while not stop.is_set():
                    try:
                        pred = client.infer_frames(frames)
                        np.testing.assert_allclose(
                            pred.probabilities, expected[pred.model_version], atol=1e-5
                        )
                        with lock:
                            seen[pred.model_version] = seen.get(pred.model_version, 0) + 1
                    except Exception as e:  # any failure at all fails the test
                        failures.append(f"{kind}: {type(e).__name__}: {e}")

        threads = [
            threading.Thread(target=hammer, args=(k,), name=f"{k}-client-{i}")
            for i, k in enumerate(("grpc", "grpc", "rest", "rest"))
        ]
        for t in threads:
            t.start()
        time.sleep(0.5)
        r = httpx.post(
            srv.rest_url + ADMIN + "/versions",
            json={"uri": str(model_dirs["3"]), "aliases": ["candidate"]},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert r.json()["version"] == "3" and r.json()["aliases"]["champion"] == "1"
        time.sleep(0.5)
        r = httpx.put(srv.rest_url + ADMIN + "/aliases/champion", json={"version": "3"})
        assert r.status_code == 200 and r.json()["aliases"]["champion"] == "3"
        switched_at = dict(seen)
        time.sleep(0.5)
        r = httpx.delete(srv.rest_url + ADMIN + "/versions/1", timeout=60)  # drains, then unloads
        assert r.status_code == 200 and r.json()["versions"] == ["3"]
        time.sleep(0.3)
        stop.set()
        for t in threads:
            join(t, 30, f"the {t.name} of the server at {srv.rest_url} (gRPC {srv.grpc_target}) to stop")
        assert not failures, failures[:5]
        assert switched_at.get("1", 0) > 0 and seen.get("3", 0) > switched_at.get("3", 0)
        with srv.grpc_client() as g:
            assert g.infer_frames(frames).model_version == "3"


def test_a_tampered_version_is_refused_and_the_champion_keeps_serving(server, model_dirs):
    r = httpx.post(
        server.rest_url + ADMIN + "/versions",
        json={"uri": str(model_dirs["tampered"]), "version": "9", "aliases": ["champion"]},
        timeout=60,
    )
    assert r.status_code == 422
    assert "sha256" in r.json()["error"] and "refused" in r.json()["error"]
    metrics = httpx.get(server.rest_url + "/metrics").text
    assert 'edgeloop_serving_integrity_failures_total{model="inspection"} 1.0' in metrics
    with server.grpc_client() as g:
        pred = g.infer_frames(random_frames(1, 64))
        assert pred.model_version == "1"
        try:
            g.infer_frames(random_frames(1, 64), version="9")
            raise AssertionError("version 9 must not exist")
        except ClientError as e:
            assert e.status == "NOT_FOUND"


def test_a_tampered_model_stops_the_server_from_starting(model_dirs):
    import pytest

    from edgeloop.serving.launcher import ServerStartError

    with pytest.raises(ServerStartError, match="sha256"), running_server([model_dirs["tampered"]]):
        pass
