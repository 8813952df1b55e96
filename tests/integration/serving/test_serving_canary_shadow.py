"""Canary and shadow on a live server: the share a canary gets, stickiness, live changes through the
(authenticated) admin API, and a shadow's outputs in the payload log while the champion answers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from edgeloop.core.blob import BlobStore
from edgeloop.core.payload_log import read_window
from edgeloop.core.preprocessing import Preprocess, PreprocessConfig
from edgeloop.serving.canary import CanaryNotReady, compare_versions, require_canary, routed_requests
from edgeloop.serving.launcher import running_server
from edgeloop.serving.routing import CLIENT_KEY_HEADER
from edgeloop.testing.media import random_frames
from edgeloop.testing.oip import binary_request

TRAFFIC = "/edgeloop/admin/models/inspection/traffic"
TOKEN = "canary-admin-token"


def _routed(client: httpx.Client, model: str = "inspection") -> dict[str, int]:
    return routed_requests(client.get("/metrics").text, model)


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {v: after.get(v, 0) - before.get(v, 0) for v in after}


def test_a_ten_percent_canary_gets_ten_percent_of_unversioned_requests(model_dirs):
    body, hlen = binary_request(random_frames(1, 64, seed=3))
    headers = {"inference-header-content-length": str(hlen), "content-type": "application/octet-stream"}
    with (
        running_server(
            [model_dirs["1"], f"{model_dirs['2']}#alias=candidate"],
            admin=True,
            admin_token=TOKEN,
            extra_args=["--canary", "candidate=10"],
        ) as srv,
        httpx.Client(base_url=srv.rest_url, timeout=30) as http,
    ):
        infer = "/v2/models/inspection/infer"
        before = _routed(http)
        versions = {}
        for i in range(2000):  # 2,000 clients, each with its own key
            r = http.post(infer, content=body, headers={**headers, CLIENT_KEY_HEADER: f"camera-{i}"})
            assert r.status_code == 200, r.text
            versions[f"camera-{i}"] = r.json()["model_version"]
        counts = _delta(_routed(http), before)
        assert sum(counts.values()) == 2000
        assert 140 <= counts["2"] <= 260, counts  # 10 +- 3 %
        assert counts["2"] == sum(v == "2" for v in versions.values())

        # sticky: a client keeps its version; a request naming a version is never rerouted
        for key in ("camera-0", "camera-1", "camera-7"):
            for _ in range(5):
                r = http.post(infer, content=body, headers={**headers, CLIENT_KEY_HEADER: key})
                assert r.json()["model_version"] == versions[key]
        for _ in range(30):
            r = http.post("/v2/models/inspection/versions/1/infer", content=body, headers=headers)
            assert r.json()["model_version"] == "1"

        # keyless: exactly the share
        before = _routed(http)
        for _ in range(200):
            http.post(infer, content=body, headers=headers).raise_for_status()
        assert _delta(_routed(http), before) == {"1": 180, "2": 20}

        # changed at run time through the admin API, which needs the token
        assert http.get(TRAFFIC).status_code == 403
        r = http.put(TRAFFIC, json={"canary": "candidate=100"}, headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and r.json()["canary"] == {"alias": "candidate", "percent": 100.0}
        assert {
            http.post(infer, content=body, headers=headers).json()["model_version"] for _ in range(10)
        } == {"2"}
        auth = {"authorization": f"Bearer {TOKEN}"}
        r = http.put(TRAFFIC, json={"canary": "nope=5"}, headers=auth)
        assert r.status_code == 404 and "nope" in r.json()["error"]
        r = http.put(TRAFFIC, json={"canary": None}, headers=auth)
        assert r.status_code == 200 and r.json()["canary"] is None
        assert {
            http.post(infer, content=body, headers=headers).json()["model_version"] for _ in range(10)
        } == {"1"}


def test_a_shadow_is_logged_while_the_champion_answers(stack_settings, model_dirs):
    name = f"shadow-{uuid.uuid4().hex[:6]}"
    frames = random_frames(3, 64, seed=11)
    x = Preprocess(PreprocessConfig(size=64)).batch(list(frames))
    bare = {
        v: ort.InferenceSession(str(model_dirs[v] / "model.onnx")).run(None, {"images": x})[0] for v in "12"
    }
    assert not np.array_equal(bare["1"].argmax(1), bare["2"].argmax(1)) or not np.allclose(
        bare["1"], bare["2"]
    )
    start = datetime.now(UTC) - timedelta(seconds=5)
    with (
        running_server(
            [model_dirs["1"], f"{model_dirs['2']}#alias=candidate"],
            stack_settings,
            admin=True,
            extra_args=["--shadow", "candidate", "--payload_log_rate", "1", "--model_name", name],
        ) as srv,
        srv.grpc_client(name) as g,
        srv.rest_client(name) as rest,
    ):
        for client in (g, rest) * 5:
            pred = client.infer_frames(frames)
            assert pred.model_version == "1"
            np.testing.assert_allclose(pred.probabilities, bare["1"], atol=1e-5)
        r = httpx.put(srv.rest_url + f"/edgeloop/admin/models/{name}/traffic", json={"shadow": None})
        assert r.status_code == 200 and r.json()["shadow"] is None
        assert rest.infer_frames(frames).model_version == "1"  # logged for 1 only
    end = datetime.now(UTC) + timedelta(seconds=5)

    store = BlobStore.from_settings(stack_settings)
    records = list(read_window(store, stack_settings.blob.payloads_container, name, start, end))
    by_version = {v: [r for r in records if r.version == v] for v in ("1", "2")}
    assert len(by_version["1"]) == 33 and len(by_version["2"]) == 30
    for rec in by_version["2"]:
        assert any(np.allclose(rec.probabilities, row, atol=1e-5) for row in bare["2"])
    report = compare_versions(records, "1", "2", name)
    assert report.pairs == 30
    expected_agreement = float(np.mean(bare["1"].argmax(1) == bare["2"].argmax(1)))
    assert report.agreement == expected_agreement
    with pytest.raises(CanaryNotReady, match="only 30 images compared with the champion, 200 needed"):
        require_canary(report, min_pairs=200)
    signed = require_canary(report, min_pairs=30, min_agreement=0.0, max_confidence_drop=1.0)
    assert "30 images" in signed and "champion v1" in signed
