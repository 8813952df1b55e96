"""Start the model server as a subprocess (tests, benchmarks, the pipeline's staging evaluation).

    with running_server(["/models/v1", "models:/inspection@candidate"], settings) as srv:
        GrpcClient(srv.grpc_target).infer_frames(frames)

The server runs ``python -m edgeloop.serving`` (the container's entry point) on free 127.0.0.1
ports in its own process group; the context waits for ``/v2/health/ready`` (which the
server only reaches after every model is verified, loaded and warmed up) and the gRPC
port, and on exit sends SIGTERM to the group, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.core.processes import terminate_group
from edgeloop.serving.client import NO_SECURITY, ClientSecurity

if TYPE_CHECKING:
    from edgeloop.core.config import Settings
    from edgeloop.serving.client import GrpcClient, RestClient
    from edgeloop.serving.security import TlsFiles


class ServerStartError(RuntimeError):
    """The server exited or did not become ready; the message ends with its log tail."""


@dataclass
class ServerHandle:
    http_port: int
    grpc_port: int
    process: subprocess.Popen
    log_path: Path
    started_s: float  # launch to ready
    admin_token: str | None = None
    security: ClientSecurity = NO_SECURITY  # what this handle's clients use (TLS, token)

    @property
    def rest_url(self) -> str:
        return f"{'https' if self.security.uses_tls else 'http'}://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def rest_client(self, model: str = "inspection", **kwargs: Any) -> RestClient:
        from edgeloop.serving.client import RestClient

        return RestClient(self.rest_url, model, **{"security": self.security, **kwargs})

    def grpc_client(self, model: str = "inspection", **kwargs: Any) -> GrpcClient:
        from edgeloop.serving.client import GrpcClient

        return GrpcClient(self.grpc_target, model, **{"security": self.security, **kwargs})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None


def free_ports(n: int) -> list[int]:
    """``n`` distinct free 127.0.0.1 ports (all held open while choosing, so never the same twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def _settings_env(settings: Settings, directory: Path) -> dict[str, str]:
    """Hand the parent's settings to the child as a YAML file (0600: it may hold secrets)."""
    import yaml
    from pydantic import SecretStr

    def plain(v: Any) -> Any:
        if isinstance(v, SecretStr):
            return v.get_secret_value()
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    data = plain(settings.model_dump(mode="python", exclude={"config_file"}))
    path = directory / "settings.yaml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(data, fh)
    return {"EDGELOOP_CONFIG": str(path)}


@contextlib.contextmanager
def running_server(
    models: Sequence[str | Path],
    settings: Settings | None = None,
    http_port: int | None = None,
    grpc_port: int | None = None,
    extra_args: Sequence[str] = (),
    admin: bool = False,
    admin_token: str | None = None,
    tls: TlsFiles | None = None,
    auth_token: str | None = None,
    client: ClientSecurity | None = None,
    env: dict[str, str] | None = None,
    ready_timeout_s: float = 120.0,
    log_dir: Path | None = None,
    stop_grace_s: float = 10.0,
) -> Iterator[ServerHandle]:
    """Run a model server over ``models`` (directories or URIs) until the block ends.

    ``admin_token`` (with ``admin``) and ``auth_token`` are handed over in 0600 files, as mounted
    Secrets would be. ``tls`` serves HTTPS and TLS gRPC; ``client`` is how the readiness probe and
    the handle's clients reach the server (default: the ``auth_token``, and TLS trusting the
    system's CAs when ``tls`` is set; pass the CA, and a client certificate for mutual TLS).
    """
    security = client or ClientSecurity(tls=tls is not None, token=auth_token)
    picked = free_ports(2)
    http_port = http_port or picked[0]
    grpc_port = grpc_port or picked[1]
    workdir = Path(tempfile.mkdtemp(prefix="edgeloop-serve-", dir=log_dir))
    log_path = workdir / "server.log"
    child_env = {
        k: v for k, v in os.environ.items() if not (settings is not None and k.startswith("EDGELOOP_"))
    }
    if settings is not None:
        child_env.update(_settings_env(settings, workdir))
    child_env.update(env or {})
    cmd = [
        sys.executable,
        "-m",
        "edgeloop.serving",
        "--http_port",
        str(http_port),
        "--grpc_port",
        str(grpc_port),
        "--bind_host",
        "127.0.0.1",
        "--cache_dir",
        str(workdir / "cache"),
    ]
    for m in models:
        cmd += ["--model", str(m)]
    if admin:
        cmd += ["--enable_admin", "true"]
    if admin_token:
        cmd += ["--admin_token_file", str(_secret_file(workdir / "admin-token", admin_token))]
    if auth_token:
        cmd += ["--auth_token_file", str(_secret_file(workdir / "auth-token", auth_token))]
    if tls is not None:
        cmd += ["--ssl_certfile", str(tls.cert), "--ssl_keyfile", str(tls.key)]
        if tls.client_ca is not None:
            cmd += ["--tls_client_ca", str(tls.client_ca)]
    cmd += list(extra_args)
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
            start_new_session=True,
        )
    try:
        _wait_ready(proc, http_port, grpc_port, ready_timeout_s, log_path, security)
        yield ServerHandle(
            http_port, grpc_port, proc, log_path, time.perf_counter() - t0, admin_token, security
        )
    finally:
        _stop(proc, stop_grace_s)


def _secret_file(path: Path, value: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return path


def _wait_ready(
    proc: subprocess.Popen,
    http_port: int,
    grpc_port: int,
    timeout_s: float,
    log_path: Path,
    security: ClientSecurity = NO_SECURITY,
) -> None:
    deadline = time.monotonic() + timeout_s
    url = security.rest_url(f"http://127.0.0.1:{http_port}/v2/health/ready")
    context = security.ssl_context() if security.uses_tls else None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(f"the model server exited with code {proc.returncode}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as r:
                if r.status == 200 and _port_open(grpc_port):
                    return
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.05)
    raise ServerStartError(
        f"the model server was not ready after {timeout_s:.0f}s (waited for 200 from {url} and gRPC on "
        f"127.0.0.1:{grpc_port}); its log {log_path}:\n{_tail(log_path)}"
    )


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop(proc: subprocess.Popen, grace_s: float) -> None:
    if proc.poll() is None:
        terminate_group(proc.pid, grace_s, proc)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
