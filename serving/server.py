"""The model server: kserve's data plane behind edgeloop's uvicorn and grpc.aio servers.

From kserve 0.21, through its public API only: the model repository, ``DataPlane`` (health,
V1 ``:predict``, the V2 handlers), its REST endpoint registration, ``/metrics`` and the gRPC
``InferenceServicer``. Built here: the FastAPI app, the uvicorn server and the grpc.aio server
(``kserve.ModelServer.start`` binds 0.0.0.0 and [::] with no way to choose), plus:

* ``POST /v2/models/{name}[/versions/{v}]/infer`` (registered before kserve's routes,
  so they win): the body is decoded by :mod:`edgeloop.serving.codec` (zero-copy binary tensors)
  instead of kserve's per-element path, and versions/aliases are honoured.
* ``GET /v2/models/{name}[/versions/{v}][/ready]`` with versions and the execution provider.
* admin (off unless enabled): ``POST /edgeloop/admin/models/{name}/versions`` loads a
  version from a URI, ``PUT .../aliases/{alias}`` moves an alias, ``DELETE
  .../versions/{v}`` drains and unloads one. kserve's repository load/unload (REST and gRPC)
  go through the same check and also need an admin token (:mod:`edgeloop.serving.security`).
* readiness (``/v2/health/ready``, gRPC ``ServerReady``): false while any served model is
  out of service, so Kubernetes stops routing to a pod that would fail every request.
* one error mapping (:mod:`edgeloop.serving.errors`) for REST handlers and a gRPC interceptor.
* binding: both servers bind ``bind_host`` (127.0.0.1 by default for ``edgeloop serve``;
  0.0.0.0 in the container).
* shutdown: on SIGTERM/SIGINT/SIGQUIT uvicorn drains REST, then gRPC gets the same grace,
  then the models are unloaded (which flushes the payload log).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent import futures
from importlib import metadata
from typing import TYPE_CHECKING, Any

import orjson
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import ORJSONResponse
from grpc import aio
from grpc_interceptor import AsyncExceptionToStatusInterceptor
from kserve import ModelRepository
from kserve.errors import (
    InferenceError,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    NoModelReady,
    ServerNotLive,
    ServerNotReady,
    UnsupportedProtocol,
    inference_error_handler,
    server_not_live_handler,
    server_not_ready_handler,
    unsupported_protocol_error_handler,
)
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferRequest, InferResponse
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import metrics_handler
from kserve.protocol.rest.v1_endpoints import register_v1_endpoints
from kserve.protocol.rest.v2_endpoints import register_v2_endpoints
from starlette.routing import Route

from edgeloop.core.model_card import normalize_digest
from edgeloop.serving import codec, metrics
from edgeloop.serving.errors import (
    AdminDisabledError,
    InvalidInputError,
    ModelNotFoundError,
    PayloadTooLargeError,
    ServerConfigError,
    SourceNotAllowedError,
    error_kind,
    grpc_status,
    http_status,
    public_message,
)
from edgeloop.serving.limits import (
    BodyLimitMiddleware,
    ConcurrencyLimitMiddleware,
    InflightLimiter,
    concurrency_interceptor,
)
from edgeloop.serving.model import OnnxImageModel
from edgeloop.serving.options import ServingOptions
from edgeloop.serving.routing import CLIENT_KEY_HEADER, Canary
from edgeloop.serving.security import (
    BearerAuthMiddleware,
    TlsFiles,
    auth_interceptor,
    bearer_ok,
    check_startup,
    grpc_metadata,
)
from edgeloop.serving.sources import ModelSpec, default_admin_sources, resolve, source_allowed

if TYPE_CHECKING:
    from edgeloop.core.config import Settings

log = logging.getLogger(__name__)
ADMIN_PREFIX = "/edgeloop/admin"
SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)


class Routes:
    """Edgeloop's REST routes and error handlers, installed on the server's FastAPI app."""

    def __init__(
        self,
        models: dict[str, OnnxImageModel],
        options: ServingOptions,
        settings: Settings | None,
        repository: ModelRepository | None = None,
    ):
        self.models = models
        self.options = options
        self.settings = settings
        self.repository = repository

    def model(self, name: str) -> OnnxImageModel:
        model = self.models.get(name)
        if model is None:
            raise ModelNotFoundError(f"no model named {name!r} is served here; models: {sorted(self.models)}")
        if not model.ready:
            raise ModelNotReady(name)
        return model

    def not_ready(self) -> list[str]:
        """The served models that cannot take requests now (unloaded by an admin, or not loaded)."""
        served = self.repository.get_models() if self.repository is not None else self.models
        return sorted(name for name, m in self.models.items() if not (m.ready and served.get(name) is m))

    def install(self, app: FastAPI) -> None:
        add = app.add_api_route
        # Before kserve's: readiness that follows the models, and repository routes behind admin.
        add("/v2/health/ready", self.server_ready, methods=["GET"], response_model=None)
        add(
            "/v2/repository/models/{model_name}/load",
            self.repository_load,
            methods=["POST"],
            response_model=None,
        )
        add(
            "/v2/repository/models/{model_name}/unload",
            self.repository_unload,
            methods=["POST"],
            response_model=None,
        )
        for prefix in ("/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}"):
            # A plain Starlette route: the hot path skips FastAPI's parameter and response machinery.
            app.router.routes.append(Route(prefix + "/infer", self.infer_endpoint, methods=["POST"]))
            add(prefix, self.metadata, methods=["GET"], response_model=None)
            add(prefix + "/ready", self.ready, methods=["GET"], response_model=None)
        add(
            ADMIN_PREFIX + "/models/{model_name}/versions",
            self.admin_load,
            methods=["POST"],
            response_model=None,
        )
        add(
            ADMIN_PREFIX + "/models/{model_name}/versions/{model_version}",
            self.admin_unload,
            methods=["DELETE"],
            response_model=None,
        )
        add(
            ADMIN_PREFIX + "/models/{model_name}/aliases/{alias}",
            self.admin_alias,
            methods=["PUT"],
            response_model=None,
        )
        add(
            ADMIN_PREFIX + "/models/{model_name}/traffic",
            self.admin_traffic,
            methods=["GET", "PUT"],
            response_model=None,
        )

    def install_error_handlers(self, app: FastAPI) -> None:
        # kserve's own error classes too, so every error is counted and shaped the same way.
        from edgeloop.serving.errors import ServingError

        for cls in (ServingError, InvalidInput, ModelNotFound, ModelNotReady, NotImplementedError, Exception):
            app.add_exception_handler(cls, self.error_response)

    async def error_response(self, request: Request, exc: Exception) -> Response:
        status = http_status(exc)
        name = request.path_params.get("model_name", "")
        path = request.url.path
        protocol = (
            "rest_v1"
            if path.startswith("/v1/")
            else "admin"
            if path.startswith(ADMIN_PREFIX)
            else "rest_v2_binary"
            if "inference-header-content-length" in request.headers
            else "rest_v2_json"
        )
        metrics.ERRORS.labels(name if name in self.models else "unknown", error_kind(exc), protocol).inc()
        if status >= 500 and status != 503:
            log.error("internal error on %s %s", request.method, path, exc_info=exc)
        return Response(
            orjson.dumps({"error": public_message(exc)}), status_code=status, media_type="application/json"
        )

    # -- inference ------------------------------------------------------------------------------
    async def infer_endpoint(self, request: Request) -> Response:
        p = request.path_params
        return await self.infer(request, p["model_name"], p.get("model_version"))

    async def infer(self, request: Request, model_name: str, model_version: str | None = None) -> Response:
        body = await self._read_body(request)
        model = self.model(model_name)
        infer_request = codec.decode_rest_v2(
            body, request.headers.get("inference-header-content-length"), model_name, model_version
        )
        headers = {k: v for k in ("x-request-id", CLIENT_KEY_HEADER) if (v := request.headers.get(k))}
        response = await model.handle(infer_request, headers)
        assert isinstance(response, InferResponse)
        out, json_len = codec.encode_rest_v2(
            response, infer_request.request_outputs, infer_request.parameters
        )
        if json_len is None:
            return Response(out, media_type="application/json")
        return Response(
            out,
            media_type="application/octet-stream",
            headers={"inference-header-content-length": str(json_len)},
        )

    async def _read_body(self, request: Request) -> bytes:
        limit = self.options.limits.max_request_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(
                f"the request body is {declared} bytes; this server takes at most {limit}"
            )
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise PayloadTooLargeError(f"the request body is over this server's {limit} byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    async def metadata(self, model_name: str, model_version: str | None = None) -> Response:
        return Response(
            orjson.dumps(self.model(model_name).metadata(model_version)), media_type="application/json"
        )

    async def ready(self, model_name: str, model_version: str | None = None) -> Response:
        model = self.model(model_name)
        lv = model.versions.resolve(model_version)
        return Response(
            orjson.dumps({"name": model_name, "version": lv.version, "ready": True}),
            media_type="application/json",
        )

    async def server_ready(self) -> Response:
        """200 only while every served model is ready: a pod whose model an admin unloaded leaves
        the Service's endpoints instead of failing every request routed to it."""
        missing = self.not_ready()
        if missing:
            return Response(
                orjson.dumps({"ready": False, "not_ready": missing}),
                status_code=503,
                media_type="application/json",
            )
        return Response(orjson.dumps({"ready": True}), media_type="application/json")

    # -- admin ----------------------------------------------------------------------------------
    def check_admin(self, authorization: str | None, repository: bool = False) -> None:
        """Admin is off unless enabled; with a token, the token is required. kserve's repository
        load/unload (``repository=True``) take a whole model offline or back, so they need a token
        even on loopback: without one they are refused."""
        if not self.options.admin_enabled:
            raise AdminDisabledError("admin endpoints are disabled; start the server with --enable-admin")
        token = self.options.admin_token
        if repository and not token:
            raise AdminDisabledError(
                "model repository load/unload needs an admin token; start the server with "
                "--enable-admin and --admin-token-file"
            )
        if token and not bearer_ok(authorization, token):
            raise AdminDisabledError("admin endpoints need 'Authorization: Bearer <admin token>'")

    def _check_admin(self, request: Request) -> None:
        self.check_admin(request.headers.get("authorization"))

    def unload_model(self, name: str) -> None:
        """Take the whole model out of service (its versions stay loaded); readiness turns false."""
        model = self.models.get(name)
        if model is None:
            raise ModelNotFoundError(f"no model named {name!r} is served here; models: {sorted(self.models)}")
        model.ready = False
        log.warning("admin: model %s taken out of service; the server reports not ready", name)

    def load_model(self, name: str) -> None:
        """Put a model taken out of service back (only models this server was started with)."""
        model = self.models.get(name)
        if model is None:
            raise ModelNotFoundError(
                f"no model named {name!r} is served here; load versions of a served model with "
                f"POST {ADMIN_PREFIX}/models/{{name}}/versions"
            )
        if not model.versions.versions:
            raise ModelNotReady(name)
        model.ready = True
        log.info("admin: model %s back in service", name)

    async def repository_load(self, request: Request, model_name: str) -> Response:
        self.check_admin(request.headers.get("authorization"), repository=True)
        self.load_model(model_name)
        return Response(orjson.dumps({"name": model_name, "load": True}), media_type="application/json")

    async def repository_unload(self, request: Request, model_name: str) -> Response:
        self.check_admin(request.headers.get("authorization"), repository=True)
        self.unload_model(model_name)
        return Response(orjson.dumps({"name": model_name, "unload": True}), media_type="application/json")

    async def _json(self, request: Request) -> dict[str, Any]:
        try:
            doc = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise InvalidInputError("the admin request body must be a JSON object") from None
        if not isinstance(doc, dict):
            raise InvalidInputError("the admin request body must be a JSON object")
        return doc

    async def admin_load(self, request: Request, model_name: str) -> Response:
        """Body ``{"uri": ..., "version": optional, "aliases": [...]}``; loads beside the serving versions."""
        self._check_admin(request)
        model = self.model(model_name)
        doc = await self._json(request)
        uri, aliases, digest = doc.get("uri"), doc.get("aliases") or [], doc.get("digest")
        if not isinstance(uri, str) or not isinstance(aliases, list) or not isinstance(digest, str | None):
            raise InvalidInputError(
                'body needs "uri" (string) and optionally "version", "aliases" (list), "digest" (sha256)'
            )
        allowed = self.options.admin_sources or default_admin_sources(self.settings)
        if "#" in uri or not source_allowed(uri, allowed):
            raise SourceNotAllowedError(
                f"this server loads models only from {list(allowed)}; {uri!r} is not under any of them "
                "(start it with --admin-allow-source to add one)"
            )
        spec = ModelSpec(
            uri=uri, version=doc.get("version"), aliases=tuple(str(a) for a in aliases), digest=digest
        )
        src = await asyncio.to_thread(resolve, spec, self.settings, self.options.cache_dir)
        lv = await asyncio.to_thread(model.load_source, src)  # verify + load + warm up, off the loop
        try:
            model.add_version(lv, src.aliases)
        except Exception:
            if lv.runner is not None:
                await lv.runner.close()
            raise
        log.info("admin: loaded %s version %s from %s", model_name, lv.version, uri)
        return Response(
            orjson.dumps({**lv.describe(), "aliases": dict(model.versions.aliases)}),
            media_type="application/json",
        )

    async def admin_alias(self, request: Request, model_name: str, alias: str) -> Response:
        """Body ``{"version": V}``: new requests without a version (for ``champion``) go to V at once."""
        self._check_admin(request)
        model = self.model(model_name)
        version = (await self._json(request)).get("version")
        if not isinstance(version, str):
            raise InvalidInputError('body needs "version": the version id the alias should point at')
        model.versions.set_alias(alias, version)
        return Response(
            orjson.dumps({"name": model_name, "aliases": dict(model.versions.aliases)}),
            media_type="application/json",
        )

    async def admin_traffic(self, request: Request, model_name: str) -> Response:
        """GET the canary and shadow; PUT ``{"canary": "ALIAS=PERCENT" | null, "shadow": "ALIAS" | null}``
        (a key left out keeps its setting)."""
        self._check_admin(request)
        model = self.model(model_name)
        if request.method == "PUT":
            doc = await self._json(request)
            canary, shadow = doc.get("canary"), doc.get("shadow")
            if not isinstance(canary, str | None) or not isinstance(shadow, str | None) or not doc:
                raise InvalidInputError(
                    'body: {"canary": "ALIAS=PERCENT" or null, "shadow": "ALIAS" or null}'
                )
            model.set_traffic(
                (Canary.parse(canary) if canary else None) if "canary" in doc else model.traffic.canary,
                shadow if "shadow" in doc else model.traffic.shadow,
            )
        return Response(
            orjson.dumps(
                {"name": model_name, **model.traffic.describe(), "aliases": dict(model.versions.aliases)}
            ),
            media_type="application/json",
        )

    async def admin_unload(self, request: Request, model_name: str, model_version: str) -> Response:
        self._check_admin(request)
        model = self.model(model_name)
        await model.unload_version(model_version)
        return Response(
            orjson.dumps({"name": model_name, "versions": sorted(model.versions.versions)}),
            media_type="application/json",
        )


