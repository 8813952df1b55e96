"""A Label Studio ML backend: the champion's predictions as pre-annotations for every task.

Speaks the protocol of ``label-studio-ml`` (HumanSignal/label-studio-ml-backend,
``label_studio_ml/api.py``) that Label Studio 1.x calls (``label_studio/ml/api_connector.py``):

* ``GET /health`` (and ``/``) - ``{"status": "UP", ...}``; Label Studio's connection check;
* ``POST /setup`` - ``{project, schema, hostname, access_token, extra_params}`` ->
  ``{"model_version": ...}``; called before every prediction run, so a new champion is picked
  up here (its version becomes the predictions' ``model_version``);
* ``POST /predict`` - ``{tasks, project, label_config, params}`` -> ``{"results": [one per task]}``,
  each ``{"result": [choices], "score": p, "model_version": v}``; a task that cannot be predicted
  gets ``{"task": id, "error": why}`` in its place (Label Studio skips it and logs the reason)
  and is counted in ``/health``;
* ``POST /webhook`` - training events; acknowledged, never acted on: training is the pipeline's job.

Every route requires HTTP Basic auth (Label Studio's ``BASIC_AUTH`` ML-backend option); the
server binds 127.0.0.1 unless told otherwise. Images are read from blob storage (the task's
``blob_uri``, or a SAS link of this account) or from Label Studio itself (uploads, with the API
token); links to any other host are refused, so the backend cannot be pointed at arbitrary URLs.
The model comes through :mod:`edgeloop.core.model_loader` (verified, ONNX Runtime; no torch).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import logging
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from edgeloop.core.errors import EdgeloopError, ModelError

if TYPE_CHECKING:
    import numpy as np
    from starlette.applications import Starlette

    from edgeloop.core.blob import BlobStore
    from edgeloop.core.config import Settings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024  # a /predict of a few thousand tasks is well under this
#: A detector's boxes from this score up pre-annotate a task (each region shows its score).
BOX_SCORE_FLOOR = 0.25
MAX_IMAGE_BYTES = 32 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
IMAGE_FORMATS = ("JPEG", "PNG")
TRAINING_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "START_TRAINING")


# --------------------------------------------------------------------------- errors
class BackendError(EdgeloopError):
    """A request the backend refuses; ``status`` is the HTTP status it answers with."""

    status = 400


class Unauthorized(BackendError):
    """No or wrong Basic credentials (401): connect Label Studio with `edgeloop labeling backend connect`."""

    status = 401


class PayloadTooLarge(BackendError):
    """The request body is over ``max_body_bytes`` (413)."""

    status = 413


class NoModel(BackendError):
    """No model to predict with yet, e.g. no champion registered (503)."""

    status = 503


class TaskError(Exception):
    """One task cannot be predicted (its image is missing, unreadable or not allowed)."""


# --------------------------------------------------------------------------- the labeling config
@dataclass(frozen=True)
class Interface:
    """The parts of a project's labeling config a prediction fills in: a classification's
    ``<Choices>`` or a detection's ``<RectangleLabels>``."""

    from_name: str  # the <Choices> / <RectangleLabels> tag's name
    to_name: str  # the <Image> tag it labels
    value_key: str  # the task data key holding the image (``$image`` -> ``image``)
    choices: tuple[str, ...]  # the choices, or the box labels
    task: str = "classification"

    @classmethod
    def parse(cls, config_xml: str | None) -> Interface:
        """From the labeling config; :class:`BackendError` (400) unless it has an image classification."""
        import xml.etree.ElementTree as ET

        if not config_xml:
            raise BackendError("the request carries no labeling config (label_config / schema)")
        try:
            root = ET.fromstring(config_xml)
        except ET.ParseError as e:
            raise BackendError(f"the labeling config is not valid XML: {e}") from e
        images = {el.get("name"): el.get("value", "") for el in root.iter("Image")}
        for tag, item, task in (
            ("Choices", "Choice", "classification"),
            ("RectangleLabels", "Label", "detection"),
        ):
            for control in root.iter(tag):
                to_name = control.get("toName", "")
                if control.get("name") and to_name in images and images[to_name].startswith("$"):
                    values = tuple(c.get("value", "") for c in control.iter(item))
                    return cls(control.get("name", ""), to_name, images[to_name][1:], values, task)
        raise BackendError(
            'the labeling config has no <Choices> or <RectangleLabels> for an <Image value="$...">: this '
            "backend pre-annotates image classification and defect box projects "
            "(edgeloop.core.labelstudio.label_config)"
        )


