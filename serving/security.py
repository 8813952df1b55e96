"""Who may talk to the server, and over what: tokens, TLS, and the start-up rules that close it by default.

* **Admin** (version loads, aliases, unloads, and kserve's repository load/unload) is off
  unless ``--enable-admin``. kserve's repository routes additionally need an admin token:
  without one they answer 403 / PERMISSION_DENIED even with admin on. Admin on an address
  other than loopback without a token refuses to start.
* **Data plane authentication** (``--auth-token-file``): every REST route but the health
  probes needs ``Authorization: Bearer <token>`` and every gRPC call but the health RPCs the
  ``authorization`` metadata (401 / UNAUTHENTICATED otherwise).
* **TLS** (``--tls-cert``/``--tls-key``, optionally ``--tls-client-ca`` for mutual TLS):
  HTTPS and a TLS gRPC port; with a client CA, a client without a certificate signed by it is
  refused during the handshake.

Tokens come from a file (a mounted Secret) or the environment, never from the command line,
where ``ps`` and shell history would show them.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path
from typing import Any

from edgeloop.serving.errors import ServerConfigError

ADMIN_TOKEN_ENV = "EDGELOOP_SERVING_ADMIN_TOKEN"
ADMIN_TOKEN_FILE_ENV = "EDGELOOP_SERVING_ADMIN_TOKEN_FILE"
AUTH_TOKEN_ENV = "EDGELOOP_SERVING_AUTH_TOKEN"
AUTH_TOKEN_FILE_ENV = "EDGELOOP_SERVING_AUTH_TOKEN_FILE"

# REST paths and gRPC methods anyone may call: what Kubernetes probes.
OPEN_PATHS = frozenset({"/", "/v2/health/live", "/v2/health/ready"})
OPEN_RPCS = frozenset({"ServerLive", "ServerReady"})


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    h = host.strip().strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def read_token_file(path: str | Path, what: str) -> str:
    """The token in ``path`` (surrounding whitespace and the trailing newline removed)."""
    p = Path(path)
    try:
        token = p.read_text().strip()
    except OSError as e:
        raise ServerConfigError(f"cannot read the {what} file {p}: {e.strerror}") from e
    if not token:
        raise ServerConfigError(f"the {what} file {p} is empty; write the token into it")
    if any(c.isspace() for c in token):
        raise ServerConfigError(f"the {what} in {p} contains whitespace; a bearer token is one word")
    return token


def token_from(file: str | Path | None, env: str, file_env: str, what: str) -> str | None:
    """A token from ``file``, else the file named by ``$file_env``, else ``$env``; None if none is set."""
    file = file or os.environ.get(file_env) or None
    if file:
        return read_token_file(file, what)
    return os.environ.get(env) or None


def bearer_ok(authorization: str | None, token: str) -> bool:
    """Constant-time check of an ``Authorization`` header (or gRPC metadata) against ``Bearer <token>``."""
    return hmac.compare_digest((authorization or "").encode(), f"Bearer {token}".encode())


def grpc_metadata(context: Any, key: str) -> str:
    """One invocation metadata value of a gRPC call ('' when absent)."""
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode(errors="replace")
    return ""


def check_startup(
    bind_host: str, admin_enabled: bool, admin_token: str | None, auth_token: str | None
) -> list[str]:
    """Refuse (:class:`ServerConfigError`) what must not start; return warnings for what may.

    Admin on an address other than loopback without a token: anyone who reaches the port
    could load, switch or unload models, so the server does not start.
    """
    warnings = []
    if admin_enabled and not admin_token and not is_loopback(bind_host):
        raise ServerConfigError(
            f"admin is enabled on {bind_host}, which other machines can reach, without an admin token; "
            f"put a token in a file and pass --admin-token-file (or set {ADMIN_TOKEN_ENV}), "
            "or bind 127.0.0.1"
        )
    if admin_token and auth_token and hmac.compare_digest(admin_token, auth_token):
        warnings.append("the admin token equals the data-plane token: every client can administer models")
    return warnings