# ------------------------------------------------------------------------------------- REST
def rest_app(
    dataplane: DataPlane,
    repository_extension: ModelRepositoryExtension,
    routes: Routes,
    enable_docs: bool,
    auth_token: str | None = None,
    limiter: InflightLimiter | None = None,
) -> FastAPI:
    """Edgeloop's routes, then kserve's (health, ``/metrics``, V1, the rest of V2), on a new app;
    with ``auth_token``, every route but the health probes needs it (:class:`BearerAuthMiddleware`)."""
    app = FastAPI(
        title="edgeloop model server",
        version=metadata.version("kserve"),
        docs_url="/docs" if enable_docs else None,
        redoc_url=None,
        default_response_class=ORJSONResponse,  # as kserve's app: its V1/V2 handlers return plain objects
    )
    routes.install(app)  # first: Starlette takes the first matching route
    app.add_api_route("/", dataplane.live, methods=["GET"])
    app.add_api_route("/metrics", metrics_handler, methods=["GET"])
    register_v1_endpoints(app, dataplane, repository_extension)
    register_v2_endpoints(app, dataplane, repository_extension)
    # kserve's handlers for the errors edgeloop does not shape itself; Starlette picks the most
    # specific class, so these win over the catch-all ``Exception`` handler below.
    app.add_exception_handler(InferenceError, inference_error_handler)
    app.add_exception_handler(UnsupportedProtocol, unsupported_protocol_error_handler)
    app.add_exception_handler(ServerNotLive, server_not_live_handler)
    app.add_exception_handler(ServerNotReady, server_not_ready_handler)
    routes.install_error_handlers(app)
    # Outermost last: authenticate, then count the request in flight, then bound its body.
    app.add_middleware(BodyLimitMiddleware, max_bytes=routes.options.limits.max_request_bytes)
    if limiter is not None:
        app.add_middleware(ConcurrencyLimitMiddleware, limiter=limiter)
    if auth_token:
        app.add_middleware(BearerAuthMiddleware, token=auth_token)
    # No per-request timing middleware or access log: lifecycle events only (see logs.py).
    return app