# --------------------------------------------------------------------------- the model
@dataclass
class LoadedModel:
    runner: Any  # a ModelRunner, or a detector's DetectorRunner
    version: str  # what predictions are tagged with: "<card name>:<card version>"
    source: str  # the URI or directory it came from
    registry_version: str | None = None


class ModelSource:
    """The model behind the backend: a fixed directory, or a registry alias (``models:/NAME@champion``)
    re-resolved in the background at most every ``refresh_s`` seconds, so a new champion is served
    without a restart and no request waits for a download (Label Studio gives ``/setup`` 3 s).

    A registered version is fetched into ``cache_dir`` and verified against the digest the
    registry recorded before it is opened.
    """

    def __init__(
        self,
        uri: str | Path,
        settings: Settings | None = None,
        cache_dir: Path | None = None,
        refresh_s: float = 30.0,
    ):
        self.uri = str(uri)
        self.settings = settings
        self.cache_dir = cache_dir
        self.refresh_s = refresh_s
        self._model: LoadedModel | None = None
        self._checked = 0.0
        self._refreshing = False
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()

    @property
    def follows_registry(self) -> bool:
        return self.uri.startswith("models:/")

    def current(self) -> LoadedModel:
        """The model to predict with (loaded on first use); :class:`NoModel` when there is none (yet)."""
        with self._lock:
            model = self._model
            due = (
                model is not None
                and self.follows_registry
                and not self._refreshing
                and time.monotonic() - self._checked >= self.refresh_s
            )
            self._refreshing = self._refreshing or due
        if model is None:
            return self.refresh()
        if due:
            threading.Thread(target=self.refresh, name="model-refresh", daemon=True).start()
        return model

    def refresh(self) -> LoadedModel:
        """Resolve the source now: the alias's current version (fetched and opened if new)."""
        with self._load_lock:
            try:
                model = self._load(self._model)
            finally:
                with self._lock:
                    self._refreshing = False
                    self._checked = time.monotonic()
            with self._lock:
                self._model = model
            return model

    def _load(self, previous: LoadedModel | None) -> LoadedModel:
        from edgeloop.core.model_loader import fetch_model, pinned_digests, verify_model
        from edgeloop.monitoring.model import ModelRunner

        try:
            fetched = fetch_model(self.uri, self.settings, self.cache_dir)
            if previous is not None and fetched.registry_version == previous.registry_version:
                return previous
            verified = verify_model(fetched.directory, expected_digest=pinned_digests(fetched))
            runner: Any
            if verified.card.task == "detection":
                from edgeloop.components.detection_runtime import DetectorRunner
                from edgeloop.core.model_card import MODEL_FILE

                runner = DetectorRunner(verified.card, fetched.directory / MODEL_FILE)
            else:
                runner = ModelRunner(fetched.directory)
        except ModelError as e:
            if previous is not None:  # the registry is briefly unreachable: keep serving what we have
                log.warning("could not refresh %s (%s); still serving %s", self.uri, e, previous.version)
                return previous
            raise NoModel(f"no model to pre-annotate with: {e}") from e
        card = runner.card
        model = LoadedModel(runner, f"{card.name}:{card.version}", self.uri, fetched.registry_version)
        log.info("ML backend serving %s (%s)", model.version, self.uri)
        return model


