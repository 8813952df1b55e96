"""Dynamic batching: concurrent requests share runs, each gets its own rows back."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from edgeloop.serving.batching import DirectRunner, DynamicBatcher
from edgeloop.serving.errors import OverloadedError
from edgeloop.testing.waits import join


def slow_double(delay: float = 0.02):
    calls: list[int] = []

    def run(x: np.ndarray, full: bool = True) -> list[np.ndarray]:
        calls.append(len(x))
        time.sleep(delay)  # long enough for the other requests to queue up behind the first batch
        return [x * 2, x.sum(axis=1, keepdims=True)]

    return run, calls


def test_concurrent_requests_are_batched_and_answered_with_their_own_rows():
    run, calls = slow_double()
    batcher = DynamicBatcher(run, max_batch_size=8, max_wait_s=0.01)

    async def main():
        xs = [np.full((1 + i % 2, 3), i, dtype=np.float32) for i in range(12)]
        outs = await asyncio.gather(*(batcher.submit(x) for x in xs))
        return xs, outs

    xs, outs = asyncio.run(main())
    for x, (doubled, summed) in zip(xs, outs, strict=True):
        np.testing.assert_array_equal(doubled, x * 2)
        np.testing.assert_array_equal(summed, x.sum(axis=1, keepdims=True))
    assert sum(calls) == sum(len(x) for x in xs)
    assert max(calls) > 1, "concurrent requests should share a run"
    assert all(c <= 8 for c in calls) and len(calls) < len(xs)


def test_a_request_larger_than_the_batch_runs_alone():
    run, calls = slow_double(0.0)
    batcher = DynamicBatcher(run, max_batch_size=4, max_wait_s=0.0)
    out = asyncio.run(batcher.submit(np.ones((10, 2), np.float32)))
    assert out[0].shape == (10, 2) and calls == [10]


def test_model_failure_fails_only_that_batch():
    state = {"fail": True}

    def run(x, full=True):
        if state.pop("fail", False):
            raise RuntimeError("boom")
        return [x]

    batcher = DynamicBatcher(run, max_batch_size=4, max_wait_s=0.0)

    async def main():
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(np.ones((1, 1), np.float32))
        return await batcher.submit(np.ones((1, 1), np.float32))

    assert asyncio.run(main())[0].shape == (1, 1)


def test_full_queue_refuses_instead_of_growing():
    gate = threading.Event()

    def run(x, full=True):
        gate.wait(5)
        return [x]

    batcher = DynamicBatcher(run, max_batch_size=2, max_wait_s=0.0, max_queue_rows=3, concurrency=1)

    async def main():
        first = asyncio.ensure_future(batcher.submit(np.ones((2, 1), np.float32)))
        await asyncio.sleep(0.05)  # first batch is running; the queue is empty again
        queued = asyncio.ensure_future(batcher.submit(np.ones((3, 1), np.float32)))
        await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError, match="queue is full"):
            await batcher.submit(np.ones((1, 1), np.float32))
        gate.set()
        await asyncio.gather(first, queued)

    asyncio.run(main())


def test_close_lets_queued_requests_finish_then_refuses_new_ones():
    run, _ = slow_double(0.01)
    batcher = DynamicBatcher(run, max_batch_size=2, max_wait_s=0.0)

    async def main():
        pending = [asyncio.ensure_future(batcher.submit(np.ones((1, 1), np.float32))) for _ in range(5)]
        await asyncio.sleep(0)
        await batcher.close()
        results = await asyncio.gather(*pending)
        with pytest.raises(OverloadedError):
            await batcher.submit(np.ones((1, 1), np.float32))
        return results

    assert len(asyncio.run(main())) == 5


def test_batches_run_concurrently_up_to_the_limit():
    active, peak, lock = [0], [0], threading.Lock()

    def run(x, full=True):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.03)
        with lock:
            active[0] -= 1
        return [x]

    batcher = DynamicBatcher(run, max_batch_size=2, max_wait_s=0.0, concurrency=2)

    async def main():
        await asyncio.gather(*(batcher.submit(np.ones((1, 1), np.float32)) for _ in range(12)))

    asyncio.run(main())
    assert peak[0] == 2


def test_direct_runner_runs_each_request_on_its_own():
    run, calls = slow_double(0.005)
    runner = DirectRunner(run, concurrency=2)

    async def main():
        return await asyncio.gather(*(runner.submit(np.full((1, 2), i, np.float32)) for i in range(6)))

    outs = asyncio.run(main())
    assert calls == [1] * 6
    assert [int(o[0][0, 0]) for o in outs] == [0, 2, 4, 6, 8, 10]


def test_a_batch_computes_every_output_only_when_one_of_its_requests_asks():
    seen: list[bool] = []

    def run(x, full=True):
        seen.append(full)
        return [x * 2, x * 3] if full else [x * 2]

    batcher = DynamicBatcher(run, max_batch_size=8, max_wait_s=0.01, concurrency=1)

    async def main(flags):
        return await asyncio.gather(*(batcher.submit(np.ones((1, 1), np.float32), f) for f in flags))

    outs = asyncio.run(main([False, False, False]))
    assert seen == [False] and all(len(o) == 1 for o in outs)
    outs = asyncio.run(main([False, True, False]))
    assert seen[-1] is True and all(len(o) == 2 for o in outs)


def test_runner_threads_take_the_next_batch_themselves():
    """Each runner thread starts its next batch without a trip through the event loop: with the
    loop blocked, a queued backlog still drains, each thread on its own session."""
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def run(x, full=True):
        with lock:
            seen[threading.current_thread().name] = seen.get(threading.current_thread().name, 0) + 1
        time.sleep(0.005)
        return [x + 1]

    batcher = DynamicBatcher(run, max_batch_size=1, max_wait_s=0.0, concurrency=2, name="m")

    async def main():
        futs = [asyncio.ensure_future(batcher.submit(np.full((1, 1), i, np.float32))) for i in range(20)]
        await asyncio.sleep(0)  # every request queued
        time.sleep(1.0)  # the loop is blocked (20 runs of 5 ms need ~0.05 s); the threads keep going
        ran_while_blocked = sum(seen.values())
        outs = await asyncio.gather(*futs)
        return ran_while_blocked, outs

    ran_while_blocked, outs = asyncio.run(main())
    assert ran_while_blocked == 20
    assert [float(o[0][0, 0]) for o in outs] == [i + 1.0 for i in range(20)]
    assert sorted(seen) == ["ort-m-0", "ort-m-1"] and all(n > 0 for n in seen.values())


def test_requests_cancelled_while_queued_are_not_run():
    gate = threading.Event()
    calls: list[int] = []

    def run(x, full=True):
        gate.wait(5)
        calls.append(len(x))
        return [x]

    batcher = DynamicBatcher(run, max_batch_size=8, max_wait_s=0.0, concurrency=1)

    async def main():
        first = asyncio.ensure_future(batcher.submit(np.ones((1, 1), np.float32)))
        await asyncio.sleep(0.05)  # running, holding the only thread
        gone = asyncio.ensure_future(batcher.submit(np.ones((3, 1), np.float32)))
        kept = asyncio.ensure_future(batcher.submit(np.ones((2, 1), np.float32)))
        await asyncio.sleep(0.01)
        gone.cancel()
        gate.set()
        return await asyncio.gather(first, kept)

    outs = asyncio.run(main())
    assert calls == [1, 2] and [len(o[0]) for o in outs] == [1, 2]


def test_runner_threads_are_pinned_one_per_cpu(monkeypatch):
    from edgeloop.serving import batching

    pinned: dict[str, set[int]] = {}

    def fake_pin(cpu):
        pinned[threading.current_thread().name] = {cpu}

    monkeypatch.setattr(batching, "pin_thread", fake_pin)

    async def use_and_close(b):
        await b.submit(np.ones((1, 1), np.float32))
        await b.close()

    batcher = DynamicBatcher(lambda x, full: [x], concurrency=2, name="p", cpus=[3, 5])
    asyncio.run(use_and_close(batcher))
    for t in batcher._threads:
        t.join(5)  # closed and drained: the threads end
    assert pinned == {"ort-p-0": {3}, "ort-p-1": {5}}
    unpinned = DynamicBatcher(lambda x, full: [x], concurrency=2, name="u")
    asyncio.run(use_and_close(unpinned))
    for t in unpinned._threads:
        t.join(5)
    assert sorted(pinned) == ["ort-p-0", "ort-p-1"]


def test_pin_thread_moves_only_the_calling_thread():
    import os

    from edgeloop.serving.batching import pin_thread

    cpus = sorted(os.sched_getaffinity(0))
    seen: list[set[int]] = []

    def body():
        pin_thread(cpus[-1])
        seen.append(os.sched_getaffinity(0))

    t = threading.Thread(target=body)
    t.start()
    join(t, 30, "the thread that pins itself")
    assert seen == [{cpus[-1]}]
    assert sorted(os.sched_getaffinity(0)) == cpus


def test_pinning_only_with_one_thread_per_usable_cpu(monkeypatch, tmp_path):
    from edgeloop.core import model_loader
    from edgeloop.serving import batching

    monkeypatch.setattr(batching.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    monkeypatch.setattr(model_loader, "cpu_quota", lambda: float("inf"))
    assert batching.per_core_cpus(4) == [0, 1, 2, 3]
    assert batching.per_core_cpus(2) == []  # fewer threads than CPUs: the OS places them
    assert batching.per_core_cpus(1) == []
    monkeypatch.setattr(model_loader, "cpu_quota", lambda: 2.0)
    assert batching.per_core_cpus(4) == []  # a container allowed 2 cores of the 4 it sees


def test_cpu_quota_reads_cgroup_v2_then_v1(tmp_path, monkeypatch):
    from edgeloop.core import model_loader
    from edgeloop.core.model_loader import available_cpus, cpu_quota

    v2, v1 = tmp_path / "cpu.max", tmp_path / "cpu.cfs_quota_us"
    v2.write_text("200000 100000\n")
    assert cpu_quota(str(v2), str(v1)) == 2.0
    v2.write_text("max 100000\n")
    assert cpu_quota(str(v2), str(v1)) == float("inf")
    v2.unlink()
    v1.write_text("150000\n")
    (tmp_path / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(str(v2), str(v1)) == 1.5
    v1.write_text("-1\n")
    assert cpu_quota(str(v2), str(v1)) == float("inf")
    # a pod limited to 1.5 CPUs on a bigger node: 2 usable cores (rounded up), never more than it sees
    monkeypatch.setattr(model_loader.os, "sched_getaffinity", lambda _pid: set(range(32)))
    monkeypatch.setattr(model_loader, "cpu_quota", lambda: 1.5)
    assert available_cpus() == 2
    monkeypatch.setattr(model_loader, "cpu_quota", lambda: 64.0)
    assert available_cpus() == 32


def test_a_failing_metrics_callback_neither_loses_answers_nor_kills_the_threads():
    def broken(_n, _s):
        raise RuntimeError("metrics backend down")

    batcher = DynamicBatcher(lambda x, full: [x * 3], concurrency=1, on_batch=broken, on_queue=broken)

    async def main():
        return await asyncio.gather(*(batcher.submit(np.full((1, 1), i, np.float32)) for i in range(6)))

    for _ in range(2):  # the same thread answers a second round
        outs = asyncio.run(main())
        assert [float(o[0][0, 0]) for o in outs] == [3.0 * i for i in range(6)]
    assert len(batcher._threads) == 1 and batcher._threads[0].is_alive()


def test_submit_after_close_is_refused_and_the_threads_end():
    batcher = DynamicBatcher(lambda x, full: [x], concurrency=2)

    async def main():
        await batcher.submit(np.ones((1, 1), np.float32))
        await batcher.close()
        with pytest.raises(OverloadedError, match="being unloaded"):
            await batcher.submit(np.ones((1, 1), np.float32))

    asyncio.run(main())
    for t in batcher._threads:
        t.join(5)
        assert not t.is_alive()
