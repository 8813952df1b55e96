"""submit/schedule against a stand-in for the Kubeflow Pipelines API server (its REST routes only):
what the cluster receives carries the service account and images pinned by digest."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edgeloop.pipelines.runner import PipelineRunError, schedule_runs, submit_run

DIGESTS = {
    n: "sha256:" + c * 64
    for n, c in (("edgeloop-pipeline", "a"), ("edgeloop-training", "c"), ("edgeloop-builder", "b"))
}


@pytest.fixture
def kfp_api():
    received: list[tuple[str, str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 - http.server's name
            received.append(("GET", self.path, {}))
            if self.path.startswith("/apis/v2beta1/healthz"):
                return self._reply({"multi_user": False})
            return self._reply({})  # no experiment of that name yet

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
            received.append(("POST", self.path, body))
            if self.path.startswith("/apis/v2beta1/experiments"):
                return self._reply({"experiment_id": "exp-1", "display_name": body.get("display_name")})
            if self.path.startswith("/apis/v2beta1/recurringruns"):
                return self._reply({"recurring_run_id": "rr-1", "display_name": body.get("display_name")})
            return self._reply({"run_id": "run-1", "display_name": body.get("display_name")})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", received
    server.shutdown()


def _index(tmp_path):
    path = tmp_path / "index.json"
    path.write_text(json.dumps({n: {"digest": d} for n, d in DIGESTS.items()}))
    return path


def _images(pipeline_spec: dict) -> set[str]:
    return {e["container"]["image"] for e in pipeline_spec["deploymentSpec"]["executors"].values()}


def test_a_submitted_run_uses_the_pipeline_service_account_and_pinned_images(kfp_api, tmp_path):
    host, received = kfp_api
    url = submit_run(host, {"epochs": 2}, images=_index(tmp_path))
    assert url.endswith("/#/runs/details/run-1")
    run = next(
        body for method, path, body in received if method == "POST" and path.startswith("/apis/v2beta1/runs")
    )
    assert run["service_account"] == "edgeloop-pipeline"
    assert run["runtime_config"]["parameters"]["epochs"] == 2
    assert _images(run["pipeline_spec"]["pipeline_spec"]) == {
        f"ghcr.io/edgeloop/{name}@{digest}" for name, digest in DIGESTS.items()
    }
    # the platform spec (Secrets as env, security context) travels with the run
    executors = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"][
        "executors"
    ]
    assert executors["exec-train-model"]["secretAsEnv"] and executors["exec-train-model"]["securityContext"]


def test_a_schedule_uses_the_service_account_too(kfp_api, tmp_path):
    host, received = kfp_api
    schedule_runs(host, "0 0 3 * * *", {}, images=_index(tmp_path))
    job = next(b for m, p, b in received if m == "POST" and p.startswith("/apis/v2beta1/recurringruns"))
    assert job["service_account"] == "edgeloop-pipeline"
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"


def test_submit_refuses_images_it_cannot_pin(kfp_api, tmp_path):
    host, received = kfp_api
    with pytest.raises(Exception, match="make images"):
        submit_run(host, {}, images=tmp_path / "missing" / "index.json")
    (tmp_path / "index.json").write_text(
        json.dumps({"edgeloop-pipeline": {"digest": DIGESTS["edgeloop-pipeline"]}})
    )
    with pytest.raises(PipelineRunError, match="edgeloop-builder"):
        submit_run(host, {}, images=tmp_path / "index.json")
    assert not [p for m, p, _ in received if m == "POST" and p.startswith("/apis/v2beta1/runs")]
