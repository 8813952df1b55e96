"""The model server: ``kserve.ModelServer`` with edgeloop's fast REST routes, versions and admin API.

What kserve 0.21 does as is: the process, uvicorn + grpc.aio on one event loop,
health, ``/metrics``, V1 ``:predict``, gRPC ``ModelInfer``. What is added here:

* ``POST /v2/models/{name}[/versions/{v}]/infer`` (registered before kserve's routes,
  so they win): the body is decoded by :mod:`edgeloop.serving.codec` (zero-copy binary tensors)
  instead of kserve's per-element path, and versions/aliases are honoured.
* ``GET /v2/models/{name}[/versions/{v}][/ready]`` with versions and the execution provider.
* admin (off unless enabled): ``POST /edgeloop/admin/models/{name}/versions`` loads a
  version from a URI, ``PUT .../aliases/{alias}`` moves an alias, ``DELETE
  .../versions/{v}`` drains and unloads one.
* one error mapping (:mod:`edgeloop.serving.errors`) for REST handlers and a gRPC interceptor.
* binding: kserve hard-codes 0.0.0.0 (REST) and [::] (gRPC); here both bind ``bind_host``
  (127.0.0.1 by default for ``edgeloop serve``; 0.0.0.0 in the container).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from concurrent import futures
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI, Request, Response
from grpc import aio
from grpc_interceptor import AsyncExceptionToStatusInterceptor
from kserve import ModelServer
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.server import RESTServer
from uvicorn.importer import import_from_string

from edgeloop.serving import codec, metrics
from edgeloop.serving.errors import (
    AdminDisabledError,
    InvalidInputError,
    ModelNotFoundError,
    PayloadTooLargeError,
    error_kind,
    grpc_status,
    http_status,
    public_message,
)
from edgeloop.serving.model import OnnxImageModel
from edgeloop.serving.options import ServingOptions
from edgeloop.serving.sources import ModelSpec, resolve

if TYPE_CHECKING:
    from edgeloop.core.config import Settings

log = logging.getLogger(__name__)
ADMIN_PREFIX = "/edgeloop/admin"


class Routes:
    """Edgeloop's REST routes and error handlers, installed on kserve's FastAPI app."""

    def __init__(self, models: dict[str, OnnxImageModel], options: ServingOptions, settings: Settings | None):
        self.models = models
        self.options = options
        self.settings = settings

    def model(self, name: str) -> OnnxImageModel:
        model = self.models.get(name)
        if model is None:
            raise ModelNotFoundError(f"no model named {name!r} is served here; models: {sorted(self.models)}")
        if not model.ready:
            raise ModelNotReady(name)
        return model

    def install(self, app: FastAPI) -> None:
        add = app.add_api_route
        for prefix in ("/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}"):
            add(prefix + "/infer", self.infer, methods=["POST"], response_model=None)
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

    def install_error_handlers(self, app: FastAPI) -> None:
        # After kserve's: these replace its handlers for the same classes, so every error is
        # counted and shaped the same way.
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
    async def infer(self, request: Request, model_name: str, model_version: str | None = None) -> Response:
        body = await self._read_body(request)
        model = self.model(model_name)
        infer_request = codec.decode_rest_v2(
            body, request.headers.get("inference-header-content-length"), model_name, model_version
        )
        rid = request.headers.get("x-request-id")
        response, _ = await model(infer_request, headers={"x-request-id": rid} if rid else None)
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

    # -- admin ----------------------------------------------------------------------------------
    def _check_admin(self, request: Request) -> None:
        if not self.options.admin_enabled:
            raise AdminDisabledError("admin endpoints are disabled; start the server with --enable-admin")
        token = self.options.admin_token
        if token and not hmac.compare_digest(request.headers.get("authorization", ""), f"Bearer {token}"):
            raise AdminDisabledError("admin endpoints need 'Authorization: Bearer <admin token>'")

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
        uri, aliases = doc.get("uri"), doc.get("aliases") or []
        if not isinstance(uri, str) or not isinstance(aliases, list):
            raise InvalidInputError('body needs "uri" (string) and optionally "version", "aliases" (list)')
        spec = ModelSpec(uri=uri, version=doc.get("version"), aliases=tuple(str(a) for a in aliases))
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

    async def admin_unload(self, request: Request, model_name: str, model_version: str) -> Response:
        self._check_admin(request)
        model = self.model(model_name)
        await model.unload_version(model_version)
        return Response(
            orjson.dumps({"name": model_name, "versions": sorted(model.versions.versions)}),
            media_type="application/json",
        )


# ------------------------------------------------------------------------------------- REST
class EdgeloopRESTServer(RESTServer):
    def __init__(self, *args: Any, host: str, routes: Routes, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.config.host = host  # kserve passes 0.0.0.0 to uvicorn.Config; the server reads it at serve()
        self._routes = routes

    def create_application(self) -> None:
        app = import_from_string(FASTAPI_APP_IMPORT_STRING)
        self._routes.install(app)  # first: Starlette takes the first matching route
        self._register_endpoints(app)  # kserve's: health, /metrics, V1, the rest of V2
        self._add_exception_handlers(app)
        self._routes.install_error_handlers(app)
        # kserve's timing middleware is left out: it logs a line per request.


# ------------------------------------------------------------------------------------- gRPC
class EdgeloopServicer(InferenceServicer):
    """kserve's servicer (ModelInfer, health) with versions in ModelReady and ModelMetadata."""

    def __init__(self, data_plane: Any, repo_ext: Any, routes: Routes):
        super().__init__(data_plane, repo_ext)
        self._routes = routes

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        model = self._routes.model(request.name)
        model.versions.resolve(request.version)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        md = self._routes.model(request.name).metadata(request.version)

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
        self._routes = routes

    async def handle_exception(  # type: ignore[override]
        self, ex: Exception, request_or_iterator: Any, context: Any, method_name: str
    ) -> None:
        name = getattr(request_or_iterator, "model_name", "") or getattr(request_or_iterator, "name", "")
        metrics.ERRORS.labels(
            name if name in self._routes.models else "unknown", error_kind(ex), "grpc"
        ).inc()
        code = grpc_status(ex)
        if http_status(ex) >= 500 and http_status(ex) != 503:
            log.error("internal error in %s", method_name, exc_info=ex)
        await context.abort(code, public_message(ex))