# --------------------------------------------------------------------------- images
class ImageReader:
    """A task's image as an RGB array: from blob storage (``blob_uri``, or a link into this storage
    account) or from Label Studio (uploaded files, read with the API token). Nothing else is fetched."""

    def __init__(self, settings: Settings | None, store: BlobStore | None = None, timeout_s: float = 30.0):
        self.settings = settings
        self._store = store
        self.timeout_s = timeout_s

    @property
    def store(self) -> BlobStore | None:
        if self._store is None and self.settings is not None:
            from edgeloop.core.blob import BlobStore
            from edgeloop.core.config import StackNotRunningError

            try:
                self._store = BlobStore.from_settings(self.settings)
            except (StackNotRunningError, ValueError) as e:
                log.warning("no blob storage for the ML backend: %s", e)
        return self._store

    def read(self, data: dict[str, Any], value_key: str) -> np.ndarray:
        import numpy as np

        from edgeloop.core.preprocessing import ImageDecodeError, decode_image

        raw = self._bytes(data, value_key)
        if len(raw) > MAX_IMAGE_BYTES:
            raise TaskError(f"the image is {len(raw)} bytes, over the {MAX_IMAGE_BYTES}-byte limit")
        _check_pixels(raw)
        try:
            return np.asarray(decode_image(raw, IMAGE_FORMATS))
        except ImageDecodeError as e:
            raise TaskError(str(e)) from e

    def _bytes(self, data: dict[str, Any], value_key: str) -> bytes:
        blob_uri = data.get("blob_uri")
        if isinstance(blob_uri, str) and blob_uri.startswith("az://") and self.store is not None:
            return self._download(blob_uri)
        url = data.get(value_key)
        if not isinstance(url, str) or not url:
            raise TaskError(f"the task data has no image under '{value_key}'")
        ls_url = self.settings.labelstudio_url() if self.settings is not None else None
        if url.startswith("/") and ls_url:  # an upload or a storage link served by Label Studio
            return self._get(ls_url + url, label_studio=True)
        parts = urlsplit(url)
        if ls_url and f"{parts.scheme}://{parts.netloc}" == ls_url:
            return self._get(url, label_studio=True)
        if self.store is not None and parts.scheme in ("http", "https"):
            try:
                uri = self.store.uri_from_url(url)
            except ValueError:
                pass
            else:
                return self._download(str(uri))
        raise TaskError(
            f"the image link's host ({parts.netloc or url[:40]}) is neither this blob storage account nor "
            "Label Studio: the backend fetches nothing else (add the image through `edgeloop data seed`)"
        )

    def _download(self, uri: str) -> bytes:
        assert self.store is not None
        try:
            return self.store.download(uri)
        except Exception as e:  # missing blob, storage down: this task only
            raise TaskError(f"could not read {uri} from blob storage ({type(e).__name__})") from e

    def _get(self, url: str, label_studio: bool) -> bytes:
        import httpx

        headers = {}
        if label_studio and self.settings is not None:
            headers["Authorization"] = f"Token {self.settings.labelstudio_api_key()}"
        try:
            with httpx.stream("GET", url, headers=headers, timeout=self.timeout_s) as r:
                r.raise_for_status()
                chunks, size = [], 0
                for chunk in r.iter_bytes():
                    size += len(chunk)
                    if size > MAX_IMAGE_BYTES:
                        raise TaskError(f"the image at {urlsplit(url).path} is over {MAX_IMAGE_BYTES} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as e:
            raise TaskError(f"could not fetch the image ({type(e).__name__}: {e})") from e


def _check_pixels(raw: bytes) -> None:
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw), formats=list(IMAGE_FORMATS)) as probe:
            w, h = probe.size
    except Exception as e:  # PIL raises many kinds for what it cannot identify
        raise TaskError(f"could not decode {len(raw)} bytes as JPEG or PNG ({type(e).__name__})") from e
    if w * h > MAX_IMAGE_PIXELS:
        raise TaskError(f"a {w}x{h} image is over the {MAX_IMAGE_PIXELS}-pixel limit")


# --------------------------------------------------------------------------- predictions
@dataclass
class Counters:
    predicted: int = 0
    failed: int = 0
    last_errors: list[str] = field(default_factory=list)  # the latest few, for /health

    def failure(self, msg: str) -> None:
        self.failed += 1
        self.last_errors = [*self.last_errors[-4:], msg]


