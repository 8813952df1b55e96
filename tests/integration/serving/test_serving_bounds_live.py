"""Bounded everywhere on a live server: the body limit holds on every route (V1 and admin too, with
or without Content-Length), and past the in-flight limit REST gets 429 and gRPC RESOURCE_EXHAUSTED,
counted, while health probes still answer."""

from __future__ import annotations

import threading

import httpx
import pytest

from edgeloop.serving.client import ClientError
from edgeloop.serving.launcher import running_server
from edgeloop.testing.media import random_frames
from edgeloop.testing.oip import binary_request
from edgeloop.testing.waits import join, wait_until

LIMIT_MB = 1
BIG = b"x" * (LIMIT_MB * 1024 * 1024 + 1)


@pytest.fixture(scope="module")
def small_server(model_dirs):
    args = ["--max_request_mb", str(LIMIT_MB), "--max_concurrent_requests", "1"]
    with running_server([model_dirs["1"]], admin=True, extra_args=args) as srv:
        yield srv


def _chunks(data: bytes, size: int = 64 * 1024):
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/inspection:predict",
        "/v2/models/inspection/infer",
        "/edgeloop/admin/models/inspection/versions",
    ],
)
def test_every_route_refuses_a_body_over_the_limit(small_server, path):
    url = small_server.rest_url + path
    declared = httpx.post(url, content=BIG, headers={"Content-Type": "application/json"}, timeout=30)
    assert declared.status_code == 413, declared.text
    chunked = httpx.post(url, content=_chunks(BIG), headers={"Content-Type": "application/json"}, timeout=30)
    assert chunked.status_code == 413, chunked.text
    assert "byte" in chunked.json()["error"]


def test_past_the_in_flight_limit_requests_get_429_and_resource_exhausted(small_server):
    srv = small_server
    body, header_len = binary_request(random_frames(1, 64))
    hold = threading.Event()

    def slow_body():
        yield body[:10]
        hold.wait(30)  # the request stays in flight until the test lets it finish
        yield body[10:]

    first: dict = {}

    def send_held() -> None:
        first["r"] = httpx.post(
            srv.rest_url + "/v2/models/inspection/infer",
            content=slow_body(),
            headers={"Inference-Header-Content-Length": str(header_len)},
            timeout=60,
        )

    t = threading.Thread(target=send_held)
    t.start()
    try:
        metrics = srv.rest_url + "/metrics"
        wait_until(
            lambda: "edgeloop_serving_inflight_requests 1.0" in httpx.get(metrics, timeout=30).text,
            20,
            f"the held request to be in flight (edgeloop_serving_inflight_requests 1.0 at {metrics})",
        )
        r = httpx.post(
            srv.rest_url + "/v2/models/inspection/infer",
            content=body,
            headers={"Inference-Header-Content-Length": str(header_len)},
        )
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert "requests in flight" in r.json()["error"]
        with srv.grpc_client() as g:
            with pytest.raises(ClientError) as e:
                g.infer_frames(random_frames(1, 64))
            assert e.value.status == "RESOURCE_EXHAUSTED"
            assert g.ready()  # health probes are never refused
        assert httpx.get(srv.rest_url + "/v2/health/ready").status_code == 200
    finally:
        hold.set()
        join(t, 60, f"the held request to {srv.rest_url}/v2/models/inspection/infer to be answered")
    assert first["r"].status_code == 200, first["r"].text
    metrics = httpx.get(srv.rest_url + "/metrics").text
    for protocol in ("rest", "grpc"):
        assert (
            f'edgeloop_serving_errors_total{{kind="too_many_requests",model="unknown",protocol="{protocol}"}} 1.0'
            in metrics
        )
    with srv.grpc_client() as g:  # the slot is free again
        assert g.infer_frames(random_frames(1, 64)).labels