# ------------------------------------------------------------------------------------- gRPC
class EdgeloopServicer(InferenceServicer):
    """kserve's servicer (ModelInfer, health) with versions in ModelReady and ModelMetadata."""

    def __init__(self, data_plane: DataPlane, repo_ext: ModelRepositoryExtension, routes: Routes):
        super().__init__(data_plane, repo_ext)
        self.routes = routes

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        # unknown -> NOT_FOUND, taken out of service -> UNAVAILABLE
        model = self.routes.model(request.model_name)
        self.validate_grpc_request(request)
        headers = {k: v for k in ("x-request-id", CLIENT_KEY_HEADER) if (v := grpc_metadata(context, k))}
        response = await model.handle(InferRequest.from_grpc(request), headers)
        assert isinstance(response, InferResponse)
        return codec.encode_grpc(response)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=not self.routes.not_ready())

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        self.routes.check_admin(grpc_metadata(context, "authorization"), repository=True)
        self.routes.load_model(request.model_name)
        return pb.RepositoryModelLoadResponse(model_name=request.model_name, isLoaded=True)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        self.routes.check_admin(grpc_metadata(context, "authorization"), repository=True)
        self.routes.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse(model_name=request.model_name, isUnloaded=True)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        model = self.routes.model(request.name)
        model.versions.resolve(request.version)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        md = self.routes.model(request.name).metadata(request.version)

        def tensors(items: list[dict]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
            return [
                pb.ModelMetadataResponse.TensorMetadata(
                    name=t["name"], datatype=t["datatype"], shape=t["shape"]
                )
                for t in items
            ]

        return pb.ModelMetadataResponse(
            name=md["name"],
            versions=md["versions"],
            platform=md["platform"],
            inputs=tensors(md["inputs"]),
            outputs=tensors(md["outputs"]),
        )


class ErrorInterceptor(AsyncExceptionToStatusInterceptor):
    """Every exception -> the status from :mod:`edgeloop.serving.errors`; counted; no per-call logging."""

    def __init__(self, routes: Routes):
        super().__init__()
        self.routes = routes

    async def handle_exception(  # type: ignore[override]
        self, ex: Exception, request_or_iterator: Any, context: Any, method_name: str
    ) -> None:
        name = getattr(request_or_iterator, "model_name", "") or getattr(request_or_iterator, "name", "")
        metrics.ERRORS.labels(name if name in self.routes.models else "unknown", error_kind(ex), "grpc").inc()
        code = grpc_status(ex)
        if http_status(ex) >= 500 and http_status(ex) != 503:
            log.error("internal error in %s", method_name, exc_info=ex)
        await context.abort(code, public_message(ex))


def grpc_server(
    dataplane: DataPlane,
    repository_extension: ModelRepositoryExtension,
    routes: Routes,
    host: str,
    port: int,
    threads: int,
    max_message_bytes: int,
    tls: TlsFiles | None = None,
    auth_token: str | None = None,
    limiter: InflightLimiter | None = None,
) -> aio.Server:
    """A grpc.aio server with the OIP v2 servicer, bound to ``host:port`` (not started); a TLS
    port with ``tls``, and the token checked on every call but the health RPCs with ``auth_token``."""
    interceptors: list[Any] = [auth_interceptor(auth_token)] if auth_token else []
    if limiter is not None:
        interceptors.append(concurrency_interceptor(limiter))
    server = aio.server(
        futures.ThreadPoolExecutor(max_workers=threads),
        interceptors=(*interceptors, ErrorInterceptor(routes)),
        options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ],
    )
    servicer = EdgeloopServicer(dataplane, repository_extension, routes)
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if tls is not None:
        server.add_secure_port(address, tls.grpc_credentials())
    else:
        server.add_insecure_port(address)
    return server


