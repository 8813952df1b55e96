"""The stream processor: N sources -> bounded queues -> batched inference -> one result per frame.

Threads: one reader per source (decode, fps sampling, resize, enqueue), ``workers``
inference threads that take batches round-robin across the queues, and the
result sink (MQTT publisher). Results are emitted in batch order, so each
camera's results leave in frame order even with several workers.

Accounting invariant, per source, once the processor has stopped:
``frames_in == frames_processed + sum(frames_dropped.values())``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeloop.stream.predictors import Predictor
from edgeloop.stream.publisher import ResultSink
from edgeloop.stream.queues import DropPolicy, Frame, Scheduler
from edgeloop.stream.resize import ResizeChoice, ResizeMode, choose_resize, frame_resizer
from edgeloop.stream.result import build_result, check_topic_parts, encode, topic_for
from edgeloop.stream.sources import ReaderConfig, SourceReader, SourceSpec, unique_names
from edgeloop.stream.stats import DropReason, SourceState, SourceStats, StreamMetrics

log = logging.getLogger(__name__)


@dataclass
class StreamConfig:
    line: str = "line1"
    topic_prefix: str = "edgeloop/results"
    queue_size: int = 8
    drop_policy: DropPolicy = DropPolicy.DROP_OLDEST
    batch_size: int = 8
    workers: int = 1
    max_age_s: float | None = None
    drain_timeout_s: float = 10.0
    publish_flush_timeout_s: float = 10.0
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    resize: ResizeMode = ResizeMode.AUTO  # FFmpeg-side resize where the model card allows it


@dataclass
class StreamSummary:
    sources: list[dict[str, Any]]
    model: dict[str, Any]
    elapsed_s: float
    batches: int
    inference_s_per_frame: float | None
    outbox_depth: int
    run_id: str = ""
    lost_in_killed_runs: list[dict[str, Any]] = field(default_factory=list)
    preprocessing: dict[str, Any] = field(default_factory=dict)  # the resize path taken, and why

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "elapsed_s": round(self.elapsed_s, 3),
            "model": self.model,
            "preprocessing": self.preprocessing,
            "batches": self.batches,
            "inference_ms_per_frame": None
            if self.inference_s_per_frame is None
            else round(self.inference_s_per_frame * 1e3, 3),
            "outbox_depth": self.outbox_depth,
            "sources": self.sources,
            "lost_in_killed_runs": self.lost_in_killed_runs,
        }

    def table(self) -> str:
        head = (
            "source",
            "state",
            "read",
            "skipped",
            "done",
            "dropped",
            "p50 ms",
            "p99 ms",
            "published",
            "outboxed",
            "reconn",
        )
        rows = [head]
        for s in self.sources:
            drops = s["frames_dropped"]
            dropped = str(s["dropped_total"])
            if drops:
                dropped += " (" + ", ".join(f"{k} {v}" for k, v in sorted(drops.items()) if v) + ")"
            rows.append(
                (
                    s["source"],
                    s["state"],
                    str(s["frames_in"]),
                    _skipped(s),
                    str(s["frames_processed"]),
                    dropped,
                    _ms(s["latency_p50_ms"]),
                    _ms(s["latency_p99_ms"]),
                    str(s["results_published"]),
                    str(s["results_outboxed"]),
                    str(s["reconnects"]),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        errors = [f"  {s['source']}: {s['last_error']}" for s in self.sources if s["last_error"]]
        out = "\n".join(lines)
        if self.preprocessing:
            out += f"\nresize: {self.preprocessing['path']} ({self.preprocessing['reason']})"
        decoders = sorted({_decoder(s["decoder"]) for s in self.sources if s.get("decoder")})
        if decoders:
            out += "\ndecode: " + "; ".join(decoders)
        if errors:
            out += "\nerrors:\n" + "\n".join(errors)
        dropped_results = [
            f"  {s['source']}: " + ", ".join(f"{k} {v}" for k, v in sorted(s["results_dropped"].items()) if v)
            for s in self.sources
            if any(s.get("results_dropped", {}).values())
        ]
        if dropped_results:
            out += "\nresults computed but dropped before the outbox:\n" + "\n".join(dropped_results)
        if self.outbox_depth:
            out += f"\n{self.outbox_depth} results wait in the outbox (sent on the next run)"
        for lost in self.lost_in_killed_runs:
            out += (
                f"\nrun {lost['run_id']} was killed: {lost['source']} lost {lost['lost']} frames in memory "
                f"({lost['frames_in']} in, {lost['frames_dropped']} dropped, "
                f"{lost['results_durable']} results kept and sent from the outbox)"
            )
        return out


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _skipped(s: dict[str, Any]) -> str:
    """Frames left out by policy (fps, key frames only): counted, never dropped."""
    out = str(s.get("skipped_total", 0))
    by = s.get("frames_skipped") or {}
    if len(by) > 1:
        out += " (" + ", ".join(f"{k} {v}" for k, v in sorted(by.items()) if v) + ")"
    return out


def _decoder(d: dict[str, Any]) -> str:
    hw = d.get("hwaccel", "none")
    where = f"on {hw}" if hw != "none" else "in software"
    text = f"{d.get('codec')} {where}, {d.get('threads')} thread(s)"
    if d.get("keyframes_only"):
        text += ", key frames only"
    return text


class StreamProcessor:
    def __init__(
        self,
        sources: list[SourceSpec],
        predictor: Predictor,
        sink: ResultSink | None = None,
        config: StreamConfig | None = None,
        metrics: StreamMetrics | None = None,
    ):
        if not sources:
            raise ValueError("at least one source is needed")
        self.config = config or StreamConfig()
        check_topic_parts(
            self.config.topic_prefix, self.config.line
        )  # a clear error now, not a dead publisher
        self.predictor = predictor
        self.metrics = metrics or StreamMetrics()
        self.specs = unique_names(sources)
        self.stats: dict[str, SourceStats] = {
            s.name: SourceStats(s.name, self.metrics, queue_capacity=self.config.queue_size)
            for s in self.specs
        }
        self.sink = sink
        self.run_id = uuid.uuid4().hex[:16]  # in every result's message_id
        self.lost: list[dict[str, Any]] = []  # what killed earlier runs on the same outbox lost
        self.scheduler = Scheduler(max_age_s=self.config.max_age_s)
        self.resize_choice: ResizeChoice = choose_resize(
            getattr(predictor, "resize_evidence", None), self.config.resize, predictor.preprocess.config
        )
        log.info("resize: %s (%s)", self.resize_choice.path.value, self.resize_choice.reason)
        self._stop_readers = threading.Event()
        self._stop_workers = threading.Event()
        self._stop_requested = threading.Event()
        self._emit_cond = threading.Condition()
        self._next_emit = 0
        self._inference_s = 0.0
        self._inference_frames = 0
        self._batches = 0
        self._started = 0.0
        self.readers: list[SourceReader] = []
        for spec in self.specs:
            q = self.scheduler.add_queue(
                spec.name, self.config.queue_size, self.config.drop_policy, self.stats[spec.name]
            )
            self.readers.append(
                SourceReader(
                    spec,
                    q,
                    self.stats[spec.name],
                    predictor.preprocess.resize,
                    self.config.reader,
                    self._stop_readers,
                    frame_resize=frame_resizer(self.resize_choice, predictor.preprocess),
                )
            )
        self._workers = [
            threading.Thread(target=self._work, name=f"infer-{i}", daemon=True)
            for i in range(max(1, self.config.workers))
        ]

    def stats_for(self, name: str) -> SourceStats | None:
        return self.stats.get(name)

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        if self.sink is not None:
            self.lost = [entry.as_dict() for entry in self.sink.begin_run(self.run_id, self.stats)]
        self._started = time.monotonic()
        for w in self._workers:
            w.start()
        for r in self.readers:
            r.start()

    def request_stop(self) -> None:
        """Ask :meth:`run` to wind down (signal handlers call this)."""
        self._stop_requested.set()

    def sources_done(self) -> bool:
        return all(not r.is_alive() for r in self.readers)

    def run(self, duration_s: float | None = None) -> StreamSummary:
        """Start, run until every source has ended, ``duration_s`` has passed or a stop is requested; stop."""
        self.start()
        deadline = None if not duration_s else time.monotonic() + duration_s
        while not self._stop_requested.is_set() and not self.sources_done():
            if deadline is not None and time.monotonic() >= deadline:
                break
            self._stop_requested.wait(0.05)
        return self.stop()

    def stop(self) -> StreamSummary:
        """Stop the readers, finish the queued frames (up to ``drain_timeout_s``), flush the results."""
        self._stop_readers.set()
        for r in self.readers:
            r.join(timeout=max(2.0, self.config.reader.read_timeout_s))
            if r.is_alive():
                log.warning("source %s did not stop in time (blocked in a read); leaving it", r.spec.name)
        deadline = time.monotonic() + self.config.drain_timeout_s
        while (
            self.scheduler.pending()
            and time.monotonic() < deadline
            and any(w.is_alive() for w in self._workers)
        ):
            time.sleep(0.01)
        self._stop_workers.set()
        for w in self._workers:
            w.join(timeout=self.config.drain_timeout_s)
        for q in self.scheduler.queues:
            q.clear(DropReason.SHUTDOWN)
        for st in self.stats.values():
            if st.state in (SourceState.UP, SourceState.STARTING, SourceState.RECONNECTING):
                st.set_state(SourceState.STOPPED)
        if self.sink is not None:
            self.sink.close(self.config.publish_flush_timeout_s)
        self.predictor.close()
        return self.summary()

    def summary(self) -> StreamSummary:
        elapsed = time.monotonic() - self._started if self._started else 0.0
        per_frame = self._inference_s / self._inference_frames if self._inference_frames else None
        return StreamSummary(
            sources=[self.stats[s.name].snapshot() for s in self.specs],
            model={
                "name": self.predictor.model_name,
                "version": self.predictor.model_version,
                "input_size": self.predictor.preprocess.size,
            },
            preprocessing=self.resize_choice.as_dict(),
            elapsed_s=elapsed,
            batches=self._batches,
            inference_s_per_frame=per_frame,
            outbox_depth=getattr(self.sink, "outbox_depth", 0),
            run_id=self.run_id,
            lost_in_killed_runs=self.lost,
        )

    # -- inference workers ------------------------------------------------------------------------------
    def _work(self) -> None:
        cfg = self.config
        failures = 0
        while True:
            got = self.scheduler.take_batch(cfg.batch_size, timeout=0.05)
            if got is None:
                if self._stop_workers.is_set():
                    return
                continue
            seq, frames = got
            t0 = time.monotonic()
            try:
                preds = self.predictor.predict(np.stack([f.image for f in frames]))
                if len(preds) != len(frames):
                    raise RuntimeError(f"model returned {len(preds)} results for {len(frames)} frames")
                error: Exception | None = None
            except Exception as e:  # the model or server failed: count the frames, keep going
                error, preds = e, []
            elapsed = time.monotonic() - t0
            if error is None:
                failures = 0
                self.metrics.inference.observe(elapsed)
                self.metrics.batch_size.observe(len(frames))
            self._emit(seq, frames, preds, elapsed, error)
            if error is not None:
                failures += 1
                if failures == 1 or failures % 100 == 0:
                    log.error(
                        "inference failed for a batch of %d frames (%d in a row): %s",
                        len(frames),
                        failures,
                        error,
                    )
                self._stop_workers.wait(min(1.0, 0.05 * failures))

    def _emit(
        self, seq: int, frames: list[Frame], preds: list[Any], elapsed: float, error: Exception | None
    ) -> None:
        cfg = self.config
        with self._emit_cond:
            while self._next_emit != seq:
                self._emit_cond.wait()
            try:
                self._batches += 1
                if error is not None:
                    for f in frames:
                        self.stats[f.source].on_dropped(DropReason.INFERENCE_ERROR)
                    return
                self._inference_s += elapsed
                self._inference_frames += len(frames)
                now = time.monotonic()
                name, version = self.predictor.model_name, self.predictor.model_version
                labels = self.predictor.labels
                for f, p in zip(frames, preds, strict=True):
                    latency = now - f.t_capture
                    result = build_result(
                        f,
                        p,
                        run_id=self.run_id,
                        line=cfg.line,
                        model_name=name,
                        model_version=version,
                        labels=labels,
                        latency_s=latency,
                    )
                    self.stats[f.source].on_processed(latency)
                    if self.sink is not None:
                        self.sink.submit(
                            f.source, topic_for(cfg.topic_prefix, cfg.line, f.source), encode(result)
                        )
            finally:
                self._next_emit += 1
                self._emit_cond.notify_all()
