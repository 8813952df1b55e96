"""Dynamic batching across concurrent requests (REST and gRPC share one asyncio loop).

Requests queue their rows; runner threads (one per ONNX Runtime session, which releases the
GIL) each take up to ``max_batch_size`` rows as soon as they are free, optionally waiting up to
``max_wait_s`` for more, concatenate them, run the model and hand each request its slice. While
every thread is busy, new requests pile up and go in the next batch, so batches grow with load
and latency stays low when idle.

:class:`DirectRunner` is the "batching off" policy with the same interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
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
    """Collects rows from concurrent ``submit`` calls into batches for ``run``.

    ``concurrency`` runner threads take batches from one queue themselves: a thread that finishes
    a run starts the next at once, without a trip through the event loop, and hands its results
    back with one loop wake-up per batch. The event loop only queues rows and resolves futures.
    """

    def __init__(
        self,
        run: RunFn,
        max_batch_size: int = 16,
        max_wait_s: float = 0.0,
        max_queue_rows: int = 1024,
        on_batch: Callable[[int, float], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
        name: str = "model",
        concurrency: int = 2,
        prepare: Prepare | None = None,
        cpus: Sequence[int] = (),
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self._run = run
        self._cpus = list(cpus)  # runner thread i stays on CPU cpus[i] (none: the OS places them)
        self._prepare = prepare
        self.max_batch_size = max_batch_size
        self.max_wait_s = max(0.0, max_wait_s)
        self.max_queue_rows = max_queue_rows
        self._on_batch = on_batch
        self._on_queue = on_queue
        self.name = name
        # Up to ``concurrency`` batches run at once: on a CPU one run rarely fills every core,
        # and while every thread is busy the queue grows into the next, larger batch.
        self.concurrency = max(1, concurrency)
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition(threading.Lock())
        self._threads: list[threading.Thread] = []
        self._inflight = 0  # rows taken by a runner thread and not yet answered
        self._closed = False
        self.stats = BatchStats()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    async def submit(self, x: np.ndarray, full: bool = True) -> list[np.ndarray]:
        """Queue ``x`` ([n,...]) and return the model's outputs for its n rows (all with ``full``)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        with self._cond:  # under the lock: close() cannot slip between the check and the append
            if self._closed:
                raise OverloadedError("this model version is being unloaded; retry to reach the current one")
            if self._queued_rows + len(x) > self.max_queue_rows:
                raise OverloadedError(
                    f"the batching queue is full ({self._queued_rows} rows waiting); retry with backoff"
                )
            if not self._threads:
                self._start_threads()
            self._queue.append(_Item(x, fut, full, loop))
            self._queued_rows += len(x)
            self._cond.notify()
        self._notify_queue()
        return await fut

    def _start_threads(self) -> None:
        for i in range(self.concurrency):
            cpu = self._cpus[i] if i < len(self._cpus) else None
            t = threading.Thread(
                target=self._thread_main, args=(cpu,), name=f"ort-{self.name}-{i}", daemon=True
            )
            t.start()
            self._threads.append(t)

    def _notify_queue(self) -> None:
        if self._on_queue is not None:
            with contextlib.suppress(Exception):  # a gauge never fails a request
                self._on_queue(self._queued_rows)

    # -- runner threads --------------------------------------------------------------------
    def _thread_main(self, cpu: int | None) -> None:
        if cpu is not None:
            pin_thread(cpu)
        while True:
            items = self._next_batch()
            if items is None:
                return
            self._notify_queue()
            self._run_batch(items)

    def _next_batch(self) -> list[_Item] | None:
        """Block until there are rows (None once closed and drained), wait up to ``max_wait_s``
        for a fuller batch, then take up to ``max_batch_size`` rows (a bigger request alone)."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            if self.max_wait_s > 0 and self._queued_rows < self.max_batch_size:
                deadline = time.monotonic() + self.max_wait_s
                while self._queued_rows < self.max_batch_size and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._cond.wait(remaining):
                        break
            items: list[_Item] = []
            rows = 0
            while self._queue:
                item = self._queue[0]
                n = len(item.x)
                if items and rows + n > self.max_batch_size:
                    break
                self._queue.popleft()
                self._queued_rows -= n
                if item.fut.cancelled():  # the client went away while queued
                    continue
                items.append(item)
                rows += n
            self._inflight += rows
            if self._queue:
                self._cond.notify()  # rows left over: another idle thread can take them
            return items

    def _run_batch(self, items: list[_Item]) -> None:
        """Run one batch and hand every request its answer or the error; never raises, so the
        thread lives on and no request is left without an answer."""
        rows = sum(len(it.x) for it in items)
        outputs: Sequence[np.ndarray] | BaseException
        try:
            if not items:
                return
            t0 = time.perf_counter()
            try:
                xs = [it.x for it in items]
                outputs = _execute(self._run, self._prepare, xs, any(it.full for it in items))
            except Exception as e:  # a model failure fails the requests of this batch only
                outputs = e
            for loop, group in _by_loop(items).items():
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits on it
                    loop.call_soon_threadsafe(_deliver, group, outputs)
            if not isinstance(outputs, BaseException):
                with self._cond:  # runner threads record side by side
                    self.stats.record(rows)
                if self._on_batch is not None:
                    with contextlib.suppress(Exception):  # metrics never fail a request
                        self._on_batch(rows, time.perf_counter() - t0)
        finally:
            with self._cond:
                self._inflight -= rows
                self._cond.notify_all()

    async def close(self, timeout_s: float = 30.0) -> None:
        """Stop taking requests, let queued and running ones finish, then stop the threads."""
        self._closed = True
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        while self._busy() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    def _busy(self) -> bool:
        with self._cond:  # rows move from the queue to in flight under this lock
            return bool(self._queue) or self._inflight > 0


def pin_thread(cpu: int) -> None:
    """Keep the calling thread on ``cpu`` (Linux; elsewhere, or when refused, nothing changes)."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {cpu})  # 0: the calling thread


def per_core_cpus(threads: int) -> list[int]:
    """The CPUs to pin ``threads`` single-threaded runners to: one each when there are exactly as
    many usable CPUs as threads and no CPU quota below that (a container limited to fewer cores
    than it sees must not be pinned); else none."""
    from edgeloop.core.model_loader import cpu_quota

    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return []
    if threads < 2 or len(cpus) != threads or cpu_quota() < threads:
        return []
    return cpus


@dataclass(slots=True)
class _Item:
    x: np.ndarray
    fut: asyncio.Future
    full: bool
    loop: asyncio.AbstractEventLoop


def _by_loop(items: list[_Item]) -> dict[asyncio.AbstractEventLoop, list[_Item]]:
    groups: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
    for it in items:
        groups.setdefault(it.loop, []).append(it)
    return groups


def _deliver(items: list[_Item], outputs: Sequence[np.ndarray] | BaseException) -> None:
    """On the event loop: each request gets its own rows of every output (or the batch's error)."""
    if isinstance(outputs, BaseException):
        for it in items:
            if not it.fut.done():
                it.fut.set_exception(outputs)
        return
    start = 0
    for it in items:
        end = start + len(it.x)
        if not it.fut.done():
            it.fut.set_result([o[start:end] for o in outputs])
        start = end


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
