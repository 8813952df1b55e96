"""Bounds that hold for every route: the body size (V1 and admin included) and the requests in flight.

Per request, :mod:`edgeloop.serving.codec` bounds the images (count, pixels each, pixels in all)
and :class:`edgeloop.serving.model.OnnxImageModel` the decodes running at once. Here:

* :class:`BodyLimitMiddleware`: a declared ``Content-Length`` over the limit is answered 413 at
  once; a body without one is counted as it arrives and refused (413) past the limit, before
  kserve's V1 handler or anyone else has it in memory.
* :class:`InflightLimiter` with :class:`ConcurrencyLimitMiddleware` (REST) and
  :func:`concurrency_interceptor` (gRPC): one count for both protocols (one event loop); past the
  limit a request gets 429 / RESOURCE_EXHAUSTED at once instead of queueing without bound.
  Counted in ``edgeloop_serving_errors_total{kind="too_many_requests"}``, in flight in
  ``edgeloop_serving_inflight_requests``. Health probes and ``/metrics`` are never refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from edgeloop.serving import metrics
from edgeloop.serving.errors import PayloadTooLargeError
from edgeloop.serving.security import OPEN_PATHS, OPEN_RPCS, header_value

UNCOUNTED_PATHS = OPEN_PATHS | {"/metrics"}


async def json_response(
    send: Any, status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = orjson.dumps({"error": message})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """ASGI middleware: no request body over ``max_bytes`` on any route (413)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = header_value(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            metrics.ERRORS.labels("unknown", "too_large", "rest").inc()
            await json_response(
                send, 413, f"the request body is {declared} bytes; this server takes at most {limit}"
            )
            return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body") or b"")
                if seen > limit:  # raised inside the handler reading the body: the error handlers answer 413
                    raise PayloadTooLargeError(f"the request body is over this server's {limit} byte limit")
            return message

        await self.app(scope, limited, send)


class InflightLimiter:
    """Requests in flight across REST and gRPC. Used on the event loop only (no lock needed)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.inflight = 0

    def try_acquire(self, protocol: str) -> bool:
        if self.limit and self.inflight >= self.limit:
            metrics.ERRORS.labels("unknown", "too_many_requests", protocol).inc()
            return False
        self.inflight += 1
        metrics.INFLIGHT.set(self.inflight)
        return True

    def release(self) -> None:
        self.inflight -= 1
        metrics.INFLIGHT.set(self.inflight)

    @property
    def message(self) -> str:
        return f"this server has its maximum of {self.limit} requests in flight; retry with backoff"


class ConcurrencyLimitMiddleware:
    """ASGI middleware: past the limit a request is answered 429 with ``Retry-After: 1``."""

    def __init__(self, app: Any, limiter: InflightLimiter):
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path", "") in UNCOUNTED_PATHS:
            await self.app(scope, receive, send)
            return
        if not self.limiter.try_acquire("rest"):
            await json_response(send, 429, self.limiter.message, [(b"retry-after", b"1")])
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.limiter.release()


def concurrency_interceptor(limiter: InflightLimiter) -> Any:
    """A grpc.aio server interceptor: past the limit a call gets RESOURCE_EXHAUSTED (health RPCs never)."""
    import grpc
    from grpc import aio

    class ConcurrencyInterceptor(aio.ServerInterceptor):
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            handler = await continuation(details)
            method = details.method.rsplit("/", 1)[-1]
            if handler is None or method in OPEN_RPCS or handler.unary_unary is None:
                return handler
            inner = handler.unary_unary

            async def bounded(request: Any, context: Any) -> Any:
                if not limiter.try_acquire("grpc"):
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, limiter.message)
                try:
                    return await inner(request, context)
                finally:
                    limiter.release()

            return grpc.unary_unary_rpc_method_handler(
                bounded,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

    return ConcurrencyInterceptor()
