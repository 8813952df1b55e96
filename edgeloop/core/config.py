"""One typed settings object for edgeloop.

Read from environment variables (prefix ``EDGELOOP_``, nested with ``__``) and an
optional YAML file (``EDGELOOP_CONFIG`` or ``--config``). Nothing here is read at
import time: call :func:`load_settings` and pass the result down.

Secrets (storage keys, tokens, passwords) never live in code: they come from the
environment or from the stack's generated ``secrets.json`` in the state dir, and
are typed as ``SecretStr`` so they are never printed or logged by accident.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


def private_dir(path: Path | str) -> Path:
    """``path`` as a directory only its owner can enter (0700): created so, and tightened when it
    already exists with looser bits and belongs to this user. For edgeloop's state (secrets, the
    stack's data, outboxes): a 0700 directory keeps everything below it from other local users."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def _here(name: str) -> Path:
    """``./name`` of the working directory, resolved when settings are loaded (never the package's location)."""
    return Path.cwd() / name


class ServicePorts(BaseModel):
    """Ports of the local stack. ``None`` means: pick a free port on first ``up`` and keep it."""

    azurite: int | None = None
    mlflow: int | None = None
    labelstudio: int | None = None
    mosquitto: int | None = None


class StackSettings(BaseModel):
    host: str = "127.0.0.1"
    ports: ServicePorts = Field(default_factory=ServicePorts)
    ready_timeout_s: float = 180.0
    stop_grace_s: float = 15.0
    # Where Label Studio's own venv and Azurite's node_modules are installed by `make setup`.
    tools_dir: Path = Field(default_factory=lambda: _here(".tools"))
    node_modules: Path = Field(default_factory=lambda: _here("node_modules"))


class BlobSettings(BaseModel):
    account: str = "edgeloop"
    images_container: str = "images"
    datasets_container: str = "datasets"
    models_container: str = "models"
    mlflow_container: str = "mlflow"
    payloads_container: str = "payloads"
    # Set to reach a real Azure account instead of the local Azurite.
    connection_string: SecretStr | None = None


class LabelStudioSettings(BaseModel):
    url: str | None = None  # None: the local stack's server
    username: str = "admin@edgeloop.local"
    password: SecretStr | None = None
    api_key: SecretStr | None = None
    project_title: str = "edgeloop-inspection"
    # Image links in tasks are read-only SAS URLs valid this long; a sync re-signs those that expire
    # within half of it (`edgeloop data refresh-links`, run by the monitor and the label import).
    link_ttl_hours: float = Field(default=12.0, gt=0, le=24 * 7)
    # Extra origins labelers open Label Studio from (the one in `url` / the local stack is always allowed):
    # blob storage answers these with CORS headers so the labeling page can load images.
    browser_origins: list[str] = Field(default_factory=list)
    # The local stack's Label Studio serves files from this directory only (its local-files
    # storage); None: local-file serving is off (edgeloop hands images over as blob links).
    local_files_root: Path | None = None
    # Label Studio authenticates to edgeloop's ML backend (`edgeloop labeling backend`) with HTTP
    # Basic auth as this user; the password: this setting, else one generated into the secrets.
    ml_backend_user: str = "edgeloop-ml"
    ml_backend_password: SecretStr | None = None


# The local stack's MLflow accounts, one per role (basic auth; passwords in the secrets file). ``auto``
# records the local runner's auto-approvals, so that it never shares an identity with the pipeline.
MLFLOW_ADMIN_USER = "admin"
MLFLOW_USERS = {
    "pipeline": "edgeloop-pipeline",
    "monitor": "edgeloop-monitor",
    "approver": "edgeloop-approver",
    "auto": "edgeloop-auto",
}
MlflowRole = Literal["pipeline", "monitor", "approver", "auto"]


class MlflowSettings(BaseModel):
    tracking_uri: str | None = None  # None: the local stack's server
    experiment: str = "edgeloop"
    registered_model: str = "edgeloop-inspection"
    # Decisions (signed approvals/rejections) are runs of this experiment: only approvers may write to it.
    approvals_experiment: str = "edgeloop-approvals"
    # Who this process is to MLflow. Your server: username/password here (or MLFLOW_TRACKING_USERNAME/
    # PASSWORD in the environment). The local stack: its generated account for ``role``.
    username: str | None = None
    password: SecretStr | None = None
    role: MlflowRole = "pipeline"


class ApprovalSettings(BaseModel):
    """Signed decisions: your signing key, and the approvers whose signatures a deploy accepts.

    Trusted keys are configured, never discovered: ``trusted_keys`` (MLflow user -> Ed25519 public key,
    base64) and/or ``trusted_keys_file`` (a JSON object of the same). With neither, the local stack's
    file (``<state_dir>/keys/trusted-approvers.json``, its approver and auto-approver) is used."""

    signing_key: Path | None = None  # Ed25519 private key (PEM); None: the local stack's key of your user
    trusted_keys: dict[str, str] = Field(default_factory=dict)
    trusted_keys_file: Path | None = None