class Predictor:
    """Tasks + labeling config -> Label Studio predictions, one per task, in order."""

    def __init__(self, source: ModelSource, images: ImageReader, batch_size: int = 32):
        self.source = source
        self.images = images
        self.batch_size = batch_size
        self.counters = Counters()
        self._lock = threading.Lock()

    def setup(self, label_config: str | None) -> dict[str, Any]:
        model = self.source.current()
        ui = self._interface(model, label_config)
        missing = [c for c in model.runner.card.labels if c not in ui.choices]
        if missing:
            raise BackendError(
                f"the model predicts {missing}, which the project's <Choices name='{ui.from_name}'> "
                "does not offer: add these choices to the labeling config"
            )
        return {"model_version": model.version}

    @staticmethod
    def _interface(model: LoadedModel, label_config: str | None) -> Interface:
        ui = Interface.parse(label_config)
        task = model.runner.card.task
        if ui.task != task:
            raise BackendError(
                f"the model ({model.version}) is a {task} model and the project a {ui.task} one: connect a "
                f"backend serving a {ui.task} model to this project (--model-dir / --model-uri)"
            )
        return ui

    def predict(self, tasks: Sequence[dict[str, Any]], label_config: str | None) -> list[dict[str, Any]]:
        model = self.source.current()
        ui = self._interface(model, label_config)
        out: list[dict[str, Any]] = [{} for _ in tasks]
        for start in range(0, len(tasks), self.batch_size):
            part = list(enumerate(tasks))[start : start + self.batch_size]
            ok: list[tuple[int, np.ndarray]] = []
            for i, task in part:
                try:
                    ok.append((i, self.images.read(task.get("data") or {}, ui.value_key)))
                except TaskError as e:
                    out[i] = self._failed(task, str(e))
            if not ok:
                continue
            if ui.task == "detection":
                for (i, img), dets in zip(
                    ok, model.runner.detect([img for _, img in ok], BOX_SCORE_FLOOR), strict=True
                ):
                    out[i] = self._boxes(ui, model, img, dets)
                continue
            probs = model.runner.run([img for _, img in ok]).probabilities
            for (i, _), p in zip(ok, probs, strict=True):
                k = int(p.argmax())
                label = model.runner.card.labels[k]
                if label not in ui.choices:
                    out[i] = self._failed(tasks[i], f"the predicted class '{label}' is not a project choice")
                    continue
                out[i] = {
                    "result": [
                        {
                            "from_name": ui.from_name,
                            "to_name": ui.to_name,
                            "type": "choices",
                            "value": {"choices": [label]},
                        }
                    ],
                    "score": float(p[k]),
                    "model_version": model.version,
                }
                with self._lock:
                    self.counters.predicted += 1
        return out

    def _boxes(
        self, ui: Interface, model: LoadedModel, image: np.ndarray, dets: Sequence[Any]
    ) -> dict[str, Any]:
        """A detector's boxes as pre-annotated regions (each with its score), in the image's pixels."""
        from edgeloop.core import labelstudio as lsx

        h, w = image.shape[:2]
        result = lsx.rectangle_result([d.box for d in dets], w, h)
        for region, d in zip(result, dets, strict=True):
            region |= {"from_name": ui.from_name, "to_name": ui.to_name, "score": float(d.score)}
        with self._lock:
            self.counters.predicted += 1
        return {
            "result": result,
            "score": max((float(d.score) for d in dets), default=0.0),
            "model_version": model.version,
        }

    def _failed(self, task: dict[str, Any], why: str) -> dict[str, Any]:
        msg = f"task {task.get('id')}: {why}"
        log.warning("no prediction for %s", msg)
        with self._lock:
            self.counters.failure(msg)
        return {"task": task.get("id"), "error": why}


