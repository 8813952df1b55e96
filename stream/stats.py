"""Per-source accounting: counters, latency histograms and the Prometheus metrics behind them.

Every frame that enters the pipeline ends in exactly one of: processed, dropped
(with a reason), or still queued. :class:`SourceStats` keeps that ledger per
source; the same numbers go to Prometheus (one registry per processor, so
several processors can live in one process, e.g. in tests) and to the summary
printed at exit.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter


class DropReason(str, Enum):
    """Why a frame that entered the pipeline never produced a result."""

    QUEUE_FULL = "queue_full"  # evicted (drop-oldest) or refused (drop-newest) by a full queue
    STALE = "stale"  # waited longer than --max-age before inference
    DECODE_ERROR = "decode_error"  # a corrupt packet or unreadable image
    INFERENCE_ERROR = "inference_error"  # the model (server) failed for its batch
    SHUTDOWN = "shutdown"  # still queued when the processor had to stop


class SkipReason(str, Enum):
    """Why a frame the source delivered was left out by policy (never a sign of overload)."""

    FPS = "fps"  # decoded, then left out by --fps sampling before any pixel conversion
    NOT_KEYFRAME = "not_keyframe"  # --keyframes-only: not even decoded


class ResultDropReason(str, Enum):
    """Why a result that was computed never reached the outbox (so it is never published)."""

    OUTBOX_FULL = "outbox_full"  # the on-disk outbox held --outbox-max results (broker away too long)
    OUTBOX_ERROR = "outbox_error"  # the outbox could not be written (disk full, read-only, ...)


class SourceState(str, Enum):
    STARTING = "starting"
    UP = "up"
    RECONNECTING = "reconnecting"
    FINISHED = "finished"  # a file or directory read to its end
    FAILED = (
        "failed"  # a permanent error (missing file, corrupt file, unsupported codec) or retries exhausted
    )
    STOPPED = "stopped"


class LatencyHistogram:
    """Log-spaced buckets 1% wide from 1 us to ~1000 s: bounded memory, quantiles within ~1%."""

    def __init__(self, lo: float = 1e-6, hi: float = 1e3, growth: float = 1.01):
        self._lo = lo
        self._log_g = math.log(growth)
        self._growth = growth
        n = int(math.ceil(math.log(hi / lo) / self._log_g)) + 1
        self._counts: np.ndarray = np.zeros(n + 1, dtype=np.int64)
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def record(self, seconds: float) -> None:
        x = max(seconds, self._lo)
        idx = min(int(math.log(x / self._lo) / self._log_g), len(self._counts) - 1)
        self._counts[idx] += 1
        self.count += 1
        self.total += seconds
        self.max = max(self.max, seconds)

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0..1) in seconds, or None before the first sample."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q * self.count))
        idx = int(np.searchsorted(np.cumsum(self._counts), rank))
        upper = self._lo * self._growth ** (idx + 1)  # upper edge of the bucket
        return min(upper, self.max)

    def copy(self) -> LatencyHistogram:
        other = LatencyHistogram.__new__(LatencyHistogram)
        other.__dict__.update(self.__dict__)
        other._counts = self._counts.copy()
        return other

    def since(self, earlier: LatencyHistogram) -> LatencyHistogram:
        """The samples recorded after ``earlier`` (a :meth:`copy` of this histogram) was taken."""
        out = self.copy()
        out._counts = self._counts - earlier._counts
        out.count = self.count - earlier.count
        out.total = self.total - earlier.total
        return out

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


class StreamMetrics:
    """The Prometheus metrics of one processor, labelled by source (camera)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        latency_buckets = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
        stage_buckets = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
        self.decoded = PromCounter(
            "edgeloop_stream_frames_decoded",
            "Frames decoded from the source, before fps sampling",
            ["source"],
            registry=r,
        )
        self.skipped = PromCounter(
            "edgeloop_stream_frames_skipped",
            "Frames the source delivered that policy left out (fps sampling, key frames only); "
            "never counted as dropped",
            ["source", "reason"],
            registry=r,
        )
        self.frames_in = PromCounter(
            "edgeloop_stream_frames_in",
            "Frames that entered the pipeline (after fps sampling)",
            ["source"],
            registry=r,
        )
        self.processed = PromCounter(
            "edgeloop_stream_frames_processed", "Frames with a result", ["source"], registry=r
        )
        self.dropped = PromCounter(
            "edgeloop_stream_frames_dropped",
            "Frames that entered the pipeline but got no result",
            ["source", "reason"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "edgeloop_stream_queue_depth", "Frames waiting in the source's queue", ["source"], registry=r
        )
        self.queue_capacity = Gauge(
            "edgeloop_stream_queue_capacity", "Bound of the source's queue", ["source"], registry=r
        )
        self.latency = Histogram(
            "edgeloop_stream_latency_seconds",
            "End-to-end latency, frame capture to result",
            ["source"],
            buckets=latency_buckets,
            registry=r,
        )
        self.decode = Histogram(
            "edgeloop_stream_decode_seconds",
            "Decode + resize time per frame",
            ["source"],
            buckets=stage_buckets,
            registry=r,
        )
        self.inference = Histogram(
            "edgeloop_stream_inference_seconds", "Model time per batch", buckets=stage_buckets, registry=r
        )
        self.batch_size = Histogram(
            "edgeloop_stream_batch_size",
            "Frames per inference batch",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.published = PromCounter(
            "edgeloop_stream_results_published",
            "Results acknowledged by the MQTT broker",
            ["source"],
            registry=r,
        )
        self.outboxed = PromCounter(
            "edgeloop_stream_results_outboxed",
            "Results written to the on-disk outbox",
            ["source"],
            registry=r,
        )
        self.outbox_depth = Gauge(
            "edgeloop_stream_outbox_depth",
            "Results in the on-disk outbox (waiting, or sent and not yet acknowledged)",
            registry=r,
        )
        self.outbox_capacity = Gauge(
            "edgeloop_stream_outbox_capacity", "Most results the on-disk outbox holds", registry=r
        )
        self.results_dropped = PromCounter(
            "edgeloop_stream_results_dropped",
            "Results computed but never published: the outbox was full or could not be written",
            ["source", "reason"],
            registry=r,
        )
        self.publisher_restarts = PromCounter(
            "edgeloop_stream_publisher_restarts",
            "Times the MQTT publisher thread failed and was restarted",
            registry=r,
        )
        self.frames_lost = PromCounter(
            "edgeloop_stream_frames_lost",
            "Frames of an earlier run that was killed (SIGKILL, OOM, power) while they were in memory; "
            "counted when the next run opens the same outbox",
            ["source"],
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "edgeloop_stream_mqtt_connected", "1 while connected to the MQTT broker", registry=r
        )
        self.source_up = Gauge(
            "edgeloop_stream_source_up", "1 while the source is connected and read", ["source"], registry=r
        )
        self.reconnects = PromCounter(
            "edgeloop_stream_source_reconnects", "Reconnect attempts", ["source"], registry=r
        )
        self.source_errors = PromCounter(
            "edgeloop_stream_source_errors", "Source errors by kind", ["source", "kind"], registry=r
        )


@dataclass
class SourceStats:
    """The ledger of one source. Thread-safe; every update also moves the Prometheus metric."""

    name: str
    metrics: StreamMetrics
    queue_capacity: int = 0
    state: SourceState = SourceState.STARTING
    decoded: int = 0
    skipped: int = 0  # left out by policy before entering the pipeline (all reasons)
    skipped_by: Counter[str] = field(default_factory=Counter)  # SkipReason -> frames
    frames_in: int = 0
    processed: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    published: int = 0
    outboxed: int = 0
    results_dropped: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0
    queue_high_water: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    last_error: str | None = None
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    decode_time: LatencyHistogram = field(default_factory=LatencyHistogram)  # decode + resize per frame in
    resize_time: LatencyHistogram = field(default_factory=LatencyHistogram)  # the resize alone
    decode_s_total: float = 0.0  # decoding every frame, skipped ones included
    resize_s_total: float = 0.0
    decoder: dict[str, Any] = field(default_factory=dict)  # codec, hwaccel, threads, resize path

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ledger: Any = (
            None  # a RunLedger slot: frames in and dropped, kept where a SIGKILL cannot erase them
        )
        self._dropped_total = 0
        m = self.metrics
        self._m_decoded = m.decoded.labels(self.name)
        self._m_in = m.frames_in.labels(self.name)
        self._m_processed = m.processed.labels(self.name)
        self._m_latency = m.latency.labels(self.name)
        self._m_decode = m.decode.labels(self.name)
        self._m_depth = m.queue_depth.labels(self.name)
        m.queue_capacity.labels(self.name).set(self.queue_capacity)
        for reason in DropReason:  # export zeros so dashboards see every reason
            m.dropped.labels(self.name, reason.value)
        # per skipped frame (20 a second per camera at --fps 10): the children are looked up once
        self._m_skipped = {skip: m.skipped.labels(self.name, skip.value) for skip in SkipReason}
        m.published.labels(self.name)
        m.outboxed.labels(self.name)
        for r in ResultDropReason:
            m.results_dropped.labels(self.name, r.value)
        m.source_up.labels(self.name).set(0)

    def attach_ledger(self, slot: Any) -> None:
        """Mirror frames in and dropped into ``slot`` (:class:`edgeloop.stream.ledger.LedgerSlot`)."""
        with self._lock:
            self._ledger = slot
            slot.set(self.frames_in, self._dropped_total)

    # -- reader side ----------------------------------------------------------
    def on_decoded(self, kept: bool, decode_s: float | None = None, resize_s: float | None = None) -> None:
        """A decoded frame: kept (it enters the pipeline; ``decode_s`` its decode + resize time) or
        left out by fps sampling."""
        with self._lock:
            self.decoded += 1
            if kept:
                self.frames_in += 1
                if self._ledger is not None:
                    self._ledger.set(self.frames_in, self._dropped_total)
                if decode_s is not None:
                    self.decode_time.record(decode_s)
                if resize_s is not None:
                    self.resize_time.record(resize_s)
                    self.resize_s_total += resize_s
            else:
                self.skipped += 1
                self.skipped_by[SkipReason.FPS.value] += 1
        self._m_decoded.inc()
        if kept:
            self._m_in.inc()
            if decode_s is not None:
                self._m_decode.observe(decode_s)
        else:
            self._m_skipped[SkipReason.FPS].inc()

    def on_skipped(self, reason: SkipReason) -> None:
        """A frame left out by policy before it was decoded (e.g. not a key frame)."""
        with self._lock:
            self.skipped += 1
            self.skipped_by[reason.value] += 1
        self._m_skipped[reason].inc()

    def on_decode_time(self, seconds: float) -> None:
        """Time spent decoding one packet (whatever became of its frames)."""
        with self._lock:
            self.decode_s_total += seconds

    def set_state(self, state: SourceState) -> None:
        with self._lock:
            self.state = state
        self.metrics.source_up.labels(self.name).set(1 if state == SourceState.UP else 0)

    def on_error(self, kind: str, message: str) -> None:
        with self._lock:
            self.errors[kind] += 1
            self.last_error = message
        self.metrics.source_errors.labels(self.name, kind).inc()

    def on_reconnect(self) -> None:
        with self._lock:
            self.reconnects += 1
        self.metrics.reconnects.labels(self.name).inc()

    # -- queue / worker side ----------------------------------------------------
    def on_dropped(self, reason: DropReason, n: int = 1) -> None:
        if n <= 0:
            return
        with self._lock:
            self.dropped[reason.value] += n
            self._dropped_total += n
            if self._ledger is not None:
                self._ledger.set(self.frames_in, self._dropped_total)
        self.metrics.dropped.labels(self.name, reason.value).inc(n)

    def on_depth(self, depth: int) -> None:
        with self._lock:
            self.queue_high_water = max(self.queue_high_water, depth)
        self._m_depth.set(depth)

    def on_processed(self, latency_s: float) -> None:
        with self._lock:
            self.processed += 1
            self.latency.record(latency_s)
        self._m_processed.inc()
        self._m_latency.observe(latency_s)

    # -- publisher side -----------------------------------------------------------
    def on_published(self, n: int = 1) -> None:
        with self._lock:
            self.published += n
        self.metrics.published.labels(self.name).inc(n)

    def on_result_dropped(self, reason: ResultDropReason, n: int = 1) -> None:
        if n <= 0:
            return
        with self._lock:
            self.results_dropped[reason.value] += n
        self.metrics.results_dropped.labels(self.name, reason.value).inc(n)

    def on_outboxed(self, n: int = 1) -> None:
        with self._lock:
            self.outboxed += n
        self.metrics.outboxed.labels(self.name).inc(n)

    # -- reporting ------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            p50 = self.latency.quantile(0.50)
            p99 = self.latency.quantile(0.99)
            dec = self.decode_time.mean
            res = self.resize_time.mean
            busy = self.decode_s_total + self.resize_s_total
            return {
                "source": self.name,
                "state": self.state.value,
                "frames_decoded": self.decoded,
                "frames_skipped_by_fps": self.skipped_by.get(SkipReason.FPS.value, 0),
                "frames_skipped": dict(self.skipped_by),
                "skipped_total": self.skipped,
                "frames_in": self.frames_in,
                "frames_processed": self.processed,
                "frames_dropped": dict(self.dropped),
                "dropped_total": sum(self.dropped.values()),
                "queue_capacity": self.queue_capacity,
                "queue_high_water": self.queue_high_water,
                "latency_p50_ms": None if p50 is None else round(p50 * 1e3, 2),
                "latency_p99_ms": None if p99 is None else round(p99 * 1e3, 2),
                "latency_max_ms": round(self.latency.max * 1e3, 2) if self.latency.count else None,
                "decode_ms_mean": None if dec is None else round(dec * 1e3, 3),
                "resize_ms_mean": None if res is None else round(res * 1e3, 3),
                # decoding every frame (skipped ones too) + resizing the kept ones, per frame in
                "reader_ms_per_frame_in": round(busy / self.frames_in * 1e3, 3) if self.frames_in else None,
                "decoder": dict(self.decoder),
                "results_published": self.published,
                "results_outboxed": self.outboxed,
                "results_dropped": dict(self.results_dropped),
                "reconnects": self.reconnects,
                "errors": dict(self.errors),
                "last_error": self.last_error,
            }