MQTT_PUBLISHER_USER = "edgeloop-stream"  # the local broker's account for stream processors: write results
MQTT_READER_USER = "edgeloop-reader"  # the local broker's account for consumers: read results


class MqttSettings(BaseModel):
    host: str | None = None
    port: int | None = None
    topic_prefix: str = "edgeloop/results"
    # Credentials for a broker of your own; the local stack's broker uses generated accounts.
    username: str | None = None
    password: SecretStr | None = None
    # TLS to the broker: ca (PEM) to verify it, cert/key for a client certificate.
    tls: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None


class Settings(BaseSettings):
    """Everything edgeloop needs to know about where things are."""

    model_config = SettingsConfigDict(env_prefix="EDGELOOP_", env_nested_delimiter="__", extra="ignore")

    state_dir: Path = Field(default_factory=lambda: _here(".edgeloop"))
    stack: StackSettings = Field(default_factory=StackSettings)
    blob: BlobSettings = Field(default_factory=BlobSettings)
    labelstudio: LabelStudioSettings = Field(default_factory=LabelStudioSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    approvals: ApprovalSettings = Field(default_factory=ApprovalSettings)
    config_file: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlFileSource(settings_cls))

    # -- derived locations -------------------------------------------------
    @property
    def stack_dir(self) -> Path:
        return self.state_dir / "stack"

    def ensure_state_dir(self) -> Path:
        """The state directory, created (or tightened) to 0700: it holds the secrets and every service's data."""
        return private_dir(self.state_dir)

    @property
    def secrets_file(self) -> Path:
        return self.state_dir / "secrets.json"

    @property
    def stack_state_file(self) -> Path:
        return self.stack_dir / "state.json"

    # -- resolved endpoints (explicit settings win over the local stack) ----
    def stack_state(self) -> dict[str, Any]:
        if self.stack_state_file.exists():
            return json.loads(self.stack_state_file.read_text())
        return {}

    def _stack_port(self, service: str) -> int:
        port = self.stack_state().get("ports", {}).get(service) or getattr(self.stack.ports, service)
        if not port:
            raise StackNotRunningError(service)
        return int(port)

    def blob_connection_string(self) -> str:
        if self.blob.connection_string is not None:
            return self.blob.connection_string.get_secret_value()
        key = self.secrets()["azurite_key"]
        port = self._stack_port("azurite")
        account = self.blob.account
        return (
            f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
            f"BlobEndpoint=http://{self.stack.host}:{port}/{account};"
        )

    def mlflow_tracking_uri(self) -> str:
        """The MLflow server's URI. Resolving it also hands MLflow this settings' identity: MLflow's
        clients read their credentials from ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` in the process
        environment at each request, so those are set here (see :meth:`mlflow_credentials`)."""
        uri = self.mlflow.tracking_uri or f"http://{self.stack.host}:{self._stack_port('mlflow')}"
        creds = self.mlflow_credentials()
        if creds is not None:
            os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = creds
        return uri

    @property
    def local_mlflow(self) -> bool:
        """True when MLflow is the local stack's server, whose accounts edgeloop generated."""
        return not self.mlflow.tracking_uri

    def mlflow_credentials(self, role: MlflowRole | None = None) -> tuple[str, str] | None:
        """(username, password) for MLflow: the configured ones; with the local stack's server, its
        generated account for ``role`` (default: ``mlflow.role``); None for a server of your own with
        none configured (MLflow then uses ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` as they are)."""
        if self.mlflow.username:
            return (
                self.mlflow.username,
                self.mlflow.password.get_secret_value() if self.mlflow.password else "",
            )
        if not self.local_mlflow:
            return None
        role = role or self.mlflow.role
        return MLFLOW_USERS[role], self.secrets()[f"mlflow_{role}_password"]

    def as_mlflow_role(self, role: MlflowRole) -> Settings:
        """These settings acting as another of the local stack's MLflow accounts (e.g. the approver)."""
        return self.model_copy(update={"mlflow": self.mlflow.model_copy(update={"role": role})})

    def labelstudio_url(self) -> str:
        if self.labelstudio.url:
            return self.labelstudio.url.rstrip("/")
        return f"http://{self.stack.host}:{self._stack_port('labelstudio')}"

    def labelstudio_origins(self) -> list[str]:
        """Origins of the labeling page: Label Studio's own URL (and its localhost twin) plus the extras."""
        from urllib.parse import urlsplit

        u = urlsplit(self.labelstudio_url())
        origins = [f"{u.scheme}://{u.netloc}"]
        if u.hostname in ("127.0.0.1", "localhost"):
            twin = "localhost" if u.hostname == "127.0.0.1" else "127.0.0.1"
            origins.append(f"{u.scheme}://{twin}" + (f":{u.port}" if u.port else ""))
        origins += [o.rstrip("/") for o in self.labelstudio.browser_origins]
        return list(dict.fromkeys(origins))

    def labelstudio_api_key(self) -> str:
        if self.labelstudio.api_key is not None:
            return self.labelstudio.api_key.get_secret_value()
        return self.secrets()["labelstudio_token"]

    def ml_backend_credentials(self) -> tuple[str, str]:
        """(user, password) Label Studio presents to edgeloop's ML backend (HTTP Basic auth)."""
        ls = self.labelstudio
        if ls.ml_backend_password is not None:
            return ls.ml_backend_user, ls.ml_backend_password.get_secret_value()
        return ls.ml_backend_user, self.secrets()["ml_backend_password"]

    def mqtt_endpoint(self) -> tuple[str, int]:
        if self.mqtt.host and self.mqtt.port:
            return self.mqtt.host, self.mqtt.port
        return self.stack.host, self._stack_port("mosquitto")

    def mqtt_credentials(self, reader: bool = False) -> tuple[str, str] | None:
        """(username, password) for the broker: the configured ones; with the local stack's broker,
        its generated publisher account (or, ``reader``, the read-only account); None for a
        broker of your own with no credentials configured."""
        if self.mqtt.username:
            return self.mqtt.username, self.mqtt.password.get_secret_value() if self.mqtt.password else ""
        if self.mqtt.host and self.mqtt.port:
            return None
        s = self.secrets()
        return (
            (MQTT_READER_USER, s["mqtt_reader_password"])
            if reader
            else (
                MQTT_PUBLISHER_USER,
                s["mqtt_stream_password"],
            )
        )

    # -- secrets ------------------------------------------------------------
    def secrets(self) -> dict[str, str]:
        """The stack's generated secrets, created (mode 0600) on first use; a secret added in a
        later release is generated into an existing file the first time it is needed."""
        path = self.secrets_file
        generators = {
            "azurite_key": _b64_key,
            "labelstudio_token": lambda: secrets.token_hex(20),
            "labelstudio_password": lambda: secrets.token_urlsafe(16),
            "mqtt_stream_password": lambda: secrets.token_urlsafe(24),
            "mqtt_reader_password": lambda: secrets.token_urlsafe(24),
            "ml_backend_password": lambda: secrets.token_urlsafe(24),
            "mlflow_admin_password": lambda: secrets.token_urlsafe(24),
            "mlflow_flask_secret": lambda: secrets.token_hex(32),
            **{f"mlflow_{role}_password": lambda: secrets.token_urlsafe(24) for role in MLFLOW_USERS},
        }
        if path.exists():
            values: dict[str, str] = json.loads(path.read_text())
            if all(k in values for k in generators):
                return values
        import fcntl

        private_dir(path.parent)
        lock_fd = os.open(path.with_name(f".{path.name}.lock"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)  # two processes starting at once generate once
            values = json.loads(path.read_text()) if path.exists() else {}
            missing = [k for k in generators if k not in values]
            if missing:
                values |= {k: generators[k]() for k in missing}
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as fh:
                    json.dump(values, fh)
                os.replace(tmp, path)
            return values
        finally:
            os.close(lock_fd)

    def redacted(self) -> dict[str, Any]:
        """Settings as a plain dict with secrets masked, for `edgeloop config show`."""
        return json.loads(self.model_dump_json())


class StackNotRunningError(RuntimeError):
    """An endpoint of the local stack was asked for, but the stack has not been started."""

    def __init__(self, service: str):
        super().__init__(
            f"the local stack's {service} has no port yet: start the stack with `edgeloop stack up` "
            f"(or set EDGELOOP_STACK__PORTS__{service.upper()} / the service URL in your settings)"
        )
        self.service = service


def _b64_key() -> str:
    import base64

    return base64.b64encode(secrets.token_bytes(64)).decode()


class _YamlFileSource(PydanticBaseSettingsSource):
    """Optional YAML file named by init kwarg ``config_file`` or env ``EDGELOOP_CONFIG``."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = self.current_state.get("config_file") or os.environ.get("EDGELOOP_CONFIG")
        if not path:
            return {}
        file = Path(path)
        if not file.exists():
            raise FileNotFoundError(
                f"settings file {file} does not exist (named by --config or EDGELOOP_CONFIG)"
            )
        data = yaml.safe_load(file.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"settings file {file} must hold a mapping at its top level")
        return data


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the settings from (in order of precedence) overrides, environment, then the YAML file."""
    if config_file is not None:
        overrides["config_file"] = Path(config_file)
    return Settings(**overrides)
