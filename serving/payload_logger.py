"""Sampled, non-blocking payload logging to blob storage, in the format of :mod:`edgeloop.core.payload_log`.

The request path only samples rows and puts references on a bounded queue
(``put_nowait``); a full queue drops the row and counts it. A background thread
encodes PNGs, hashes them and writes JSONL batches with ``payload_log.write_batch``.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeloop.core.model_card import sha256_bytes
from edgeloop.core.payload_log import PayloadRecord, encode_png, image_blob_name
from edgeloop.serving.metrics import PAYLOAD_LOG

log = logging.getLogger(__name__)

# (model, records, images by sha256) -> None; raises on failure
Writer = Callable[[str, list[PayloadRecord], dict[str, bytes]], object]


@dataclass
class _Item:
    ts: float
    model: str
    version: str
    label: str
    probabilities: np.ndarray
    embedding: np.ndarray | None
    image: np.ndarray  # uint8 HWC, or float32 CHW normalised (then mean/std are set)
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    request_id: str | None
    detections: list[dict[str, Any]] | None = None  # a detector's, in the logged image's pixels


class PayloadLogger:
    def __init__(
        self,
        writer: Writer,
        container: str,
        sample_rate: float,
        queue_size: int = 256,
        batch_records: int = 64,
        flush_s: float = 5.0,
        seed: int | None = None,
    ):
        self._writer = writer
        self.container = container
        self.sample_rate = sample_rate
        self.batch_records = batch_records
        self.flush_s = flush_s
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=queue_size)
        self._rng = random.Random(seed)
        self._thread = threading.Thread(target=self._run, name="payload-log", daemon=True)
        self._started = False
        self.written = self.dropped = self.failed = 0

    @classmethod
    def to_blob(cls, store, container: str, **kwargs) -> PayloadLogger:
        from edgeloop.core.payload_log import write_batch

        store.ensure_container(container)
        return cls(
            lambda model, recs, imgs: write_batch(store, container, model, recs, imgs), container, **kwargs
        )

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def offer(
        self,
        model: str,
        version: str,
        labels: list[str],
        probabilities: np.ndarray,
        embedding: np.ndarray | None,
        frames: np.ndarray | None,
        x: np.ndarray | None,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        request_id: str | None = None,
        rows: Sequence[int] | None = None,
        detections: Sequence[list[dict[str, Any]]] | None = None,
    ) -> int:
        """Queue the rows of one answered request (``rows``, else a sample of them); never blocks.
        Returns rows queued. ``detections``: a detector's answer per image (in the pixels of the
        logged image, the model's input), instead of probabilities."""
        now, queued = time.time(), 0
        for i in self.sample(len(labels)) if rows is None else rows:
            image, m, s = (frames[i], None, None) if frames is not None else (x[i], mean, std)  # type: ignore[index]
            item = _Item(
                now,
                model,
                version,
                labels[i],
                probabilities[i],
                None if embedding is None else embedding[i],
                image,
                m,
                s,
                request_id,
                None if detections is None else detections[i],
            )
            try:
                self._queue.put_nowait(item)
                queued += 1
            except queue.Full:
                self.dropped += 1
                PAYLOAD_LOG.labels("dropped").inc()
        return queued

    def sample(self, n: int) -> list[int]:
        """The rows of an n-image request the log keeps (each with probability ``sample_rate``)."""
        if self.sample_rate <= 0:
            return []
        if self.sample_rate >= 1:
            return list(range(n))
        return [i for i in range(n) if self._rng.random() < self.sample_rate]

    def _run(self) -> None:
        pending: list[_Item] = []
        last = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=max(0.05, self.flush_s - (time.monotonic() - last)))
            except queue.Empty:
                item = False  # type: ignore[assignment]
            if item is None:  # close()
                self._flush(pending)
                return
            if item is not False:
                pending.append(item)
            if pending and (len(pending) >= self.batch_records or time.monotonic() - last >= self.flush_s):
                self._flush(pending)
                pending = []
                last = time.monotonic()

    def _flush(self, items: list[_Item]) -> None:
        by_model: dict[str, list[_Item]] = {}
        for it in items:
            by_model.setdefault(it.model, []).append(it)
        for model, group in by_model.items():
            records: list[PayloadRecord] = []
            images: dict[str, bytes] = {}
            for it in group:
                try:
                    records.append(self._record(model, it, images))
                except Exception as e:  # one bad item must not kill the writer thread: count it
                    self.failed += 1
                    PAYLOAD_LOG.labels("failed").inc()
                    log.warning("payload log: could not encode one record: %s: %s", type(e).__name__, e)
            try:
                self._writer(model, records, images)
                self.written += len(records)
                PAYLOAD_LOG.labels("written").inc(len(records))
            except Exception as e:  # storage down: count and go on, serving must not care
                self.failed += len(records)
                PAYLOAD_LOG.labels("failed").inc(len(records))
                log.warning(
                    "payload log write failed for %d records: %s: %s", len(records), type(e).__name__, e
                )

    def _record(self, model: str, it: _Item, images: dict[str, bytes]) -> PayloadRecord:
        png = encode_png(_to_hwc(it))
        sha = sha256_bytes(png)
        images[sha] = png
        probs = it.probabilities.astype(float).tolist()
        score = max(probs) if probs else max((float(d["score"]) for d in it.detections or []), default=0.0)
        return PayloadRecord(
            ts=it.ts,
            model=model,
            version=it.version,
            label=it.label,
            score=score,
            probabilities=probs,
            detections=it.detections,
            embedding=None if it.embedding is None else it.embedding.astype(float).tolist(),
            image_sha256=sha,
            image_uri=f"az://{self.container}/{image_blob_name(sha)}",
            request_id=it.request_id,
        )

    def close(self, timeout_s: float = 10.0) -> None:
        if not self._started:
            return
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            log.warning("payload log queue still full at shutdown; %d records lost", self._queue.qsize())
            return
        self._thread.join(timeout_s)


def _to_hwc(it: _Item) -> np.ndarray:
    if it.mean is None:
        return np.ascontiguousarray(it.image)
    mean = np.asarray(it.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(it.std, dtype=np.float32).reshape(3, 1, 1)
    chw = (it.image * std + mean) * 255.0
    return np.clip(np.rint(chw), 0, 255).astype(np.uint8).transpose(1, 2, 0).copy()
