"""The serving image run exactly as the ServingRuntime runs it, answering Triton's own clients.

The container gets the ServingRuntime's command, args and env (``$(VAR)`` expanded as the kubelet
does), the model read-only at /mnt/models, the TLS and token Secrets read-only where the
runtime mounts them, user 1000, a read-only root filesystem, no capabilities, no privilege
escalation, and ``--init`` (what a pod's pause/PID-1 handling gives). One change: the host
network on free 127.0.0.1 ports instead of a pod's own network (ports and ``--bind_host``).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from edgeloop.testing.containers import container, readable_copy, run
from edgeloop.testing.waits import wait_until

ROOT = Path(__file__).resolve().parents[2]
TRITON_PYTHON = ROOT / ".tools" / "triton-client" / "bin" / "python"

pytestmark = [pytest.mark.containers, pytest.mark.slow]

MODEL_NAME = "edgeloop-inspection"  # the InferenceService's name: {{.Name}} in the runtime's args
RUNTIME = ROOT / "manifests" / "base" / "serving" / "servingruntime.yaml"
ISVC = ROOT / "manifests" / "base" / "serving" / "inferenceservice.yaml"


def runtime_container() -> dict:
    return yaml.safe_load(RUNTIME.read_text())["spec"]["containers"][0]


def termination_grace_s() -> int:
    return int(yaml.safe_load(ISVC.read_text())["spec"]["predictor"]["terminationGracePeriodSeconds"])


def podman_run_args(spec: dict, mounts: dict[str, Path], http_port: int, grpc_port: int) -> tuple[list, list]:
    """(run options, command + args) for ``spec``, a ServingRuntime container."""
    env: dict[str, str] = {}
    for e in spec["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif e["valueFrom"].get("resourceFieldRef", {}).get("resource") == "limits.cpu":
            env[e["name"]] = "1"  # the container's CPU limit, rounded up
    ports = {"8080": str(http_port), "8081": str(grpc_port)}
    args = [
        re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a).replace("{{.Name}}", MODEL_NAME)
        for a in spec["args"]
    ]
    args = [
        re.sub(r"^(--(?:http|grpc)_port=)(\d+)$", lambda m: m.group(1) + ports[m.group(2)], a) for a in args
    ]
    sc = spec["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"]
    opts = ["--init", "--network", "host", "--user", "1000:1000", "--read-only", "--cap-drop", "ALL"]
    opts += ["--security-opt", "no-new-privileges", "--tmpfs", "/tmp:rw,size=64m,mode=1777"]
    for vm in spec["volumeMounts"]:
        opts += ["-v", f"{mounts[vm['name']]}:{vm['mountPath']}:ro"]
    opts += ["-v", f"{mounts['model']}:/mnt/models:ro"]  # KServe's storage initializer's volume
    for k, v in env.items():
        opts += ["-e", f"{k}={v}"]
    opts += ["--entrypoint", json.dumps(spec["command"])]
    return opts, [*args, "--bind_host=127.0.0.1"]


def triton(protocol: str, port: int, x_path: Path, ca: Path, token_file: Path) -> dict:
    if not TRITON_PYTHON.exists():
        pytest.fail(f"{TRITON_PYTHON} is missing: run `make setup` (Triton's clients live in their own venv)")
    r = subprocess.run(
        [
            str(TRITON_PYTHON),
            str(Path(__file__).with_name("triton_infer.py")),
            protocol,
            f"localhost:{port}",
            MODEL_NAME,
            str(x_path),
            "--ca",
            str(ca),
            "--token-file",
            str(token_file),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def wait_ready(port: int, ca: Path, name: str, engine: str, timeout_s: float = 120) -> None:
    url = f"https://localhost:{port}/v2/health/ready"

    def ready() -> bool:
        try:
            if httpx.get(url, verify=str(ca), timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        state = run(engine, "inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip()
        assert (
            state == "running"
        ), f"the container stopped ({state}): {run(engine, 'logs', name, check=False).stderr[-3000:]}"
        return False

    wait_until(ready, timeout_s, f"container {name} to answer 200 at {url}", step_s=0.5)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tls_pki):
    from edgeloop.testing.models import build_tiny_model_dir

    root = tmp_path_factory.mktemp("serving-image")
    model = build_tiny_model_dir(root / "built", size=64, seed=3, name=MODEL_NAME, version="1")
    tls = root / "tls"
    tls.mkdir()
    (tls / "tls.crt").write_bytes(tls_pki["server_cert"].read_bytes())
    (tls / "tls.key").write_bytes(tls_pki["server_key"].read_bytes())
    auth = root / "auth"
    auth.mkdir()
    (auth / "token").write_text("container-test-token-" + "x" * 24)
    mounts = {
        "model": readable_copy(model, root / "model"),
        "serving-tls": readable_copy(tls, root / "tls-mounted"),
        "serving-auth": readable_copy(auth, root / "auth-mounted"),
    }
    x = np.random.default_rng(5).normal(size=(4, 3, 64, 64)).astype(np.float32)
    np.save(root / "x.npy", x)
    return {
        "model": model,
        "mounts": mounts,
        "x": root / "x.npy",
        "token": auth / "token",
        "ca": tls_pki["ca"],
        "tls_pki": tls_pki,
    }


def test_the_serving_image_answers_triton_clients_as_the_in_process_server_and_stops_on_sigterm(
    engine, images, served
):
    from edgeloop.serving.client import ClientSecurity
    from edgeloop.serving.launcher import free_ports, running_server
    from edgeloop.serving.security import TlsFiles

    http_port, grpc_port = free_ports(2)
    opts, cmd = podman_run_args(runtime_container(), served["mounts"], http_port, grpc_port)
    token = served["token"].read_text()
    with container(engine, images("edgeloop-serving"), opts, cmd) as name:
        wait_ready(http_port, served["ca"], name, engine)
        in_container = {
            p: triton(p, port, served["x"], served["ca"], served["token"])
            for p, port in (("http", http_port), ("grpc", grpc_port))
        }
        with running_server(
            [f"{served['model']}#name={MODEL_NAME}"],
            tls=TlsFiles(served["tls_pki"]["server_cert"], served["tls_pki"]["server_key"]),
            auth_token=token,
            client=ClientSecurity(tls=True, ca=served["ca"], token=token),
        ) as ref:
            reference = {
                p: triton(p, port, served["x"], served["ca"], served["token"])
                for p, port in (("http", ref.http_port), ("grpc", ref.grpc_port))
            }
        for protocol in ("http", "grpc"):
            got, want = in_container[protocol], reference[protocol]
            assert (
                got["ready"]
                and got["labels"] == want["labels"]
                and got["model_version"] == want["model_version"]
            )
            np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=0, atol=1e-6)
        # without the token: refused (the Secret is really in use)
        r = httpx.get(f"https://localhost:{http_port}/v2/models/{MODEL_NAME}", verify=str(served["ca"]))
        assert r.status_code == 401

        grace = termination_grace_s()
        t0 = time.monotonic()
        run(engine, "kill", "--signal", "TERM", name)
        run(engine, "wait", name, timeout=grace + 5)
        stopped_s = time.monotonic() - t0
        state = json.loads(run(engine, "inspect", name).stdout)[0]["State"]
        assert stopped_s < grace and state["ExitCode"] == 0, (stopped_s, state)


def test_the_serving_image_holds_no_torch_and_runs_as_non_root(engine, images):
    image = images("edgeloop-serving")
    r = run(
        engine,
        "run",
        "--rm",
        "--read-only",
        "--network",
        "none",
        "--entrypoint",
        "python",
        image,
        "-c",
        "import torch",
        check=False,
    )
    assert r.returncode != 0 and "No module named 'torch'" in r.stderr
    user = run(engine, "image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()
    assert user.split(":")[0] not in ("", "0", "root")
