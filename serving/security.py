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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for the server: its certificate chain, its key, and (mutual TLS) the client CA."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @classmethod
    def from_args(
        cls, cert: str | Path | None, key: str | Path | None, client_ca: str | Path | None
    ) -> TlsFiles | None:
        if not cert and not key:
            if client_ca:
                raise ServerConfigError(
                    "a client CA (mutual TLS) needs the server's --tls-cert and --tls-key"
                )
            return None
        if not (cert and key):
            raise ServerConfigError("TLS needs both the certificate (--tls-cert) and its key (--tls-key)")
        files = cls(Path(cert), Path(key), Path(client_ca) if client_ca else None)
        for p in (files.cert, files.key, files.client_ca):
            if p is not None and not p.is_file():
                raise ServerConfigError(f"TLS file {p} does not exist")
        return files

    def grpc_credentials(self) -> Any:
        import grpc

        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.client_ca.read_bytes() if self.client_ca else None,
            require_client_auth=self.client_ca is not None,
        )

    def uvicorn_kwargs(self) -> dict[str, Any]:
        import ssl

        kw: dict[str, Any] = {"ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key)}
        if self.client_ca is not None:
            kw |= {"ssl_ca_certs": str(self.client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        return kw


def check_startup(
    bind_host: str,
    admin_enabled: bool,
    admin_token: str | None,
    auth_token: str | None,
    tls: bool = False,
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
    if (auth_token or admin_token) and not tls and not is_loopback(bind_host):
        warnings.append(
            f"tokens travel in clear text to {bind_host}: serve TLS (--tls-cert/--tls-key) unless a "
            "mesh (Istio mTLS) encrypts the traffic"
        )
    if admin_token and auth_token and hmac.compare_digest(admin_token, auth_token):
        warnings.append("the admin token equals the data-plane token: every client can administer models")
    return warnings


# --------------------------------------------------------------------------- enforcement
ADMIN_PATH_PREFIXES = ("/edgeloop/admin/", "/v2/repository/")  # checked against the admin token instead
UNAUTHENTICATED_MESSAGE = "this server needs 'Authorization: Bearer <token>'; ask its operator for the token"


def header_value(scope: dict[str, Any], name: bytes) -> str | None:
    """An ASGI request header (lower-case ``name``), or None."""
    for k, v in scope.get("headers") or ():
        if k == name:
            return v.decode("latin-1")
    return None


class BearerAuthMiddleware:
    """ASGI middleware: every HTTP request but the health probes needs the data-plane token (401
    otherwise, counted as ``unauthenticated``). Admin routes are left to the admin check, which
    wants the admin token in the same header."""

    def __init__(self, app: Any, token: str):
        self.app = app
        self.token = token

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if (
            path in OPEN_PATHS
            or path.startswith(ADMIN_PATH_PREFIXES)
            or bearer_ok(header_value(scope, b"authorization"), self.token)
        ):
            await self.app(scope, receive, send)
            return
        from edgeloop.serving import metrics

        metrics.ERRORS.labels("unknown", "unauthenticated", "rest").inc()
        body = b'{"error":"' + UNAUTHENTICATED_MESSAGE.encode() + b'"}'
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def auth_interceptor(token: str) -> Any:
    """A grpc.aio server interceptor: every call but ``ServerLive``/``ServerReady`` (probes) and the
    repository RPCs (admin token) needs ``authorization: Bearer <token>`` metadata, else UNAUTHENTICATED."""
    import grpc
    from grpc import aio

    from edgeloop.serving import metrics

    async def deny(request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)

    async def deny_stream(request_iterator: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
        yield  # pragma: no cover - abort raises

    class AuthInterceptor(aio.ServerInterceptor):
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            method = details.method.rsplit("/", 1)[-1]
            if method in OPEN_RPCS or method.startswith("Repository"):
                return await continuation(details)
            sent = next((v for k, v in details.invocation_metadata or () if k == "authorization"), None)
            if bearer_ok(sent if isinstance(sent, str) else None, token):
                return await continuation(details)
            handler = await continuation(details)
            if handler is None:
                return None
            metrics.ERRORS.labels("unknown", "unauthenticated", "grpc").inc()
            if handler.request_streaming or handler.response_streaming:
                return grpc.stream_stream_rpc_method_handler(deny_stream)
            return grpc.unary_unary_rpc_method_handler(deny)

    return AuthInterceptor()
