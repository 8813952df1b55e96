"""Bounded queues: the bound holds, every dropped frame is counted, batches are fair and ordered."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgeloop.stream.queues import DropPolicy, Frame, Scheduler
from edgeloop.stream.stats import SourceStats, StreamMetrics


def _frame(source: str, i: int, t: float | None = None) -> Frame:
    now = time.monotonic() if t is None else t
    return Frame(source, i, np.zeros((4, 4, 3), np.uint8), time.time(), now)


def _setup(
    policy: DropPolicy, capacity: int = 3, names: tuple[str, ...] = ("a",), max_age_s: float | None = None
):
    metrics = StreamMetrics()
    sched = Scheduler(max_age_s=max_age_s)
    stats = {n: SourceStats(n, metrics, queue_capacity=capacity) for n in names}
    queues = {n: sched.add_queue(n, capacity, policy, stats[n]) for n in names}
    return sched, queues, stats, metrics


def test_drop_oldest_keeps_the_newest_frames_and_counts_each_drop():
    sched, queues, stats, metrics = _setup(DropPolicy.DROP_OLDEST, capacity=3)
    for i in range(10):
        queues["a"].put(_frame("a", i))
        assert len(queues["a"]) <= 3
    _, frames = sched.take_batch(10, timeout=0.1)
    assert [f.index for f in frames] == [7, 8, 9]
    assert stats["a"].dropped["queue_full"] == 7
    assert stats["a"].queue_high_water == 3
    assert (
        metrics.registry.get_sample_value(
            "edgeloop_stream_frames_dropped_total", {"source": "a", "reason": "queue_full"}
        )
        == 7
    )


def test_drop_newest_keeps_the_queued_frames():
    sched, queues, stats, _ = _setup(DropPolicy.DROP_NEWEST, capacity=3)
    accepted = [queues["a"].put(_frame("a", i)) for i in range(5)]
    assert accepted == [True, True, True, False, False]
    _, frames = sched.take_batch(10, timeout=0.1)
    assert [f.index for f in frames] == [0, 1, 2]
    assert stats["a"].dropped["queue_full"] == 2


def test_block_makes_the_producer_wait_until_a_batch_is_taken():
    sched, queues, stats, _ = _setup(DropPolicy.BLOCK, capacity=2)
    done = threading.Event()

    def produce():
        for i in range(6):
            queues["a"].put(_frame("a", i))
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    got = []
    while len(got) < 6:
        batch = sched.take_batch(1, timeout=1.0)
        assert batch is not None
        got.extend(f.index for f in batch[1])
        assert len(queues["a"]) <= 2
    assert done.wait(1.0)
    assert got == list(range(6))
    assert not stats["a"].dropped


def test_block_gives_up_when_stopping_and_counts_the_frame():
    _, queues, stats, _ = _setup(DropPolicy.BLOCK, capacity=1)
    stop = threading.Event()
    queues["a"].put(_frame("a", 0))
    stop.set()
    assert queues["a"].put(_frame("a", 1), stop) is False
    assert stats["a"].dropped["shutdown"] == 1


def test_batches_round_robin_across_sources_in_order_per_source():
    sched, queues, _, _ = _setup(DropPolicy.DROP_OLDEST, capacity=10, names=("a", "b", "c"))
    for i in range(6):
        queues["a"].put(_frame("a", i))
    queues["b"].put(_frame("b", 0))
    queues["c"].put(_frame("c", 0))
    seq0, first = sched.take_batch(4, timeout=0.1)
    # one busy source cannot fill the batch while the others wait
    assert sorted({f.source for f in first}) == ["a", "b", "c"]
    seq1, second = sched.take_batch(10, timeout=0.1)
    assert (seq0, seq1) == (0, 1)
    a_indices = [f.index for f in first + second if f.source == "a"]
    assert a_indices == list(range(6))


def test_stale_frames_are_dropped_with_their_reason():
    sched, queues, stats, _ = _setup(DropPolicy.DROP_OLDEST, capacity=5, max_age_s=0.5)
    queues["a"].put(_frame("a", 0, t=time.monotonic() - 5))
    queues["a"].put(_frame("a", 1))
    _, frames = sched.take_batch(5, timeout=0.1)
    assert [f.index for f in frames] == [1]
    assert stats["a"].dropped["stale"] == 1


def test_take_batch_times_out_empty():
    sched, _, _, _ = _setup(DropPolicy.DROP_OLDEST)
    assert sched.take_batch(4, timeout=0.05) is None


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        _setup(DropPolicy.DROP_OLDEST, capacity=0)