# ------------------------------------------------------------------------------------- server
class EdgeloopModelServer:
    """kserve's data plane (model repository, V1/V2 handlers, gRPC servicer) behind edgeloop's
    own uvicorn and grpc.aio servers, on one event loop in one process.

    ``kserve.ModelServer.start`` binds 0.0.0.0 and [::] with no way to choose, so the frontend
    is built here from kserve's public pieces. Multi-worker REST is not offered: batching needs
    every request in one process (scale with replicas instead).
    """

    def __init__(self, options: ServingOptions, settings: Settings | None = None):
        self.options = options
        self.settings = settings
        self.repository = ModelRepository()
        self.dataplane = DataPlane(model_registry=self.repository)
        self.repository_extension = ModelRepositoryExtension(model_registry=self.repository)
        self.limiter = InflightLimiter(options.limits.max_concurrent_requests)  # REST and gRPC together

    def register(self, models: list[OnnxImageModel]) -> Routes:
        """Put every ready model in kserve's repository; at least one must be ready."""
        for model in models:
            if model.ready:
                self.repository.update(model)
                model.start()
        if not self.repository.get_models():
            raise NoModelReady(models)
        return Routes({m.name: m for m in models}, self.options, self.settings, self.repository)

    def rest_server(self, routes: Routes) -> uvicorn.Server:
        o = self.options
        config = uvicorn.Config(
            rest_app(
                self.dataplane, self.repository_extension, routes, o.enable_docs, o.auth_token, self.limiter
            ),
            host=o.bind_host,
            port=o.http_port,
            log_config=None,  # logging is configured by edgeloop.serving.logs
            access_log=False,
            timeout_keep_alive=o.timeout_keep_alive_s,
            timeout_graceful_shutdown=o.shutdown_grace_s,
            **(o.tls.uvicorn_kwargs() if o.tls is not None else {}),
        )
        return uvicorn.Server(config)

    def start(self, models: list[OnnxImageModel]) -> None:
        """Serve until SIGTERM/SIGINT/SIGQUIT, then drain: REST first, then gRPC, then unload."""
        check_options(self.options)
        routes = self.register(models)
        rest = self.rest_server(routes)

        def on_signal(sig: int, _frame: Any) -> None:
            # uvicorn captures SIGINT/SIGTERM itself while it serves and re-raises them after it
            # has drained, landing here; this handler covers the moments around that.
            if not rest.should_exit:
                log.info("%s: shutting down", signal.Signals(sig).name)
            rest.should_exit = True

        previous = {sig: signal.signal(sig, on_signal) for sig in SHUTDOWN_SIGNALS}
        try:
            asyncio.run(self.serve(rest, routes))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def serve(self, rest: uvicorn.Server, routes: Routes) -> None:
        o = self.options
        rpc = None
        if o.enable_grpc:
            rpc = grpc_server(
                self.dataplane,
                self.repository_extension,
                routes,
                o.bind_host,
                o.grpc_port,
                o.grpc_threads,
                o.grpc_max_message_bytes,
                tls=o.tls,
                auth_token=o.auth_token,
                limiter=self.limiter,
            )
        try:
            if rpc is not None:
                await rpc.start()
            log.info(
                "serving %s on %s://%s:%d%s%s",
                sorted(routes.models),
                "https" if o.tls else "http",
                o.bind_host,
                o.http_port,
                f" and grpc{'+tls' if o.tls else ''} {o.bind_host}:{o.grpc_port}" if rpc is not None else "",
                ", clients need the token" if o.auth_token else "",
            )
            await rest.serve()  # returns once it has stopped taking requests and drained
        finally:
            if rpc is not None:
                await rpc.stop(grace=o.shutdown_grace_s)
            for model in routes.models.values():
                await model.drain_background(o.shutdown_grace_s)
            for name in list(self.repository.get_models()):
                self.repository.unload(name)  # Model.stop(): flushes the payload log
            log.info("model server stopped")


