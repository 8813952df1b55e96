"""Dynamic batching across concurrent requests (REST and gRPC share one asyncio loop).

Requests queue their rows; one worker per model version takes up to
``max_batch_size`` rows, waiting at most ``max_wait_s`` after the first for more,
concatenates them, runs the model in a dedicated thread (ONNX Runtime releases the
GIL) and hands each request its slice. While a batch runs, new requests pile up and
go in the next one, so batches grow with load and latency stays low when idle.

:class:`DirectRunner` is the "batching off" policy with the same interface.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from edgeloop.serving.errors import OverloadedError

# (NCHW batch, every output?) -> outputs, each [N, ...]; with False, only what every answer needs
# (the probabilities): the embedding is computed and copied out only when a request in the batch asks.
RunFn = Callable[[np.ndarray, bool], Sequence[np.ndarray]]
# One request's rows -> the model's input (e.g. uint8 frames -> normalised float32), in the runner thread.
Prepare = Callable[[np.ndarray], np.ndarray]


def _execute(run: RunFn, prepare: Prepare | None, xs: list[np.ndarray], full: bool) -> Sequence[np.ndarray]:
    if prepare is not None:
        xs = [prepare(x) for x in xs]
    return run(xs[0] if len(xs) == 1 else np.concatenate(xs, axis=0), full)


@dataclass
class BatchStats:
    batches: int = 0
    rows: int = 0
    sizes: list[int] = field(default_factory=list)  # last few batch sizes, for tests and debugging

    def record(self, n: int) -> None:
        self.batches += 1
        self.rows += n
        self.sizes.append(n)
        del self.sizes[:-256]


class DynamicBatcher:
    """Collects rows from concurrent ``submit`` calls into batches for ``run``."""

    def __init__(
        self,
        run: RunFn,
        max_batch_size: int = 16,
        max_wait_s: float = 0.002,
        max_queue_rows: int = 1024,
        on_batch: Callable[[int, float], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
        name: str = "model",
        concurrency: int = 2,
        prepare: Prepare | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self._run = run
        self._prepare = prepare
        self.max_batch_size = max_batch_size
        self.max_wait_s = max(0.0, max_wait_s)
        self.max_queue_rows = max_queue_rows
        self._on_batch = on_batch
        self._on_queue = on_queue
        # Up to ``concurrency`` batches run at once: on a CPU one run rarely fills every core,
        # and while all slots are busy the queue grows into the next, larger batch.
        self.concurrency = max(1, concurrency)
        self._slots: asyncio.Semaphore | None = None
        self._executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=f"ort-{name}")
        self._queue: deque[tuple[np.ndarray, asyncio.Future, bool]] = deque()
        self._queued_rows = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._inflight = 0
        self._closed = False
        self.stats = BatchStats()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    async def submit(self, x: np.ndarray, full: bool = True) -> list[np.ndarray]:
        """Queue ``x`` ([n,...]) and return the model's outputs for its n rows (all with ``full``)."""
        if self._closed:
            raise OverloadedError("this model version is being unloaded; retry to reach the current one")
        if self._queued_rows + len(x) > self.max_queue_rows:
            raise OverloadedError(
                f"the batching queue is full ({self._queued_rows} rows waiting); " "retry with backoff"
            )
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._slots = asyncio.Semaphore(self.concurrency)
            self._task = loop.create_task(self._worker(), name="edgeloop-batcher")
        fut: asyncio.Future = loop.create_future()
        self._queue.append((x, fut, full))
        self._queued_rows += len(x)
        self._notify_queue()
        assert self._wake is not None
        self._wake.set()
        return await fut

    def _notify_queue(self) -> None:
        if self._on_queue is not None:
            self._on_queue(self._queued_rows)

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None and self._slots is not None
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._slots.acquire()  # requests keep queueing while every slot is busy
            if self._queued_rows < self.max_batch_size and self.max_wait_s > 0:
                deadline = loop.time() + self.max_wait_s
                while self._queued_rows < self.max_batch_size:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), remaining)
                    except TimeoutError:
                        break
            items = self._take()
            self._notify_queue()
            if not items:
                self._slots.release()
                continue
            self._inflight += 1  # counted before the task starts, so close() waits for it
            task = loop.create_task(self._run_batch(loop, items))
            task.add_done_callback(lambda _t: self._slots.release())  # type: ignore[union-attr]

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future, bool]]:
        items: list[tuple[np.ndarray, asyncio.Future, bool]] = []
        rows = 0
        while self._queue:
            x, fut, full = self._queue[0]
            if items and rows + len(x) > self.max_batch_size:
                break
            self._queue.popleft()
            self._queued_rows -= len(x)
            if fut.cancelled():  # the client went away while queued
                continue
            items.append((x, fut, full))
            rows += len(x)
        return items

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, items: list) -> None:
        xs = [x for x, _, _ in items]
        rows = sum(len(x) for x in xs)
        full = any(f for _, _, f in items)
        t0 = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self._executor, _execute, self._run, self._prepare, xs, full)
        except Exception as e:  # a model failure fails the requests of this batch only
            for _, fut, _ in items:
                if not fut.done():
                    fut.set_exception(e)
            return
        finally:
            self._inflight -= 1
        self.stats.record(rows)
        if self._on_batch is not None:
            self._on_batch(rows, time.perf_counter() - t0)
        start = 0
        for x, fut, _ in items:
            end = start + len(x)
            if not fut.done():
                fut.set_result([o[start:end] for o in outputs])
            start = end

    async def close(self, timeout_s: float = 30.0) -> None:
        """Stop taking requests, let queued and running ones finish, then stop the worker."""
        self._closed = True
        deadline = time.monotonic() + timeout_s
        while (self._queue or self._inflight) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False)


class DirectRunner:
    """Batching off: every request runs on its own, ``concurrency`` at a time."""

    def __init__(
        self,
        run: RunFn,
        concurrency: int = 2,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "model",
        prepare: Prepare | None = None,
    ):
        self._run = run
        self._prepare = prepare
        self._on_batch = on_batch
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"ort-{name}")
        self._inflight = 0
        self._closed = False
        self.stats = BatchStats()
        self.max_batch_size = 0
        self.max_wait_s = 0.0

    @property
    def queued_rows(self) -> int:
        return 0

    async def submit(self, x: np.ndarray, full: bool = True) -> list[np.ndarray]:
        if self._closed:
            raise OverloadedError("this model version is being unloaded; retry to reach the current one")
        loop = asyncio.get_running_loop()
        self._inflight += 1
        t0 = time.perf_counter()
        try:
            out = await loop.run_in_executor(self._executor, _execute, self._run, self._prepare, [x], full)
        finally:
            self._inflight -= 1
        self.stats.record(len(x))
        if self._on_batch is not None:
            self._on_batch(len(x), time.perf_counter() - t0)
        return list(out)

    async def close(self, timeout_s: float = 30.0) -> None:
        self._closed = True
        deadline = time.monotonic() + timeout_s
        while self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        self._executor.shutdown(wait=False)
