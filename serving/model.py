"""The KServe model: an image classifier over ONNX Runtime, with several versions and aliases.

``OnnxImageModel`` is a ``kserve.Model``. ``load()`` verifies, loads and warms up every
version and sets ``ready`` only at its end. ``preprocess`` turns any accepted request
(OIP v2 REST/gRPC ``InferRequest`` or a V1 dict) into a normalised batch for the
version it names; ``predict`` queues it on that version's dynamic batcher;
``postprocess`` builds the answer (label, probabilities, optional embedding; for a detection
model, its boxes, scores, labels and count per image: :mod:`edgeloop.serving.detection`).

A request resolves its version once, at the start, and keeps a reference to it, so
moving an alias (or loading a new version) never drops a request in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from kserve import Model
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from edgeloop.core.errors import IntegrityError, InvalidModelError
from edgeloop.core.model_card import DETECTION, DETECTION_OUTPUTS, EMBEDDING_OUTPUT, PROBS_OUTPUT, ModelCard
from edgeloop.core.model_loader import (
    OrtSettings,
    SessionInfo,
    ThreadSessions,
    available_cpus,
    open_session,
    read_card,
    session_layout,
    verify_model,
)
from edgeloop.core.payload_log import LOG_SCORE_FLOOR
from edgeloop.core.preprocessing import Preprocess
from edgeloop.serving import codec, detection, metrics
from edgeloop.serving.batching import DirectRunner, DynamicBatcher, per_core_cpus
from edgeloop.serving.errors import (
    ConflictError,
    IntegrityRefusedError,
    InvalidInputError,
    ModelLoadError,
    VersionNotFoundError,
)
from edgeloop.serving.options import DEFAULT_ALIAS, BatchingOptions, LimitOptions
from edgeloop.serving.routing import CLIENT_KEY_HEADER, Canary, TrafficPolicy
from edgeloop.serving.sources import ResolvedModel

log = logging.getLogger(__name__)

LABEL_OUTPUT = "label"
OUTPUT_NAMES = (LABEL_OUTPUT, PROBS_OUTPUT, EMBEDDING_OUTPUT)


# --------------------------------------------------------------------------- one version
@dataclass
class LoadedVersion:
    model: str
    version: str
    directory: Path
    card: ModelCard
    session: Any
    session_info: SessionInfo
    preprocess: Preprocess
    output_names: list[str]
    load_seconds: float
    runner: DynamicBatcher | DirectRunner | None = None
    labels: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))

    @property
    def size(self) -> int:
        return self.preprocess.size

    @property
    def digest(self) -> str:
        return self.card.digest()

    @property
    def has_embedding(self) -> bool:
        return EMBEDDING_OUTPUT in self.output_names

    @property
    def detects(self) -> bool:
        return self.card.task == DETECTION

    sessions: list[Any] = field(default_factory=list)  # one per runner thread (see load_version)
    session_threads: int = 0  # intra-op threads of each session (0: ONNX Runtime's choice)
    _by_thread: ThreadSessions = field(init=False)

    def __post_init__(self) -> None:
        self._by_thread = ThreadSessions(self.sessions)

    def run(self, x: np.ndarray, full: bool = True) -> list[np.ndarray]:
        """[N,3,S,S] float32 -> [probabilities, embedding (with ``full``, when the model has one)].

        Thread-safe, called off the event loop. With several sessions, each runner thread keeps
        one of its own (N single-threaded sessions side by side, instead of one N-threaded one)."""
        session = self._by_thread.get() if self.sessions else self.session
        if self.detects:
            return detection.run_padded(session, self.card.input_name, x)
        names = self.output_names if full else self.output_names[:1]
        return session.run(names, {self.card.input_name: x})

    def prepare(self, rows: np.ndarray) -> np.ndarray:
        """uint8 frames at model size -> normalised float32 NCHW; a tensor passes as it is."""
        return self.preprocess.normalize_batch(rows) if rows.dtype == np.uint8 else rows

    def start_runner(self, batching: BatchingOptions) -> None:
        labels = {"model": self.model, "version": self.version}
        batch_hist = metrics.BATCH_SIZE.labels(**labels)
        infer_hist = metrics.INFERENCE_SECONDS.labels(**labels)
        queue_gauge = metrics.QUEUE_DEPTH.labels(**labels)

        def on_batch(n: int, seconds: float) -> None:
            batch_hist.observe(n)
            infer_hist.observe(seconds)

        concurrency = max(batching.concurrent_batches, len(self.sessions))
        if batching.enabled and batching.max_batch_size > 1:
            self.runner = DynamicBatcher(
                self.run,
                batching.max_batch_size,
                batching.max_wait_ms / 1000.0,
                batching.max_queue_rows,
                on_batch=on_batch,
                on_queue=queue_gauge.set,
                name=f"{self.model}-{self.version}",
                concurrency=concurrency,
                prepare=self.prepare,
                cpus=per_core_cpus(concurrency) if self._pinnable(batching, concurrency) else (),
            )
        else:
            self.runner = DirectRunner(
                self.run,
                max(batching.direct_concurrency, len(self.sessions)),
                on_batch=on_batch,
                name=f"{self.model}-{self.version}",
                prepare=self.prepare,
            )

    def _pinnable(self, batching: BatchingOptions, concurrency: int) -> bool:
        """One single-threaded session per runner thread: each thread can keep a core of its own."""
        return batching.pin_threads and len(self.sessions) == concurrency and self.session_threads == 1

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "execution_provider": self.session_info.provider,
            "providers": self.session_info.providers,
            "digest": self.digest,
            "input_size": self.size,
            "labels": self.card.labels,
            "precision": self.card.precision.value,
            "load_seconds": round(self.load_seconds, 3),
            "outputs": self.output_names,
            "task": self.card.task,
            "sessions": max(1, len(self.sessions)),
        }


def load_version(
    directory: Path,
    ort_settings: OrtSettings,
    model_name: str | None = None,
    version: str | None = None,
    expected_digest: tuple[str, ...] = (),
    sessions: int = 1,
) -> LoadedVersion:
    """Verify every file against the card (and the card against every pinned ``expected_digest``),
    open its ONNX Runtime sessions (:func:`_open_sessions`), check the I/O, warm it up.

    Verification and the session are :mod:`edgeloop.core.model_loader`'s (the rule every consumer
    applies). Raises :class:`IntegrityRefusedError` (and counts it) when the files fail it,
    :class:`ModelLoadError` for anything else that makes the directory unservable.
    """
    t0 = time.perf_counter()
    directory = Path(directory)
    try:
        card = read_card(directory)
    except InvalidModelError as e:
        raise ModelLoadError(str(e)) from e
    name = model_name or card.name
    try:
        verified = verify_model(directory, card, expected_digest)
    except IntegrityError as e:
        metrics.INTEGRITY_FAILURES.labels(name).inc()
        metrics.LOAD_FAILURES.labels(name, "integrity").inc()
        log.error("refusing to load %s version %s: %s", name, version or card.version, e)
        raise IntegrityRefusedError(
            f"model {name} version {version or card.version or '?'} refused: {e.reason}"
        ) from e
    try:
        pool, info, threads = _open_sessions(verified.session_source(), ort_settings, sessions)
        session = pool[0]
    except Exception as e:
        metrics.LOAD_FAILURES.labels(name, "onnx").inc()
        raise ModelLoadError(
            f"ONNX Runtime cannot load {name} from {directory.name}: {type(e).__name__}"
        ) from e
    pre = Preprocess(card.preprocessing)
    output_names = _check_io(session, card, name)
    lv = LoadedVersion(
        model=name,
        version=str(version or card.version or "1"),
        directory=directory,
        card=card,
        session=session,
        session_info=info,
        preprocess=pre,
        output_names=output_names,
        load_seconds=0.0,
        labels=np.array([lbl.encode() for lbl in card.labels], dtype=object),
        sessions=pool if len(pool) > 1 else [],
        session_threads=threads,
    )
    for sess in pool:  # warm-up: the first run allocates
        sess.run(output_names, {card.input_name: np.zeros((1, 3, pre.size, pre.size), dtype=np.float32)})
    lv.load_seconds = time.perf_counter() - t0
    log.info(
        "loaded %s version %s on %s in %.2fs (digest %s)",
        name,
        lv.version,
        info.provider,
        lv.load_seconds,
        lv.digest[:12],
    )
    return lv


def _open_sessions(
    source: Any, ort_settings: OrtSettings, sessions: int
) -> tuple[list[Any], SessionInfo, int]:
    """``sessions`` sessions on the CPU (0 = one per usable core, or cores/threads of them when
    threads are set), each with cores/N threads unless threads are set; a GPU provider gets one
    session (it schedules its own work)."""
    n, split = session_layout(ort_settings, sessions)
    first, info = open_session(source, split)
    if info.provider != "CPUExecutionProvider":
        if split is not ort_settings:  # its CPU fallback nodes keep every core
            first, info = open_session(source, ort_settings)
        return [first], info, ort_settings.intra_op_threads
    pool = [first] + [open_session(source, split)[0] for _ in range(n - 1)]
    return pool, info, split.intra_op_threads or available_cpus()


def _check_io(session: Any, card: ModelCard, name: str) -> list[str]:
    inputs = {i.name: i for i in session.get_inputs()}
    if card.input_name not in inputs:
        raise ModelLoadError(
            f"{name}: the ONNX model has no input {card.input_name!r} (has {sorted(inputs)})"
        )
    outs = {o.name: o for o in session.get_outputs()}
    if card.task == DETECTION:
        missing = [n for n in DETECTION_OUTPUTS if n not in outs]
        if missing:
            raise ModelLoadError(f"{name}: the detection model has no {missing} output (has {sorted(outs)})")
        return list(DETECTION_OUTPUTS)
    if PROBS_OUTPUT not in outs:
        raise ModelLoadError(f"{name}: the ONNX model has no {PROBS_OUTPUT!r} output (has {sorted(outs)})")
    n_classes = outs[PROBS_OUTPUT].shape[-1]
    if isinstance(n_classes, int) and n_classes != len(card.labels):
        raise ModelLoadError(
            f"{name}: the model outputs {n_classes} probabilities but the card has "
            f"{len(card.labels)} labels"
        )
    names = [PROBS_OUTPUT]
    if EMBEDDING_OUTPUT in outs and EMBEDDING_OUTPUT in card.outputs:
        names.append(EMBEDDING_OUTPUT)
    return names


# --------------------------------------------------------------------------- versions + aliases
class ModelVersions:
    """Versions of one model and the aliases pointing at them. Mutated only on the event loop."""

    def __init__(self, name: str):
        self.name = name
        self.versions: dict[str, LoadedVersion] = {}
        self.aliases: dict[str, str] = {}

    def resolve(self, ref: str | None) -> LoadedVersion:
        """A version id or alias -> the loaded version; none given = the champion."""
        ref = (ref or "").strip() or DEFAULT_ALIAS
        if ref in self.versions:
            return self.versions[ref]
        if ref in self.aliases and self.aliases[ref] in self.versions:
            return self.versions[self.aliases[ref]]
        raise VersionNotFoundError(
            f"model {self.name} has no version or alias {ref!r}; versions: {sorted(self.versions)}, "
            f"aliases: {dict(sorted(self.aliases.items()))}"
        )

    def add(self, lv: LoadedVersion, aliases: Iterable[str] = ()) -> None:
        if lv.version in self.versions:
            raise ConflictError(
                f"model {self.name} already serves version {lv.version}; unload it first "
                "or load the new files under another version id"
            )
        self.versions[lv.version] = lv
        metrics.MODEL_INFO.labels(self.name, lv.version, lv.session_info.provider, lv.digest[:16]).set(1)
        for alias in aliases:
            self.set_alias(alias, lv.version)
        if DEFAULT_ALIAS not in self.aliases:
            self.set_alias(DEFAULT_ALIAS, lv.version)

    def set_alias(self, alias: str, version: str) -> None:
        if not alias or alias in self.versions:
            raise InvalidInputError(f"alias {alias!r} is empty or equal to a version id; pick another name")
        if version not in self.versions:
            raise VersionNotFoundError(
                f"model {self.name} has no version {version!r} to point {alias!r} at; "
                f"versions: {sorted(self.versions)}"
            )
        old = self.aliases.get(alias)
        if old is not None:
            metrics.ALIAS_INFO.labels(self.name, alias, old).set(0)
        self.aliases[alias] = version  # one dict store: the switch is atomic for new requests
        metrics.ALIAS_INFO.labels(self.name, alias, version).set(1)
        if old != version:
            log.info("model %s: alias %s -> version %s (was %s)", self.name, alias, version, old)

    def remove(self, version: str) -> LoadedVersion:
        if version not in self.versions:
            raise VersionNotFoundError(f"model {self.name} has no version {version!r}")
        pointing = sorted(a for a, v in self.aliases.items() if v == version)
        if DEFAULT_ALIAS in pointing:
            raise ConflictError(
                f"version {version} is the {DEFAULT_ALIAS}; move the {DEFAULT_ALIAS} alias "
                "to another version before unloading it"
            )
        for alias in pointing:
            del self.aliases[alias]
            metrics.ALIAS_INFO.labels(self.name, alias, version).set(0)
        lv = self.versions.pop(version)
        metrics.MODEL_INFO.labels(self.name, version, lv.session_info.provider, lv.digest[:16]).set(0)
        return lv


# --------------------------------------------------------------------------- the kserve model
@dataclass
class Prepared:
    """One request between preprocess, predict and postprocess."""

    version: LoadedVersion
    inputs: codec.ModelInput
    protocol: str
    request_id: str | None
    outputs: list[str]
    t0: float
    v1: bool = False
    results: list[np.ndarray] | None = None
    route: str = "pinned"  # pinned (the request named it), champion or canary
    score_threshold: float = detection.SCORE_THRESHOLD  # detection models only


class OnnxImageModel(Model):
    """An image classifier or defect detector served from ONNX Runtime; one instance per served model name."""

    def __init__(
        self,
        name: str,
        sources: list[ResolvedModel],
        ort_settings: OrtSettings | None = None,
        batching: BatchingOptions | None = None,
        limits: LimitOptions | None = None,
        aliases: dict[str, str] | None = None,
        payload_logger: Any = None,
        canary: Canary | None = None,
        shadow: str | None = None,
    ):
        super().__init__(name)
        self.sources = sources
        self.ort_settings = ort_settings or OrtSettings()
        self.batching = batching or BatchingOptions()
        self.limits = limits or LimitOptions()
        self.initial_aliases = dict(aliases or {})
        self.payload_logger = payload_logger
        self.versions = ModelVersions(name)
        self.traffic = TrafficPolicy()
        self.initial_traffic = (canary, shadow)
        self._background: set[asyncio.Task] = set()  # shadow runs in flight
        # Decoding and resizing run in worker threads; at most this many at once (all requests of
        # this model together), so a burst of large images queues instead of taking every core.
        self.decode_slots = asyncio.Semaphore(self.limits.max_concurrent_decodes or available_cpus())

    # -- loading ----------------------------------------------------------------------------
    def load(self) -> bool:
        """Load every configured version (all must pass), apply aliases, then become ready."""
        for src in self.sources:
            self.add_version(self.load_source(src), src.aliases)
        for alias, version in self.initial_aliases.items():
            self.versions.set_alias(alias, version)
        self.set_traffic(*self.initial_traffic)
        self.ready = bool(self.versions.versions)
        return self.ready

    def load_source(self, src: ResolvedModel) -> LoadedVersion:
        """Blocking: verify + load + warm up. Safe to run in a worker thread while serving."""
        version = src.spec.version or src.version_hint or self._next_version(src.directory)
        lv = load_version(
            src.directory,
            self.ort_settings,
            model_name=self.name,
            version=version,
            expected_digest=src.pinned,
            sessions=self.batching.sessions,
        )
        lv.start_runner(self.batching)
        return lv

    def _next_version(self, directory: Path) -> str:
        try:
            v = ModelCard.load(directory).version
        except Exception:
            v = None
        if v and v not in self.versions.versions:
            return str(v)
        n = 1
        while str(n) in self.versions.versions:
            n += 1
        return str(n)

    def add_version(self, lv: LoadedVersion, aliases: Iterable[str] = ()) -> None:
        self.versions.add(lv, aliases)

    async def unload_version(self, version: str) -> None:
        lv = self.versions.remove(version)  # new requests can no longer reach it
        if lv.runner is not None:
            await lv.runner.close()  # in-flight ones finish first
        log.info("model %s: unloaded version %s", self.name, version)

    # -- canary and shadow ----------------------------------------------------------------------
    MAX_SHADOW_RUNS = 64  # shadow runs in flight; past it they are dropped (and counted)

    def set_traffic(self, canary: Canary | None, shadow: str | None) -> None:
        """Point the canary and the shadow at aliases this model has (``None`` turns one off)."""
        for alias in (canary.alias if canary else None, shadow):
            if alias is not None:
                self.versions.resolve(alias)  # unknown -> VersionNotFoundError, nothing changes
        if shadow and self.payload_logger is None:
            raise InvalidInputError(
                "a shadow's outputs go to the payload log, which is off; start the server with "
                "--payload-log-rate above 0"
            )
        self.traffic.set(canary, shadow)
        log.info("model %s: traffic %s", self.name, self.traffic.describe())

    def route(self, ref: str | None, headers: dict[str, str] | None) -> tuple[LoadedVersion, str]:
        """The version that answers a request, and why: pinned (named), canary or champion."""
        if ref and ref.strip():
            return self.versions.resolve(ref), "pinned"
        canary = self.traffic.canary
        if canary is not None and self.traffic.to_canary((headers or {}).get(CLIENT_KEY_HEADER)):
            lv = self.versions.versions.get(self.versions.aliases.get(canary.alias, ""))
            if lv is not None:  # an alias unloaded since: the champion answers
                return lv, "canary"
        return self.versions.resolve(None), "champion"

    def _comparison(self, result: Prepared) -> LoadedVersion | None:
        """Who else sees this request: the shadow (champion traffic) or the champion (canary traffic)."""
        if result.route == "champion" and self.traffic.shadow:
            ref = self.versions.aliases.get(self.traffic.shadow, "")
        elif result.route == "canary":
            ref = self.versions.aliases.get(DEFAULT_ALIAS, "")
        else:
            return None
        other = self.versions.versions.get(ref)
        return None if other is None or other is result.version else other

    def _log(self, lv: LoadedVersion, res: list[np.ndarray], inputs: codec.ModelInput, rows, rid) -> None:
        probs = res[0]
        emb = res[1] if len(res) > 1 else None
        labels = [lv.card.labels[int(i)] for i in np.argmax(probs, axis=1)]
        pre = lv.card.preprocessing
        self.payload_logger.offer(
            self.name,
            lv.version,
            labels,
            probs,
            emb,
            inputs.frames,
            inputs.x if inputs.frames is None else None,
            pre.mean,
            pre.std,
            rid,
            rows=rows,
        )

    def _log_detections(
        self, lv: LoadedVersion, res: list[np.ndarray], inputs: codec.ModelInput, rows, rid
    ) -> None:
        """The payload log keeps the model-size image, so its detections are logged in those pixels,
        from :data:`~edgeloop.core.payload_log.LOG_SCORE_FLOOR` up (the monitor sees the uncertain ones)."""
        n = len(res[0])
        logged = detection.outputs(res, [(lv.size, lv.size)] * n, lv.size, lv.labels, LOG_SCORE_FLOOR)
        per_image = logged.per_image()
        labels = [max(d, key=lambda x: x["score"])["label"] if d else "" for d in per_image]
        pre = lv.card.preprocessing
        self.payload_logger.offer(
            self.name,
            lv.version,
            labels,
            np.zeros((n, 0), dtype=np.float32),
            None,
            inputs.frames,
            inputs.x if inputs.frames is None else None,
            pre.mean,
            pre.std,
            rid,
            rows=rows,
            detections=per_image,
        )

    def _start_comparison(
        self, result: Prepared, other: LoadedVersion, rows: list[int], rid: str | None
    ) -> None:
        """Run ``result``'s images on ``other`` in the background; log its rows ``rows``.

        A shadow runs every image (it sees the load the champion sees); the champion, compared
        with canary traffic, runs only the rows the payload log keeps."""
        shadow = result.route == "champion"
        outcome = metrics.SHADOW_IMAGES.labels
        n = len(result.inputs) if shadow else len(rows)
        if n == 0:
            return
        if not _same_input(result.inputs, result.version, other):
            outcome(self.name, other.version, "incompatible").inc(n)
            return
        if len(self._background) >= self.MAX_SHADOW_RUNS:
            outcome(self.name, other.version, "dropped").inc(n)
            return
        inputs = result.inputs
        if not shadow:
            inputs = inputs.subset(rows)
            rows = list(range(len(rows)))

        async def run() -> None:
            assert other.runner is not None
            try:
                res = await other.runner.submit(inputs.rows)
            except Exception as e:  # the response is gone already; count it, never raise
                outcome(self.name, other.version, "failed").inc(n)
                log.debug("comparison run on %s version %s failed: %s", self.name, other.version, e)
                return
            outcome(self.name, other.version, "ok").inc(n)
            if rows:
                self._log(other, res, inputs, rows, rid)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain_background(self, timeout_s: float = 10.0) -> None:
        """Let shadow runs in flight finish (and reach the payload log) before it is closed."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout_s)

    def stop(self) -> None:
        self.ready = False
        if self.payload_logger is not None:
            self.payload_logger.close()

    # -- metadata -----------------------------------------------------------------------------
    def get_input_types(self) -> list[dict]:
        s = self.versions.resolve(None).size
        return [
            {"name": "images", "datatype": "BYTES", "shape": [-1]},
            {"name": "images", "datatype": "UINT8", "shape": [-1, -1, -1, 3]},
            {"name": "images", "datatype": "FP32", "shape": [-1, 3, s, s]},
        ]

    def get_output_types(self) -> list[dict]:
        lv = self.versions.resolve(None)
        if lv.detects:
            return detection.output_types()
        out = [
            {"name": LABEL_OUTPUT, "datatype": "BYTES", "shape": [-1]},
            {"name": PROBS_OUTPUT, "datatype": "FP32", "shape": [-1, len(lv.card.labels)]},
        ]
        if lv.has_embedding:
            out.append({"name": EMBEDDING_OUTPUT, "datatype": "FP32", "shape": [-1, -1]})
        return out

    def metadata(self, version_ref: str | None = None) -> dict[str, Any]:
        lv = self.versions.resolve(version_ref)
        inputs = [t for t in self.get_input_types()]
        for t in inputs:
            if t["datatype"] == "FP32":
                t["shape"] = [-1, 3, lv.size, lv.size]
        return {
            "name": self.name,
            "versions": sorted(self.versions.versions),
            "platform": "onnxruntime_onnx",
            "inputs": inputs,
            "outputs": self.get_output_types(),
            "parameters": {
                **lv.describe(),
                "aliases": dict(self.versions.aliases),
                "preprocessing": lv.card.preprocessing.model_dump(),
                "batching": {
                    "enabled": self.batching.enabled,
                    "max_batch_size": self.batching.max_batch_size,
                    "max_wait_ms": self.batching.max_wait_ms,
                },
            },
        }

    # -- inference ----------------------------------------------------------------------------
    def validate(self, payload: Any) -> Any:
        return payload  # preprocess has validated everything

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Prepared:
        t0 = time.perf_counter()
        if isinstance(payload, dict):
            return await self._prepare_v1(payload, t0, headers)
        if not isinstance(payload, InferRequest):
            raise InvalidInputError("unrecognised request body; send an OIP v2 inference request")
        protocol = "grpc" if payload.from_grpc else getattr(payload, codec.PROTOCOL_ATTR, "rest_v2_json")
        lv, route = self.route(payload.model_version, headers)
        if len(payload.inputs) != 1:
            raise InvalidInputError(
                f"model {self.name} takes exactly one input tensor named "
                f"{lv.card.input_name!r}; {len(payload.inputs)} were sent"
            )
        inp = payload.inputs[0]
        if inp.name != lv.card.input_name:
            raise InvalidInputError(
                f"input is named {inp.name!r}; model {self.name} takes {lv.card.input_name!r}"
            )
        values = codec.tensor_values(inp)
        model_input = await self._to_model_input(values, inp.name, lv)
        params = _params(payload.parameters)
        wanted = self._outputs(payload.request_outputs, bool(params.get("embedding", False)), lv)
        threshold = _score_threshold(params, lv)
        return Prepared(
            lv, model_input, protocol, payload.id, wanted, t0, route=route, score_threshold=threshold
        )

    async def _prepare_v1(self, body: dict[str, Any], t0: float, headers: dict[str, str] | None) -> Prepared:
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInputError('"parameters" must be an object')
        lv, route = self.route(params.get("model_version"), headers)
        values = codec.v1_instances(body)
        model_input = await self._to_model_input(values, "instances", lv)
        if lv.detects:
            wanted = list(detection.OUTPUT_NAMES)
            threshold = _score_threshold(params, lv)
            return Prepared(
                lv, model_input, "rest_v1", None, wanted, t0, v1=True, route=route, score_threshold=threshold
            )
        wanted = [LABEL_OUTPUT, PROBS_OUTPUT] + ([EMBEDDING_OUTPUT] if params.get("embedding") else [])
        if EMBEDDING_OUTPUT in wanted and not lv.has_embedding:
            raise InvalidInputError(f"model {self.name} version {lv.version} has no embedding output")
        return Prepared(lv, model_input, "rest_v1", None, wanted, t0, v1=True, route=route)

    async def _to_model_input(self, values: Any, name: str, lv: LoadedVersion) -> codec.ModelInput:
        lim = self.limits
        args = (values, name, lv.preprocess, lim.max_images, lim.max_image_pixels, lim.max_request_pixels)
        if isinstance(values, list) or (
            values.dtype == np.uint8 and values.shape[-3:-1] != (lv.size, lv.size)
        ):
            # JPEG decoding / resizing: off the event loop, a bounded number at once
            async with self.decode_slots:
                return await asyncio.get_running_loop().run_in_executor(None, codec.to_model_input, *args)
        return codec.to_model_input(*args)

    def _outputs(self, requested: Any, embedding: bool, lv: LoadedVersion) -> list[str]:
        known = detection.OUTPUT_NAMES if lv.detects else OUTPUT_NAMES
        if requested:
            names = [r.name for r in requested]
            unknown = [n for n in names if n not in known]
            if unknown:
                raise InvalidInputError(f"unknown outputs {unknown}; this model has {list(known)}")
        elif lv.detects:
            names = list(detection.OUTPUT_NAMES)
        else:
            names = [LABEL_OUTPUT, PROBS_OUTPUT] + ([EMBEDDING_OUTPUT] if embedding else [])
        if EMBEDDING_OUTPUT in names and not lv.has_embedding:
            raise InvalidInputError(f"model {self.name} version {lv.version} has no embedding output")
        return names

    async def handle(
        self, request: InferRequest | dict, headers: dict[str, str] | None = None
    ) -> InferResponse | dict:
        """preprocess -> predict -> postprocess, without kserve's ``Model.__call__`` per-stage
        timers and histograms: the server's own metrics time the whole request."""
        prepared = await self.preprocess(request, headers)
        return await self.postprocess(await self.predict(prepared, headers), headers)

    async def predict(self, payload: Prepared, headers: dict[str, str] | None = None) -> Prepared:
        assert payload.version.runner is not None
        payload.results = await payload.version.runner.submit(
            payload.inputs.rows, EMBEDDING_OUTPUT in payload.outputs
        )
        return payload

    async def postprocess(
        self,
        result: Prepared,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse | dict:
        lv, res = result.version, result.results
        assert res is not None
        if lv.detects:
            return self._postprocess_detections(result, lv, res)
        probs = res[0]
        emb = res[1] if len(res) > 1 else None
        labels = lv.labels[np.argmax(probs, axis=1)]
        n = len(probs)
        self._count_request(result, n)
        other = self._comparison(result)
        if self.payload_logger is not None:
            rows = self.payload_logger.sample(n)
            rid = result.request_id
            if other is not None and rows and not rid:
                rid = uuid.uuid4().hex  # pairs this request's records across versions
            if rows:
                self._log(lv, res, result.inputs, rows, rid)
            if other is not None:
                self._start_comparison(result, other, rows, rid)
        if result.v1:
            preds = []
            for i in range(n):
                p: dict[str, Any] = {"label": labels[i].decode(), "probabilities": probs[i].tolist()}
                if EMBEDDING_OUTPUT in result.outputs and emb is not None:
                    p["embedding"] = emb[i].tolist()
                preds.append(p)
            return {"predictions": preds, "model_name": self.name, "model_version": lv.version}
        tensors = {
            LABEL_OUTPUT: (labels, "BYTES"),
            PROBS_OUTPUT: (probs, "FP32"),
            EMBEDDING_OUTPUT: (emb, "FP32"),
        }
        return self._response(result, tensors)

    def _response(self, result: Prepared, tensors: dict[str, tuple[Any, str]]) -> InferResponse:
        """The OIP response with the outputs the request asked for, from ``tensors`` (array, datatype)."""
        outs = []
        for name in result.outputs:
            arr, dtype = tensors[name]
            outs.append(InferOutput(name=name, shape=list(arr.shape), datatype=dtype, data=arr))
        return InferResponse(
            response_id=result.request_id or "",
            model_name=self.name,
            model_version=result.version.version,
            infer_outputs=outs,
        )

    def _count_request(self, result: Prepared, n: int) -> None:
        lv = result.version
        m = {"model": self.name, "version": lv.version, "protocol": result.protocol}
        metrics.REQUEST_SECONDS.labels(**m).observe(time.perf_counter() - result.t0)
        metrics.REQUEST_IMAGES.labels(**m).inc(n)
        metrics.ROUTED.labels(self.name, lv.version, result.route).inc()

    def _postprocess_detections(
        self, result: Prepared, lv: LoadedVersion, res: list[np.ndarray]
    ) -> InferResponse | dict:
        found = detection.outputs(
            res, result.inputs.source_sizes(lv.size), lv.size, lv.labels, result.score_threshold
        )
        n = len(found.count)
        self._count_request(result, n)
        if self.payload_logger is not None:
            rows = self.payload_logger.sample(n)
            if rows:
                self._log_detections(lv, res, result.inputs, rows, result.request_id)
        # shadow / canary comparisons compare classifications only so far: counted
        other = self._comparison(result)
        if other is not None:
            metrics.SHADOW_IMAGES.labels(self.name, other.version, "incompatible").inc(n)
        if result.v1:
            preds = [{"count": len(d), "detections": d} for d in found.per_image()]
            return {"predictions": preds, "model_name": self.name, "model_version": lv.version}
        return self._response(result, found.tensors())


def _score_threshold(params: dict[str, Any], lv: LoadedVersion) -> float:
    """A detection request's ``score_threshold`` parameter (0-1), or the default."""
    value = params.get("score_threshold")
    if value is None:
        return detection.SCORE_THRESHOLD
    if not lv.detects:
        raise InvalidInputError(
            f"score_threshold is a detection parameter; model version {lv.version} classifies"
        )
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        threshold = float("nan")
    if not 0.0 <= threshold <= 1.0:
        raise InvalidInputError(f"score_threshold must be a number from 0 to 1, got {value!r}")
    return threshold


def _same_input(inputs: codec.ModelInput, lv: LoadedVersion, other: LoadedVersion) -> bool:
    """Whether ``other`` can take ``inputs`` as they are: frames of its size (it normalises them
    itself), or a tensor normalised exactly as it expects."""
    if inputs.frames is not None:
        return other.size == lv.size
    return other.card.preprocessing == lv.card.preprocessing


def _params(params: Any) -> dict[str, Any]:
    """Request parameters from REST (dict) or gRPC (map of InferParameter) as plain values."""
    if not params:
        return {}
    if isinstance(params, dict):
        return params
    out = {}
    for k, v in params.items():
        kind = v.WhichOneof("parameter_choice")
        out[k] = getattr(v, kind) if kind else None
    return out
