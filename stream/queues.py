"""Bounded per-source frame queues and the scheduler that batches across them.

Each source has its own queue of at most ``capacity`` frames, so a slow model or
a burst from one camera can never grow memory: when a queue is full the drop
policy decides which frame goes, and the caller counts it. The inference
workers take batches round-robin across the queues, so one busy camera cannot
starve the others.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from edgeloop.stream.stats import DropReason, SourceStats


class DropPolicy(str, Enum):
    DROP_OLDEST = "drop-oldest"  # keep the freshest frames (default: live video wants the present)
    DROP_NEWEST = "drop-newest"  # keep what is queued, refuse the incoming frame
    BLOCK = "block"  # make the reader wait (back-pressure; right for files, not for live cameras)


@dataclass(slots=True)
class Frame:
    """One sampled frame, already resized to the model's input size."""

    source: str
    index: int  # per source, counts decoded frames since the processor started (continues across reconnects)
    image: np.ndarray  # uint8 HWC at model size
    captured_at: float  # wall clock (unix seconds) when the frame's packet was read
    t_capture: float  # time.monotonic() at the same moment; latency is measured from here
    media_time: float | None = None  # presentation time in the stream, seconds
    meta: dict[str, str] = field(default_factory=dict)
    # (width, height) of the frame as decoded, before the resize: detection boxes are given in these pixels
    source_size: tuple[int, int] | None = None


class FrameQueue:
    """A bounded FIFO for one source. Depth never exceeds ``capacity``."""

    def __init__(
        self, name: str, capacity: int, policy: DropPolicy, stats: SourceStats, cond: threading.Condition
    ):
        if capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self.name = name
        self.capacity = capacity
        self.policy = policy
        self.stats = stats
        self._cond = cond
        self._items: deque[Frame] = deque()
        self.closed = False  # no more frames will come

    def __len__(self) -> int:
        return len(self._items)

    def put(self, frame: Frame, stop: threading.Event | None = None) -> bool:
        """Enqueue ``frame`` under the policy. Returns False if it (or, for drop-oldest, another) was dropped."""
        with self._cond:
            ok = True
            if len(self._items) >= self.capacity:
                if self.policy == DropPolicy.DROP_OLDEST:
                    self._items.popleft()
                    self.stats.on_dropped(DropReason.QUEUE_FULL)
                    ok = False
                elif self.policy == DropPolicy.DROP_NEWEST:
                    self.stats.on_dropped(DropReason.QUEUE_FULL)
                    return False
                else:  # BLOCK
                    while len(self._items) >= self.capacity:
                        if stop is not None and stop.is_set():
                            self.stats.on_dropped(DropReason.SHUTDOWN)
                            return False
                        self._cond.wait(0.1)
            self._items.append(frame)
            self.stats.on_depth(len(self._items))
            self._cond.notify_all()
            return ok

    def _pop(self) -> Frame:
        frame = self._items.popleft()
        self.stats.on_depth(len(self._items))
        return frame

    def clear(self, reason: DropReason) -> int:
        with self._cond:
            n = len(self._items)
            self._items.clear()
            self.stats.on_dropped(reason, n)
            self.stats.on_depth(0)
            self._cond.notify_all()
            return n


class Scheduler:
    """Hands out batches across all queues, round-robin, in a global batch order."""

    def __init__(self, max_age_s: float | None = None):
        self.cond = threading.Condition()
        self.queues: list[FrameQueue] = []
        self.max_age_s = max_age_s
        self._start = 0
        self._next_batch = 0

    def add_queue(self, name: str, capacity: int, policy: DropPolicy, stats: SourceStats) -> FrameQueue:
        q = FrameQueue(name, capacity, policy, stats, self.cond)
        with self.cond:
            self.queues.append(q)
        return q

    def pending(self) -> int:
        with self.cond:
            return sum(len(q) for q in self.queues)

    def take_batch(self, max_n: int, timeout: float) -> tuple[int, list[Frame]] | None:
        """Wait up to ``timeout`` for frames; return (batch sequence number, frames) or None.

        Frames of one source keep their order inside a batch, and batches are
        numbered in the order they were formed, so emitting results in batch
        order keeps every source's results in frame order.
        """
        deadline = time.monotonic() + timeout
        with self.cond:
            while not any(len(q) for q in self.queues):
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            frames: list[Frame] = []
            n_q = len(self.queues)
            now = time.monotonic()
            i = 0
            idle_rounds = 0
            while len(frames) < max_n and idle_rounds < n_q:
                q = self.queues[(self._start + i) % n_q]
                i += 1
                if not len(q):
                    idle_rounds += 1
                    continue
                idle_rounds = 0
                frame = q._pop()
                if self.max_age_s is not None and now - frame.t_capture > self.max_age_s:
                    q.stats.on_dropped(DropReason.STALE)
                    continue
                frames.append(frame)
            self._start = (self._start + 1) % max(n_q, 1)
            self.cond.notify_all()  # wake readers blocked on a full queue
            if not frames:
                return None
            seq = self._next_batch
            self._next_batch += 1
            return seq, frames