def check_options(options: ServingOptions) -> None:
    """Refuse unsafe options before anything is loaded (:class:`ServerConfigError`); log warnings."""
    if options.expected_digest:
        try:
            normalize_digest(options.expected_digest)
        except ValueError as e:
            raise ServerConfigError(f"--expected-digest: {e}") from e
    for warning in check_startup(
        options.bind_host,
        options.admin_enabled,
        options.admin_token,
        options.auth_token,
        options.tls is not None,
    ):
        log.warning("%s", warning)


def build_models(
    specs: list[str | ModelSpec], options: ServingOptions, settings: Settings | None = None
) -> list[OnnxImageModel]:
    """Resolve, verify, load and warm up every model version; group versions by served name."""
    from edgeloop.core.model_card import ModelCard
    from edgeloop.serving.payload_logger import PayloadLogger

    logger = None
    if options.payload_log.sample_rate > 0:
        from edgeloop.core.blob import BlobStore

        if settings is None:
            raise InvalidInputError("payload logging needs settings to reach blob storage")
        pl = options.payload_log
        logger = PayloadLogger.to_blob(
            BlobStore.from_settings(settings),
            pl.container or settings.blob.payloads_container,
            sample_rate=pl.sample_rate,
            queue_size=pl.queue_size,
            batch_records=pl.batch_records,
            flush_s=pl.flush_s,
        )
        logger.start()
    if options.expected_digest and len(specs) != 1:
        raise ServerConfigError(
            f"--expected-digest pins one model, and {len(specs)} are given; pin each with #digest=SHA256"
        )
    groups: dict[str, list] = {}
    for spec in specs:
        src = resolve(spec, settings, options.cache_dir, options.expected_digest)
        name = options.model_name or src.spec.name or ModelCard.load(src.directory).name
        groups.setdefault(name, []).append(src)
    if (options.aliases or options.canary or options.shadow) and len(groups) > 1:
        raise InvalidInputError(
            "--alias, --canary and --shadow apply to one served model; this server has several"
        )
    canary = Canary.parse(options.canary) if options.canary else None
    models = []
    for name, sources in groups.items():
        model = OnnxImageModel(
            name,
            sources,
            options.ort,
            options.batching,
            options.limits,
            aliases=options.aliases,
            payload_logger=logger,
            canary=canary,
            shadow=options.shadow,
        )
        model.load()
        models.append(model)
    return models


def run_server(
    specs: list[str | ModelSpec], options: ServingOptions, settings: Settings | None = None
) -> None:
    """Load everything (a refused model stops the start), then serve until SIGTERM/SIGINT."""
    check_options(options)
    models = build_models(specs, options, settings)
    EdgeloopModelServer(options, settings).start(models)
