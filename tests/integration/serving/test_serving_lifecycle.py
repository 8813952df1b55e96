"""The server process itself: where it listens, and how it stops."""

from __future__ import annotations

import http.client
import signal
import socket
import sys
import time

import orjson
import pytest

from edgeloop.serving.launcher import ServerHandle, running_server
from edgeloop.testing.media import random_frames
from edgeloop.testing.oip import binary_request


def connects(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


@pytest.mark.skipif(sys.platform != "linux", reason="needs all of 127.0.0.0/8 on loopback, as Linux has")
def test_rest_and_grpc_listen_on_the_bind_host_only(server: ServerHandle):
    # The launcher binds 127.0.0.1; a socket bound to 0.0.0.0 or [::] would also answer on 127.0.0.2.
    for port in (server.http_port, server.grpc_port):
        assert connects("127.0.0.1", port)
        assert not connects("127.0.0.2", port), f"port {port} listens beyond 127.0.0.1"


def test_sigterm_lets_an_inflight_request_finish_then_exits_cleanly(model_dirs):
    frames = random_frames(2, 64, seed=3)
    body, header_length = binary_request(frames)
    with running_server([model_dirs["1"]]) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=30)
        conn.putrequest("POST", "/v2/models/inspection/infer")
        conn.putheader("Content-Length", str(len(body)))
        conn.putheader("Inference-Header-Content-Length", str(header_length))
        conn.endheaders()
        conn.send(body[: len(body) // 2])
        time.sleep(0.3)  # the server holds half a request
        srv.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # it is shutting down, waiting for that request
        conn.send(body[len(body) // 2 :])
        response = conn.getresponse()
        doc = orjson.loads(response.read())
        conn.close()
        assert srv.process.wait(30) == 0
        log = srv.log()
    assert response.status == 200, doc
    assert {o["name"] for o in doc["outputs"]} >= {"label", "probabilities"}
    assert "SIGTERM" in log or "Shutting down" in log
    assert "model server stopped" in log  # gRPC stopped and models unloaded after REST drained