# --------------------------------------------------------------------------- the HTTP app
def create_app(
    predictor: Predictor, credentials: tuple[str, str], max_body_bytes: int = MAX_BODY_BYTES
) -> Starlette:
    """The ASGI app; every route requires ``credentials`` as HTTP Basic auth."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    user, password = credentials
    if not user or not password:
        raise ValueError("the ML backend needs a user and a password (it never runs open)")

    def check_auth(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        try:
            given_user, _, given_pass = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            given_user = given_pass = ""
        same_user = hmac.compare_digest(given_user.encode(), user.encode())
        same_pass = hmac.compare_digest(given_pass.encode(), password.encode())
        if scheme.lower() != "basic" or not (same_user and same_pass):
            raise Unauthorized(
                "Basic credentials required: connect the project with `edgeloop labeling backend connect`"
            )

    async def body(request: Request) -> dict[str, Any]:
        import json

        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            raise PayloadTooLarge(
                f"the body is {declared} bytes; this backend takes at most {max_body_bytes}"
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise PayloadTooLarge(f"the body is over {max_body_bytes} bytes")
            chunks.append(chunk)
        try:
            data = json.loads(b"".join(chunks) or b"{}")
        except ValueError as e:
            raise BackendError(f"the body is not JSON: {e}") from e
        if not isinstance(data, dict):
            raise BackendError("the body must be a JSON object")
        return data

    async def health(request: Request) -> JSONResponse:
        check_auth(request)
        c = predictor.counters
        return JSONResponse(
            {
                "status": "UP",
                "model_class": "edgeloop",
                "predicted": c.predicted,
                "failed": c.failed,
                "last_errors": c.last_errors,
            }
        )

    async def setup(request: Request) -> JSONResponse:
        check_auth(request)
        data = await body(request)
        return JSONResponse(await run_in_threadpool(predictor.setup, data.get("schema")))

    async def predict(request: Request) -> JSONResponse:
        check_auth(request)
        data = await body(request)
        tasks = data.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise BackendError("'tasks' must be a list of task objects")
        results = await run_in_threadpool(predictor.predict, tasks, data.get("label_config"))
        return JSONResponse({"results": results})

    async def webhook(request: Request) -> JSONResponse:
        check_auth(request)
        data = await body(request)
        action = data.get("action")
        detail = (
            "training runs in the edgeloop pipeline (`edgeloop pipeline run`), not in the ML backend"
            if action in TRAINING_EVENTS
            else "unknown event"
        )
        return JSONResponse({"status": "ignored", "action": action, "detail": detail})

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BackendError)
        headers = {"WWW-Authenticate": 'Basic realm="edgeloop ML backend"'} if exc.status == 401 else None
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)

    return Starlette(
        routes=[
            Route("/", health, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/setup", setup, methods=["POST"]),
            Route("/predict", predict, methods=["POST"]),
            Route("/webhook", webhook, methods=["POST"]),
        ],
        exception_handlers={BackendError: refused},
    )


def build_predictor(
    settings: Settings | None, model_uri: str | Path, refresh_s: float = 30.0, cache_dir: Path | None = None
) -> Predictor:
    if cache_dir is None and settings is not None:
        cache_dir = settings.state_dir / "labeling" / "models"
    return Predictor(ModelSource(model_uri, settings, cache_dir, refresh_s), ImageReader(settings))


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket (port 0: a free one, chosen atomically)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def serve_app(app: Starlette, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until interrupted."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


@dataclass
class RunningBackend:
    url: str
    predictor: Predictor


@contextlib.contextmanager
def running_backend(
    settings: Settings | None,
    model_uri: str | Path,
    credentials: tuple[str, str],
    host: str = "127.0.0.1",
    port: int = 0,
    refresh_s: float = 30.0,
) -> Iterator[RunningBackend]:
    """The backend in a thread of this process until the block ends (tests, the loop benchmark)."""
    import uvicorn

    predictor = build_predictor(settings, model_uri, refresh_s)
    predictor.source.current()  # loaded before Label Studio's first (3 s) /setup call
    sock = bind(host, port)
    server = uvicorn.Server(
        uvicorn.Config(create_app(predictor, credentials), log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise EdgeloopError("the ML backend did not start")
            time.sleep(0.05)
        yield RunningBackend(url_of(sock), predictor)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


# --------------------------------------------------------------------------- Label Studio side
@dataclass
class Connection:
    project_id: int
    backend_id: int
    url: str
    state: str  # Label Studio's view: Connected, Error, Disconnected
    model_version: str | None
    created: bool  # False: an existing connection to the same URL was updated


def connect(
    settings: Settings,
    url: str,
    project_title: str | None = None,
    title: str = "edgeloop champion",
    credentials: tuple[str, str] | None = None,
) -> Connection:
    """Connect the ML backend at ``url`` to the project (update it if connected already) with Basic auth,
    and have Label Studio fetch predictions when a task is opened or listed (``evaluate_predictions_automatically``).

    Label Studio checks ``/health`` and ``/setup`` before it saves the connection: a backend that is
    down, or refuses the credentials, is an :class:`EdgeloopError` naming the cause."""
    from label_studio_sdk.core.api_error import ApiError

    from edgeloop.core import labelstudio as lsx

    ls = lsx.client(settings)
    title_ = project_title or settings.labelstudio.project_title
    project = lsx.find_project(ls, title_)
    if project is None:
        raise EdgeloopError(f"Label Studio has no project {title_!r}: seed it first (`edgeloop data seed`)")
    user, password = credentials or settings.ml_backend_credentials()
    url = url.rstrip("/")
    existing = [b for b in ls.ml.list(project=project.id) if (b.url or "").rstrip("/") == url]
    fields: dict[str, Any] = {
        "url": url,
        "title": title,
        "auth_method": "BASIC_AUTH",
        "basic_auth_user": user,
        "basic_auth_pass": password,
        "is_interactive": False,
        "description": "edgeloop: the champion model's predictions as pre-annotations",
    }
    created = not existing
    try:
        if created:
            try:
                ls.ml.create(project=project.id, **fields)
            except ApiError as e:
                # Label Studio saves the backend, then adds a training webhook to URL/webhook, which its
                # SSRF protection refuses for a private address (403). The backend stands; training
                # events are not needed (the pipeline trains), so carry on with the saved backend.
                if e.status_code != 403 or "reserved network address" not in _api_detail(e):
                    raise
            existing = [b for b in ls.ml.list(project=project.id) if (b.url or "").rstrip("/") == url]
            if not existing:
                raise EdgeloopError(f"Label Studio did not keep the ML backend at {url}")
        # an update re-checks /health and /setup and refreshes the connection state
        backend = ls.ml.update(existing[0].id, project=project.id, **fields)
    except ApiError as e:
        raise EdgeloopError(
            f"Label Studio could not connect the ML backend at {url}: {_api_detail(e)} "
            "(is `edgeloop labeling backend serve` running, with the same credentials?)"
        ) from e
    ls.projects.update(
        project.id, show_collab_predictions=True, evaluate_predictions_automatically=True, model_version=title
    )
    backend = ls.ml.get(backend.id)
    return Connection(
        project.id,
        int(backend.id),
        url,
        str(backend.readable_state or backend.state),
        backend.model_version,
        created,
    )


def request_predictions(settings: Settings, project_title: str | None = None) -> int:
    """Ask Label Studio to fetch the connected backend's predictions for every task of the project that
    has none from the current model version (Label Studio's "Retrieve predictions" action). Returns the
    number of tasks Label Studio processed."""
    from edgeloop.core import labelstudio as lsx

    ls = lsx.client(settings)
    title_ = project_title or settings.labelstudio.project_title
    project = lsx.find_project(ls, title_)
    if project is None:
        raise EdgeloopError(f"Label Studio has no project {title_!r}")
    if not list(ls.ml.list(project=project.id)):
        raise EdgeloopError(
            f"project {title_!r} has no ML backend: connect one with `edgeloop labeling backend connect`"
        )
    ls.actions.create(
        id="retrieve_tasks_predictions", project=project.id, selected_items={"all": True, "excluded": []}
    )
    return int(ls.projects.get(project.id).task_number or 0)


def _api_detail(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        detail = body.get("validation_errors") or body.get("detail") or body
        return str(detail)[:500]
    return str(e)[:500]
