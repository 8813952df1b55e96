"""The local stack: Azurite, MLflow, Label Studio and Mosquitto as real processes.

Each service binds 127.0.0.1 on its own port, keeps its data under
``<state_dir>/stack/<service>``, runs in its own process group, has a readiness
check and is stopped with SIGTERM to the group, then SIGKILL after a grace
period. Ports picked on the first ``up`` are kept in ``state.json`` so that a
restart finds the same endpoints (and the data behind them).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeloop.core.config import (
    MLFLOW_ADMIN_USER,
    MLFLOW_USERS,
    MQTT_PUBLISHER_USER,
    MQTT_READER_USER,
    Settings,
    private_dir,
)
from edgeloop.core.errors import EdgeloopError
from edgeloop.core.processes import group_alive, terminate_group

log = logging.getLogger(__name__)

SERVICES = ("azurite", "mlflow", "labelstudio", "mosquitto")


class StackError(EdgeloopError):
    """A local service could not be started; the message names the service and the fix."""


class PortInUseError(StackError):
    def __init__(self, service: str, port: int):
        super().__init__(
            f"port {port} for {service} is already in use by another process: stop that process, "
            f"or pick another port with EDGELOOP_STACK__PORTS__{service.upper()}=<port> "
            f"(or delete the port from {{state_dir}}/stack/state.json to get a free one)"
        )
        self.service, self.port = service, port


class MissingToolError(StackError):
    pass


@dataclass
class ServiceStatus:
    name: str
    url: str
    state: str  # ready | starting | stopped | dead
    data_dir: str
    port: int | None
    pid: int | None
    log: str

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class _Launch:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def mosquitto_password_hash(password: str, iterations: int = 1000) -> str:
    """A Mosquitto 2 password-file hash (``$7$``: PBKDF2-HMAC-SHA512, as ``mosquitto_passwd`` writes)."""
    import base64
    import hashlib

    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _private_file(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_TRUNC
    return path


def write_mlflow_auth_config(data: Path) -> Path:
    """MLflow's basic-auth config: users in ``data/basic_auth.db``; an authenticated user may read
    what no grant says otherwise about; writes need a grant (or ownership: the creator of an
    experiment or registered model manages it). Anonymous requests are refused (401)."""
    return _private_file(
        data / "basic_auth.ini",
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{data / 'basic_auth.db'}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # A password check is a deliberately slow hash (~0.5 s of CPU): remember good ones for a while
        # (one worker: a password change through the API takes effect at once).
        "auth_cache_ttl_seconds = 600\n",
    )


def provision_mlflow(settings: Settings) -> None:
    """The local MLflow's accounts and grants, idempotent (run on every ``up``):

    * one user per role (:data:`~edgeloop.core.config.MLFLOW_USERS`), passwords from the secrets file;
    * the approvals experiment, owned by the admin, where only ``edgeloop-approver`` and
      ``edgeloop-auto`` may write (EDIT): the pipeline and the monitor can read decisions, not record them;
    * the approvers' Ed25519 signing keys and the trusted-keys file (``<state_dir>/keys``).
    """
    from mlflow.utils.credentials import MlflowHostCreds
    from mlflow.utils.rest_utils import http_request

    from edgeloop.pipelines.attestation import ensure_local_keys

    secrets = settings.secrets()
    uri = (
        settings.mlflow.tracking_uri
        or f"http://{settings.stack.host}:{settings.stack_state()['ports']['mlflow']}"
    )
    admin = MlflowHostCreds(uri, username=MLFLOW_ADMIN_USER, password=secrets["mlflow_admin_password"])

    def call(endpoint: str, method: str, ok: tuple[int, ...] = (200,), **kwargs: Any) -> dict[str, Any]:
        resp = http_request(admin, endpoint, method, max_retries=0, **kwargs)
        if resp.status_code == 400 and "RESOURCE_ALREADY_EXISTS" in resp.text:  # done on an earlier `up`
            return {}
        if resp.status_code not in ok:
            raise StackError(
                f"provisioning MLflow's accounts failed: {method} {endpoint} answered {resp.status_code} "
                f"{resp.text[:300]}; see {settings.stack_dir / 'mlflow.log'}"
            )
        return resp.json() if resp.content and resp.status_code == 200 else {}

    if http_request(admin, "/api/2.0/mlflow/users/current", "GET", max_retries=0).status_code == 404:
        raise StackError(
            f"the MLflow at {uri} runs without authentication (started by an older edgeloop): restart it "
            "with `edgeloop stack down` then `edgeloop stack up` (your runs and models are kept)"
        )
    for role, user in MLFLOW_USERS.items():
        password = secrets[f"mlflow_{role}_password"]
        if call("/api/2.0/mlflow/users/get", "GET", ok=(200, 404), params={"username": user}):
            call(
                "/api/2.0/mlflow/users/update-password",
                "PATCH",
                json={"username": user, "password": password},
            )
        else:
            call("/api/2.0/mlflow/users/create", "POST", json={"username": user, "password": password})
    name = settings.mlflow.approvals_experiment
    found = call(
        "/api/2.0/mlflow/experiments/get-by-name", "GET", ok=(200, 404), params={"experiment_name": name}
    )
    exp_id = (found.get("experiment") or {}).get("experiment_id") or call(
        "/api/2.0/mlflow/experiments/create", "POST", json={"name": name}
    )["experiment_id"]
    for role in ("approver", "auto"):
        call(
            "/api/3.0/mlflow/users/permissions/grant",
            "POST",
            json={
                "username": MLFLOW_USERS[role],
                "resource_type": "experiment",
                "resource_id": exp_id,
                "permission": "EDIT",
            },
        )
    ensure_local_keys(settings, [MLFLOW_USERS["approver"], MLFLOW_USERS["auto"]])


def write_mosquitto_config(
    data: Path,
    host: str,
    port: int,
    users: dict[str, str],
    acl: dict[str, list[tuple[str, str]]],
    persistence: bool = True,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> Path:
    """A Mosquitto config that accepts only ``users`` (name -> password) and lets each use only the
    topics in ``acl`` (name -> [(read|write|readwrite, topic filter)]); no anonymous clients.
    With ``tls_cert``/``tls_key`` (PEM) the listener speaks TLS only.

    Writes ``passwords`` and ``acl`` (0600) beside ``mosquitto.conf`` in ``data``; returns the config.
    """
    bad = [u for u in users if not u or ":" in u or any(c.isspace() for c in u)]
    if bad:
        raise StackError(f"MQTT user names cannot be empty or hold ':' or spaces: {bad}")
    passwords = _private_file(
        data / "passwords", "".join(f"{u}:{mosquitto_password_hash(p)}\n" for u, p in users.items())
    )
    lines = []
    for user, rules in acl.items():
        lines.append(f"user {user}")
        lines += [f"topic {access} {topic}" for access, topic in rules]
        lines.append("")
    acl_file = _private_file(data / "acl", "\n".join(lines))
    conf = data / "mosquitto.conf"
    conf.write_text(
        f"per_listener_settings false\nlistener {port} {host}\n"
        + (f"certfile {tls_cert}\nkeyfile {tls_key}\n" if tls_cert and tls_key else "")
        + "allow_anonymous false\n"
        f"password_file {passwords}\nacl_file {acl_file}\n"
        + (f"persistence true\npersistence_location {data}/\n" if persistence else "persistence false\n")
        + f"user {_current_user()}\nlog_dest stdout\n"
    )
    return conf


def labelstudio_env(settings: Settings, data: Path) -> dict[str, str]:
    """The environment the local Label Studio starts with. Local-file serving is off unless
    ``labelstudio.local_files_root`` names a directory of images, and that directory may neither
    hold nor sit inside edgeloop's state (secrets, every service's data)."""
    s = settings
    secrets = s.secrets()
    password = (
        s.labelstudio.password.get_secret_value()
        if s.labelstudio.password
        else secrets["labelstudio_password"]
    )
    env = {
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_USERNAME": s.labelstudio.username,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": s.labelstudio_api_key(),
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "false",
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        # Label Studio refuses ML backends on private and loopback addresses unless told otherwise;
        # the local stack's ML backend (`edgeloop labeling backend`) listens on 127.0.0.1.
        "ML_BLOCK_LOCAL_IP": "false",
    }
    root = s.labelstudio.local_files_root
    if root is not None:
        root, state = Path(root).resolve(), s.state_dir.resolve()
        if root == state or state.is_relative_to(root) or root.is_relative_to(state):
            raise StackError(
                f"labelstudio.local_files_root {root} would let Label Studio serve edgeloop's state "
                f"({state}: secrets, service data); point it at a directory holding only the images to label"
            )
        if not root.is_dir():
            raise StackError(f"labelstudio.local_files_root {root} is not a directory")
        env |= {
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root),
        }
    return env


def _http_ok(url: str, expect: Callable[[int, bytes], bool] | None = None, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read(4096)
            return expect(resp.status, body) if expect else True
    except urllib.error.HTTPError as e:  # an HTTP answer, even an error, means it listens
        return expect is None or expect(e.code, b"")
    except (OSError, ValueError):
        return False


def _tcp_ok(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


class Stack:
    """Start, stop and inspect the local services. All state lives under ``settings.state_dir``."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.host = settings.stack.host
        self.dir = settings.stack_dir

    # -- state ---------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        state = self.settings.stack_state()
        state.setdefault("ports", {})
        state.setdefault("pids", {})
        return state

    def _save(self, state: dict[str, Any]) -> None:
        self.settings.ensure_state_dir()
        private_dir(self.dir)
        tmp = self.settings.stack_state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.settings.stack_state_file)

    def data_dir(self, service: str) -> Path:
        return self.dir / service

    def log_file(self, service: str) -> Path:
        return self.dir / f"{service}.log"

    def url(self, service: str, port: int | None) -> str:
        if port is None:
            return "-"
        scheme = "mqtt" if service == "mosquitto" else "http"
        return f"{scheme}://{self.host}:{port}"

    # -- readiness -------------------------------------------------------------
    def is_ready(self, service: str, port: int) -> bool:
        base = f"http://{self.host}:{port}"
        if service == "azurite":
            return _http_ok(f"{base}/{self.settings.blob.account}?comp=list")
        if service == "mlflow":
            return _http_ok(f"{base}/health", lambda code, body: code == 200 and b"OK" in body)
        if service == "labelstudio":
            return _http_ok(f"{base}/health/", lambda code, body: code == 200)
        if service == "mosquitto":
            return _tcp_ok(self.host, port)
        raise KeyError(service)

    # -- launch commands ---------------------------------------------------------
    def _launch(self, service: str, port: int) -> _Launch:
        data = private_dir(self.data_dir(service))
        secrets = self.settings.secrets()
        if service == "azurite":
            binary = self.settings.stack.node_modules / ".bin" / "azurite-blob"
            if shutil.which("node") is None:
                raise MissingToolError(
                    "Node.js is not installed (Azurite needs it): run `make setup`, "
                    "or install Node.js >= 20 and `npm ci` in the project root"
                )
            if not binary.exists():
                raise MissingToolError(
                    f"Azurite is not installed ({binary} is missing): run `make setup` "
                    "(or `npm ci` in the project root)"
                )
            return _Launch(
                [
                    str(binary),
                    "--blobHost",
                    self.host,
                    "--blobPort",
                    str(port),
                    "--location",
                    str(data),
                    "--silent",
                    "--disableTelemetry",
                    "--skipApiVersionCheck",
                    "--loose",
                ],
                env={"AZURITE_ACCOUNTS": f"{self.settings.blob.account}:{secrets['azurite_key']}"},
            )
        if service == "mlflow":
            account = self.settings.blob.account
            container = self.settings.blob.mlflow_container
            return _Launch(
                [
                    sys.executable,
                    "-m",
                    "mlflow",
                    "server",
                    "--app-name",
                    "basic-auth",
                    "--host",
                    self.host,
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                    "--backend-store-uri",
                    f"sqlite:///{data / 'mlflow.db'}",
                    "--artifacts-destination",
                    f"wasbs://{container}@{account}.blob.core.windows.net/artifacts",
                ],
                env={
                    "AZURE_STORAGE_CONNECTION_STRING": self.settings.blob_connection_string(),
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                    "MLFLOW_AUTH_CONFIG_PATH": str(write_mlflow_auth_config(data)),
                    "MLFLOW_AUTH_ADMIN_USERNAME": MLFLOW_ADMIN_USER,
                    "MLFLOW_AUTH_ADMIN_PASSWORD": secrets["mlflow_admin_password"],
                    "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets["mlflow_flask_secret"],
                },
                cwd=data,
            )
        if service == "labelstudio":
            binary = self.settings.stack.tools_dir / "label-studio" / "bin" / "label-studio"
            if not binary.exists():
                raise MissingToolError(
                    f"Label Studio is not installed ({binary} is missing): run `make setup`"
                )
            self._seed_labelstudio_data(data)
            return _Launch(
                [
                    str(binary),
                    "start",
                    "--no-browser",
                    "--internal-host",
                    self.host,
                    "--port",
                    str(port),
                    "--data-dir",
                    str(data),
                ],
                env=labelstudio_env(self.settings, data),
                cwd=data,
            )
        if service == "mosquitto":
            mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
            if not Path(mosquitto).exists():
                raise MissingToolError(
                    "mosquitto is not installed: run `make setup` "
                    "(it installs the Debian package mosquitto)"
                )
            prefix = self.settings.mqtt.topic_prefix.strip("/")
            conf = write_mosquitto_config(
                data,
                self.host,
                port,
                users={
                    MQTT_PUBLISHER_USER: secrets["mqtt_stream_password"],
                    MQTT_READER_USER: secrets["mqtt_reader_password"],
                },
                acl={
                    MQTT_PUBLISHER_USER: [("write", f"{prefix}/#")],
                    MQTT_READER_USER: [("read", f"{prefix}/#")],
                },
            )
            return _Launch([mosquitto, "-c", str(conf)])
        raise KeyError(service)

    def _seed_labelstudio_data(self, data: Path) -> None:
        """Copy the pre-migrated template (made by `make setup`) into an empty data dir: 40 s -> ~7 s."""
        template = labelstudio_template_dir(self.settings)
        if (data / "label_studio.sqlite3").exists() or not (template / "label_studio.sqlite3").exists():
            return
        for item in template.iterdir():
            target = data / item.name
            if item.is_dir():
                shutil.copytree(item, target, dirs_exist_ok=True)
            else:
                shutil.copy2(item, target)

    # -- lifecycle -----------------------------------------------------------------
    def _choose_port(self, service: str, state: dict[str, Any], running: bool) -> int:
        configured = getattr(self.settings.stack.ports, service)
        port = configured or state["ports"].get(service)
        if port and not running and not port_is_free(port, self.host):
            raise PortInUseError(service, port)
        return int(port) if port else free_port(self.host)

    def up(
        self, services: tuple[str, ...] = SERVICES, progress: Callable[[str], None] = print
    ) -> list[ServiceStatus]:
        """Start what is not running and wait until every service is ready. Idempotent."""
        state = self._load()
        started: dict[str, float] = {}
        order = [s for s in SERVICES if s in services]
        # Azurite first: MLflow's artifact container must exist before MLflow starts.
        for service in order:
            pid = state["pids"].get(service)
            port = state["ports"].get(service)
            if group_alive(pid) and port:
                continue
            port = self._choose_port(service, state, running=False)
            state["ports"][service] = port
            self._save(state)
            if service == "mlflow" and "azurite" in order:
                self._wait(["azurite"], state, started, progress)
                self._ensure_containers()
            launch = self._launch(service, port)
            state["pids"][service] = self._spawn(service, launch)
            started[service] = time.monotonic()
            self._save(state)
            progress(f"starting {service} on {self.url(service, port)}")
        self._wait(order, state, started, progress)
        if "mlflow" in order:
            provision_mlflow(self.settings)
        if "azurite" in order:
            self._ensure_containers()
            self._allow_labeling_page()
        return self.status()

    def _spawn(self, service: str, launch: _Launch) -> int:
        log_path = self.log_file(service)
        private_dir(log_path.parent)
        env = {**os.environ, **launch.env}
        with open(log_path, "ab") as log_fh:
            proc = subprocess.Popen(
                launch.argv,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=launch.cwd,
                start_new_session=True,
            )
        return proc.pid

    def _wait(
        self,
        services: list[str],
        state: dict[str, Any],
        started: dict[str, float],
        progress: Callable[[str], None],
    ) -> None:
        deadline = time.monotonic() + self.settings.stack.ready_timeout_s
        pending = [s for s in services if s in state["pids"]]
        while pending:
            for service in list(pending):
                port = state["ports"][service]
                if self.is_ready(service, port):
                    pending.remove(service)
                    if service in started:
                        progress(f"{service} ready in {time.monotonic() - started.pop(service):.1f} s")
                elif not group_alive(state["pids"].get(service)):
                    tail = _tail(self.log_file(service))
                    raise StackError(
                        f"{service} exited while starting; last lines of "
                        f"{self.log_file(service)}:\n{tail}"
                    )
            if pending and time.monotonic() > deadline:
                raise StackError(
                    f"{', '.join(pending)} not ready after {self.settings.stack.ready_timeout_s:.0f} s;"
                    f" see the logs under {self.dir}"
                )
            if pending:
                time.sleep(0.25)

    def _ensure_containers(self) -> None:
        from edgeloop.core.blob import BlobStore

        store = BlobStore.from_settings(self.settings)
        b = self.settings.blob
        for name in {
            b.images_container,
            b.datasets_container,
            b.models_container,
            b.mlflow_container,
            b.payloads_container,
        }:
            store.ensure_container(name)

    def _allow_labeling_page(self) -> None:
        """CORS on blob storage for Label Studio's origin, so labelers' browsers can load task images."""
        from edgeloop.core.blob import BlobStore

        if not self.settings.labelstudio.url and not self._load()["ports"].get("labelstudio"):
            return
        BlobStore.from_settings(self.settings).allow_browser_origins(self.settings.labelstudio_origins())

    def down(self, services: tuple[str, ...] = SERVICES, progress: Callable[[str], None] = print) -> None:
        """SIGTERM each service's process group, SIGKILL after the grace period. Ports are kept."""
        state = self._load()
        for service in services:
            pid = state["pids"].get(service)
            if group_alive(pid):
                terminate_group(pid, self.settings.stack.stop_grace_s)
                progress(f"stopped {service}")
            state["pids"].pop(service, None)
        self._save(state)

    def status(self) -> list[ServiceStatus]:
        state = self._load()
        out = []
        for service in SERVICES:
            pid = state["pids"].get(service)
            port = state["ports"].get(service)
            if not pid:
                st = "stopped"
            elif not group_alive(pid):
                st = "dead"
            else:
                st = "ready" if port and self.is_ready(service, port) else "starting"
            out.append(
                ServiceStatus(
                    service,
                    self.url(service, port),
                    st,
                    str(self.data_dir(service)),
                    port,
                    pid if st in ("ready", "starting") else None,
                    str(self.log_file(service)),
                )
            )
        return out


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def labelstudio_template_dir(settings: Settings) -> Path:
    return settings.stack.tools_dir / "label-studio-template"


def prepare_labelstudio_template(settings: Settings) -> Path:
    """Run Label Studio's migrations once into a template data dir (what makes its first start slow)."""
    template = labelstudio_template_dir(settings)
    if (template / "label_studio.sqlite3").exists():
        return template
    python = settings.stack.tools_dir / "label-studio" / "bin" / "python"
    if not python.exists():
        raise MissingToolError(f"Label Studio is not installed ({python} is missing): run `make setup`")
    tmp = Path(tempfile.mkdtemp(prefix="ls-template-", dir=settings.stack.tools_dir))
    package_dir = subprocess.run(
        [str(python), "-c", "import label_studio, os; print(os.path.dirname(label_studio.__file__))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(tmp),
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "PYTHONPATH": package_dir,
        "DJANGO_SETTINGS_MODULE": "core.settings.label_studio",
    }
    subprocess.run(
        [str(python), "-m", "label_studio.manage", "migrate", "--noinput"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    if template.exists():
        shutil.rmtree(template)
    tmp.rename(template)
    return template
