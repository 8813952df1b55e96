"""Every error the server answers with, and the ONE table mapping them to HTTP and gRPC statuses.

Each class names the status it becomes in its docstring. Messages are written for
the client: they say what was expected and what to send instead, and carry no
internals (paths, stack traces). Client mistakes are 4xx, never 500.

REST handlers and the gRPC interceptor both call :func:`http_status` /
:func:`grpc_status`; kserve's own errors (``InvalidInput``, ``ModelNotFound``, ...)
are mapped here too, so a request that fails inside kserve code gets the same answer.
"""

from __future__ import annotations

from typing import Any


class ServingError(Exception):
    """Base class. ``kind`` labels the error counter; ``message`` goes to the client."""

    kind = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidInputError(ServingError):
    """400 / INVALID_ARGUMENT: the request is malformed (bad JSON, missing fields, wrong names)."""

    kind = "invalid_input"


class ShapeError(InvalidInputError):
    """400 / INVALID_ARGUMENT: a tensor's shape (rank, size, byte count) is not what the model takes."""

    kind = "bad_shape"


class DatatypeError(InvalidInputError):
    """400 / INVALID_ARGUMENT: a tensor's datatype is not one of BYTES, UINT8, FP32."""

    kind = "bad_dtype"


class UndecodableImageError(InvalidInputError):
    """400 / INVALID_ARGUMENT: a BYTES element is not a decodable JPEG/PNG image."""

    kind = "undecodable_image"


class PayloadTooLargeError(ServingError):
    """413 / RESOURCE_EXHAUSTED: the body or the number of images is over the server's limit."""

    kind = "too_large"


class TooManyRequestsError(ServingError):
    """429 / RESOURCE_EXHAUSTED: the server already has its maximum of requests in flight; retry with backoff."""

    kind = "too_many_requests"


class ModelNotFoundError(ServingError):
    """404 / NOT_FOUND: no model of that name is served."""

    kind = "unknown_model"


class VersionNotFoundError(ServingError):
    """404 / NOT_FOUND: the model has no such version or alias."""

    kind = "unknown_version"


class ModelLoadError(ServingError):
    """422 / FAILED_PRECONDITION: a model could not be loaded (missing files, bad card, bad ONNX)."""

    kind = "load_failed"


class IntegrityRefusedError(ModelLoadError):
    """422 / FAILED_PRECONDITION: a model file does not match the sha256 in its card; it is not loaded."""

    kind = "integrity"


class ConflictError(ServingError):
    """409 / FAILED_PRECONDITION: the admin action conflicts with the current state (e.g. unload the champion)."""

    kind = "conflict"


class AdminDisabledError(ServingError):
    """403 / PERMISSION_DENIED: admin endpoints (edgeloop's, kserve's repository load/unload) are off,
    or the admin token is missing or wrong."""

    kind = "forbidden"


class SourceNotAllowedError(AdminDisabledError):
    """403 / PERMISSION_DENIED: an admin load names a URI outside the sources this server may load from."""

    kind = "source_not_allowed"


class ServerConfigError(ServingError):
    """Not a request error: the server's options are unsafe or inconsistent, so it does not start."""

    kind = "config"


class OverloadedError(ServingError):
    """503 / UNAVAILABLE: the batching queue is full; retry with backoff."""

    kind = "overloaded"


# The one table: error class -> (HTTP status, gRPC status code name). Most specific first.
_STATUS: list[tuple[type[BaseException], int, str]] = [
    (PayloadTooLargeError, 413, "RESOURCE_EXHAUSTED"),
    (TooManyRequestsError, 429, "RESOURCE_EXHAUSTED"),
    (InvalidInputError, 400, "INVALID_ARGUMENT"),
    (ModelNotFoundError, 404, "NOT_FOUND"),
    (VersionNotFoundError, 404, "NOT_FOUND"),
    (ModelLoadError, 422, "FAILED_PRECONDITION"),
    (ConflictError, 409, "FAILED_PRECONDITION"),
    (AdminDisabledError, 403, "PERMISSION_DENIED"),
    (OverloadedError, 503, "UNAVAILABLE"),
]


def _kserve_statuses() -> list[tuple[type[BaseException], int, str]]:
    from kserve import errors as ke

    return [
        (ke.InvalidInput, 400, "INVALID_ARGUMENT"),
        (ke.ModelNotFound, 404, "NOT_FOUND"),
        (ke.ModelNotReady, 503, "UNAVAILABLE"),
        (ke.ServerNotReady, 503, "UNAVAILABLE"),
        (ke.ServerNotLive, 503, "UNAVAILABLE"),
        (ke.UnsupportedProtocol, 501, "UNIMPLEMENTED"),
        (NotImplementedError, 501, "UNIMPLEMENTED"),
    ]


def _lookup(exc: BaseException) -> tuple[int, str] | None:
    for cls, http, grpc_code in _STATUS + _kserve_statuses():
        if isinstance(exc, cls):
            return http, grpc_code
    return None


def http_status(exc: BaseException) -> int:
    """The HTTP status for ``exc``; 500 for anything not in the table (a server bug)."""
    found = _lookup(exc)
    return found[0] if found else 500


def grpc_status(exc: BaseException) -> Any:
    """The ``grpc.StatusCode`` for ``exc``; INTERNAL for anything not in the table."""
    import grpc

    found = _lookup(exc)
    return getattr(grpc.StatusCode, found[1]) if found else grpc.StatusCode.INTERNAL


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, ServingError):
        return exc.kind
    found = _lookup(exc)
    if found is None:
        return "internal"
    return {400: "invalid_input", 404: "unknown_model", 501: "unimplemented"}.get(found[0], "unavailable")


def public_message(exc: BaseException) -> str:
    """What the client reads: our messages as written; kserve's reasons; nothing internal for 500s."""
    if isinstance(exc, ServingError):
        return exc.message
    if _lookup(exc) is not None:
        return str(getattr(exc, "reason", None) or exc)
    return "internal server error; the server log has the details"