class EdgeloopGRPCServer(GRPCServer):
    def __init__(self, *args: Any, host: str, routes: Routes, max_message_bytes: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._host = host
        self._routes = routes
        self._max_message_bytes = max_message_bytes

    async def start(self, max_workers: int) -> None:
        servicer = EdgeloopServicer(self._data_plane, self._model_repository_extension, self._routes)
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(ErrorInterceptor(self._routes),),
            options=[
                ("grpc.max_send_message_length", self._max_message_bytes),
                ("grpc.max_receive_message_length", self._max_message_bytes),
            ],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._server.add_insecure_port(f"{host}:{self._port}")
        log.info("gRPC listening on %s:%d", self._host, self._port)
        await self._server.start()
        await self._server.wait_for_termination()


# ------------------------------------------------------------------------------------- server
class EdgeloopModelServer(ModelServer):
    """``kserve.ModelServer`` whose ``start`` mirrors kserve 0.21's single-process path, plus
    binding to ``bind_host`` and edgeloop's routes. Multi-worker REST is not offered: batching
    needs every request in one process (scale with replicas instead)."""

    def __init__(self, options: ServingOptions, settings: Settings | None = None):
        super().__init__(
            http_port=options.http_port,
            grpc_port=options.grpc_port,
            workers=1,
            max_threads=options.grpc_threads,
            enable_latency_logging=False,
            access_log_format=None,
            grace_period=10,
        )
        self.options = options
        self.settings = settings

    def start(self, models: list[OnnxImageModel]) -> None:  # type: ignore[override]
        self._register_and_check_atleast_one_model_is_ready(models)
        routes = Routes({m.name: m for m in models}, self.options, self.settings)
        self._rest_server = EdgeloopRESTServer(
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            workers=1,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
            host=self.options.bind_host,
            routes=routes,
        )
        self.servers.append(self._rest_server.start())
        if self.enable_grpc:
            self._grpc_server = EdgeloopGRPCServer(
                self.grpc_port,
                self.dataplane,
                self.model_repository_extension,
                kwargs={},
                grace_period=self.grace_period,
                host=self.options.bind_host,
                routes=routes,
                max_message_bytes=self.options.grpc_max_message_bytes,
            )
            self.servers.append(self._grpc_server.start(self.max_threads))
        log.info(
            "serving %s on http://%s:%d and grpc %s:%d",
            sorted(routes.models),
            self.options.bind_host,
            self.http_port,
            self.options.bind_host,
            self.grpc_port,
        )
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())


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
    groups: dict[str, list] = {}
    for spec in specs:
        src = resolve(spec, settings, options.cache_dir)
        name = options.model_name or src.spec.name or ModelCard.load(src.directory).name
        groups.setdefault(name, []).append(src)
    if options.aliases and len(groups) > 1:
        raise InvalidInputError("--alias applies to one served model; this server has several")
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
        )
        model.load()
        models.append(model)
    return models


def run_server(
    specs: list[str | ModelSpec], options: ServingOptions, settings: Settings | None = None
) -> None:
    """Load everything (a refused model stops the start), then serve until SIGTERM/SIGINT."""
    models = build_models(specs, options, settings)
    EdgeloopModelServer(options, settings).start(models)
