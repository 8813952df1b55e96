"""The publisher and its outbox under failure, without a broker: a full outbox, a failing publisher thread,
an unwritable disk, a stuck queue, and the account of a run that was killed."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import pytest

from edgeloop.stream.ledger import RunLedger
from edgeloop.stream.publisher import MqttPublisher, Outbox
from edgeloop.stream.stats import SourceStats, StreamMetrics
from edgeloop.testing.stack import closed_port
from edgeloop.testing.waits import wait_until

TOPIC = "edgeloop/results/line1/cam"


def _publisher(outbox: Path, **kw) -> tuple[MqttPublisher, SourceStats]:
    """A publisher whose broker is down (nothing listens on its port): results can only wait."""
    metrics = StreamMetrics()
    stats = SourceStats("cam", metrics)
    pub = MqttPublisher(
        "127.0.0.1", closed_port(), outbox, stats_for={"cam": stats}.get, metrics=metrics, **kw
    )
    return pub, stats


def _metric(pub: MqttPublisher, name: str, **labels) -> float:
    value = pub._metrics.registry.get_sample_value(name, labels)  # type: ignore[union-attr]
    return 0.0 if value is None else value


def test_a_full_outbox_drops_new_results_counts_them_and_says_so_once(tmp_path, caplog):
    pub, stats = _publisher(tmp_path / "outbox", outbox_max=5)
    pub.start()
    with caplog.at_level(logging.ERROR, logger="edgeloop.stream.publisher"):
        for i in range(8):
            pub.submit("cam", TOPIC, b'{"n": %d}' % i)
        pub.close(flush_timeout_s=0.2)
    assert pub.outbox_depth == 5
    assert stats.results_dropped == {"outbox_full": 3}
    assert _metric(pub, "edgeloop_stream_results_dropped_total", source="cam", reason="outbox_full") == 3
    assert _metric(pub, "edgeloop_stream_outbox_capacity") == 5
    full = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(full) == 1 and "--outbox-max" in full[0].getMessage()
    # the oldest five are kept, in order, for the next run
    box = Outbox(tmp_path / "outbox")
    assert [p for _, _, _, p in box.after(0, 10)] == [b'{"n": %d}' % i for i in range(5)]


def test_a_failing_publisher_thread_is_restarted_and_loses_nothing(tmp_path, monkeypatch):
    pub, stats = _publisher(tmp_path / "outbox")
    real_add = pub.outbox.add
    failures = iter([sqlite3.OperationalError("disk I/O error")])

    def flaky_add(rows, run_id):
        err = next(failures, None)
        if err is not None:
            raise err
        return real_add(rows, run_id)

    monkeypatch.setattr(pub.outbox, "add", flaky_add)
    pub.start()
    pub.submit("cam", TOPIC, b'{"n": 1}')
    wait_until(
        lambda: pub.outbox_depth >= 1,
        30,
        f"the restarted publisher thread to keep the first result in the outbox {tmp_path / 'outbox'}",
        step_s=0.02,
    )
    pub.submit("cam", TOPIC, b'{"n": 2}')  # the restarted thread takes new results too
    pub.close(flush_timeout_s=0.3)
    assert pub.restarts == 1
    assert _metric(pub, "edgeloop_stream_publisher_restarts_total") == 1
    assert pub.outbox_depth == 2 and not stats.results_dropped


def test_submit_does_not_block_when_the_publisher_is_stuck(tmp_path):
    pub, stats = _publisher(tmp_path / "outbox", queue_size=1, put_timeout_s=0.05)
    # never started: nothing drains the queue, as with a publisher thread stuck in a call
    t0 = time.monotonic()
    for i in range(20):
        pub.submit("cam", TOPIC, b'{"n": %d}' % i)
    waited = time.monotonic() - t0
    assert waited < 5  # one put timeout, then straight to the outbox (not 20 timeouts, not forever)
    assert pub.outbox_depth == 19  # the first waits in the queue, every other one is on disk
    assert stats.outboxed == 19
    pub.close(flush_timeout_s=0.1)


def test_an_unwritable_outbox_drops_and_counts_instead_of_raising_in_the_workers(tmp_path, monkeypatch):
    pub, stats = _publisher(tmp_path / "outbox", queue_size=1, put_timeout_s=0.01)

    def no_space(rows, run_id):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(pub.outbox, "add", no_space)
    pub.submit("cam", TOPIC, b"{}")  # queued
    pub.submit("cam", TOPIC, b"{}")  # queue full -> outbox -> fails: counted, no exception
    assert stats.results_dropped == {"outbox_error": 1}
    pub._queue.get_nowait()


def test_the_next_run_counts_what_a_killed_run_had_only_in_memory(tmp_path):
    outbox_dir = tmp_path / "outbox"
    runs = outbox_dir / "runs"
    killed = RunLedger(runs, "aaaaaaaaaaaaaaaa", ["cam", "door"])
    killed.slots["cam"].set(10, 2)  # 10 frames in, 2 dropped with a reason
    killed.slots["door"].set(4, 0)
    box = Outbox(outbox_dir)
    box.add([("cam", TOPIC, b"{}")] * 3, "aaaaaaaaaaaaaaaa")  # 3 results made durable before the kill
    box.close()
    killed.close(remove=False)  # what SIGKILL leaves: the file, unlocked

    pub, _ = _publisher(outbox_dir)
    stats = {"cam": SourceStats("cam", pub._metrics)}  # type: ignore[arg-type]
    lost = {e.source: e for e in pub.begin_run("bbbbbbbbbbbbbbbb", stats)}
    assert (lost["cam"].lost, lost["cam"].results_durable) == (5, 3)  # 10 - 2 dropped - 3 kept
    assert lost["door"].lost == 4
    assert _metric(pub, "edgeloop_stream_frames_lost_total", source="cam") == 5
    assert pub.outbox_depth == 3  # the kept results are sent by this run
    pub.close(flush_timeout_s=0.1)
    # counted once: a third run finds nothing new, the history keeps the account
    pub2, _ = _publisher(outbox_dir)
    assert pub2.begin_run("cccccccccccccccc", {}) == []
    assert [(e.run_id, e.source, e.lost) for e in pub2.outbox.lost_history()] == [
        ("aaaaaaaaaaaaaaaa", "cam", 5),
        ("aaaaaaaaaaaaaaaa", "door", 4),
    ]
    pub2.close(flush_timeout_s=0.1)
    assert not list(runs.glob("*.ledger"))  # clean stops leave no ledger behind


def test_a_live_run_on_the_same_outbox_is_not_counted_as_killed(tmp_path):
    live = RunLedger(tmp_path / "outbox" / "runs", "aaaaaaaaaaaaaaaa", ["cam"])
    live.slots["cam"].set(7, 0)
    pub, _ = _publisher(tmp_path / "outbox")
    assert pub.begin_run("bbbbbbbbbbbbbbbb", {}) == []  # its lock is held: it is running
    pub.close(flush_timeout_s=0.1)
    live.close(remove=True)


@pytest.mark.parametrize("frames_in, kept", [(30, 30), (30, 12)])
def test_the_ledger_follows_the_source_counters(tmp_path, frames_in, kept):
    metrics = StreamMetrics()
    stats = SourceStats("cam", metrics)
    ledger = RunLedger(tmp_path, "aaaaaaaaaaaaaaaa", ["cam"])
    stats.attach_ledger(ledger.slots["cam"])
    for _ in range(frames_in):
        stats.on_decoded(kept=True)
    from edgeloop.stream.stats import DropReason

    stats.on_dropped(DropReason.QUEUE_FULL, frames_in - kept)
    ledger.close(remove=False)
    from edgeloop.stream.ledger import read_abandoned

    ((_, header, counts),) = read_abandoned(tmp_path)
    header["_fh"].close()
    assert counts == {"cam": (frames_in, frames_in - kept)}
