"""Results to MQTT (QoS 1) through an on-disk outbox, so no result is lost to a broker outage or a crash.

Delivery is at least once, in order per camera (results carry a ``message_id`` to
deduplicate on):

* every result is first written to the outbox, a SQLite table ordered by a sequence
  number (``synchronous=FULL``: the commit is on disk), in one transaction per batch
  that also counts the results per run and source (see :mod:`edgeloop.stream.ledger`);
* then, while connected and nothing older waits, it is published at once; paho keeps
  it until the broker's PUBACK and re-sends it after a reconnect. The row is deleted
  only when the broker has acknowledged it;
* while disconnected (or while a backlog exists, or too many are in flight), rows wait;
  after a reconnect the publisher first waits until every message paho re-sends has been
  acknowledged, then replays the outbox oldest first;
* the outbox survives the process: the next run replays what is left.

The publisher thread is supervised: an error restarts it (the batch it held is retried,
never lost); ``submit`` waits at most ``put_timeout_s`` for room in its queue, then writes
to the outbox itself, so a stuck publisher never blocks the inference workers. The outbox
holds at most ``outbox_max`` results; beyond that new results are dropped and counted
(``edgeloop_stream_results_dropped{reason="outbox_full"}``) with one clear log line.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgeloop.stream.ledger import LostFrames, RunLedger, read_abandoned
from edgeloop.stream.stats import ResultDropReason, SourceStats, StreamMetrics

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.sqlite3"
RUNS_DIR = "runs"
DEFAULT_OUTBOX_MAX = 500_000  # ~200 MB of results; hours of a busy line with the broker away


@dataclass(frozen=True)
class MqttTls:
    """TLS to the broker: ``ca`` (PEM) verifies it (None: the system's CAs); ``cert``/``key`` are a
    client certificate for a broker that asks for one."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


def check_topic(topic: str) -> str:
    """``topic`` if a client may publish to it; else a :class:`ValueError` that says why."""
    if not topic or len(topic.encode()) > 65535:
        raise ValueError("an MQTT topic must be 1 to 65535 bytes")
    if "+" in topic or "#" in topic or "\0" in topic:
        raise ValueError(
            f"MQTT topic {topic!r} holds a wildcard ('+', '#') or NUL: publishing needs a plain topic"
        )
    return topic


class ResultSink(Protocol):
    def start(self) -> None: ...

    def begin_run(self, run_id: str, stats: Mapping[str, SourceStats]) -> list[LostFrames]:
        """Count what killed earlier runs lost; keep this run's frame counters where a crash leaves them."""
        ...

    def submit(self, source: str, topic: str, payload: bytes) -> None: ...

    def close(self, flush_timeout_s: float = 10.0) -> None: ...


class Outbox:
    """SQLite table of results not yet acknowledged by the broker, plus per-run counts; thread-safe."""

    def __init__(self, directory: Path, max_rows: int = DEFAULT_OUTBOX_MAX):
        if max_rows < 1:
            raise ValueError("the outbox must hold at least one result")
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)  # results may be sensitive
        self.path = directory / OUTBOX_FILE
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed result is on disk, not only in the cache
        self._db.executescript(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "source TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL);"
            "CREATE TABLE IF NOT EXISTS run_results (run_id TEXT NOT NULL, source TEXT NOT NULL, "
            "durable INTEGER NOT NULL DEFAULT 0, dropped INTEGER NOT NULL DEFAULT 0, "
            "PRIMARY KEY (run_id, source));"
            "CREATE TABLE IF NOT EXISTS lost (run_id TEXT NOT NULL, source TEXT NOT NULL, "
            "frames_in INTEGER NOT NULL, frames_dropped INTEGER NOT NULL, results_durable INTEGER NOT NULL, "
            "results_dropped INTEGER NOT NULL, lost INTEGER NOT NULL, started_at REAL NOT NULL, "
            "counted_at REAL NOT NULL, PRIMARY KEY (run_id, source));"
        )
        self.rows = self._count()

    def add(self, rows: list[tuple[str, str, bytes]], run_id: str | None) -> tuple[list[int], int]:
        """Insert ``rows`` (source, topic, payload) in order while the cap allows, in one durable
        transaction that also counts them for ``run_id``. Returns (seqs of the rows inserted, how many
        of the last rows did not fit and were dropped)."""
        with self._lock:
            room = max(0, self.max_rows - self.rows)
            keep, over = rows[:room], rows[room:]
            per_source: Counter[tuple[str, int]] = Counter()
            for source, _, _ in keep:
                per_source[(source, 0)] += 1
            for source, _, _ in over:
                per_source[(source, 1)] += 1
            seqs = []
            with self._db:
                self._db.execute("BEGIN")
                for source, topic, payload in keep:
                    cur = self._db.execute(
                        "INSERT INTO outbox (source, topic, payload) VALUES (?, ?, ?)",
                        (source, topic, payload),
                    )
                    seqs.append(int(cur.lastrowid or 0))
                if run_id is not None:
                    self._db.executemany(
                        "INSERT INTO run_results (run_id, source, durable, dropped) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (run_id, source) DO UPDATE SET durable = durable + excluded.durable, "
                        "dropped = dropped + excluded.dropped",
                        [
                            (run_id, src, n if kind == 0 else 0, n if kind == 1 else 0)
                            for (src, kind), n in per_source.items()
                        ],
                    )
            self.rows += len(keep)
            return seqs, len(over)

    def after(self, seq: int, limit: int) -> list[tuple[int, str, str, bytes]]:
        with self._lock:
            return self._db.execute(
                "SELECT seq, source, topic, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()

    def delete(self, seqs: list[int]) -> int:
        """Forget acknowledged rows. Not synced: a delete lost to a power cut re-sends a duplicate (same
        message id), never loses a result."""
        if not seqs:
            return 0
        with self._lock, self._db:
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN")
                cur = self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
                self._db.execute("COMMIT")
            finally:
                self._db.execute("PRAGMA synchronous=FULL")
            self.rows -= cur.rowcount
            return int(cur.rowcount)

    def _count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def count(self) -> int:
        with self._lock:
            return self._count()

    def count_lost(self, runs_dir: Path) -> list[LostFrames]:
        """Count, once, what each killed run (a ledger file left in ``runs_dir``) had only in memory."""
        found = []
        for path, header, counts in read_abandoned(runs_dir):
            run_id, now = header["run_id"], time.time()
            try:
                with self._lock, self._db:
                    self._db.execute("BEGIN")
                    results = {
                        src: (durable, dropped)
                        for src, durable, dropped in self._db.execute(
                            "SELECT source, durable, dropped FROM run_results WHERE run_id = ?", (run_id,)
                        )
                    }
                    for source, (frames_in, frames_dropped) in counts.items():
                        durable, res_dropped = results.get(source, (0, 0))
                        lost = max(0, frames_in - frames_dropped - durable - res_dropped)
                        entry = LostFrames(
                            run_id,
                            source,
                            frames_in,
                            frames_dropped,
                            durable,
                            res_dropped,
                            lost,
                            float(header.get("started_at", 0.0)),
                        )
                        self._db.execute(
                            "INSERT OR IGNORE INTO lost VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (*entry.as_dict().values(), now),
                        )
                        found.append(entry)
                    self._db.execute("DELETE FROM run_results WHERE run_id = ?", (run_id,))
                path.unlink(missing_ok=True)
            finally:
                header["_fh"].close()
        return found

    def lost_history(self) -> list[LostFrames]:
        """Every killed run's account, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT run_id, source, frames_in, frames_dropped, results_durable, results_dropped, lost, "
                "started_at FROM lost ORDER BY counted_at, run_id, source"
            ).fetchall()
        return [LostFrames(*r) for r in rows]

    def end_run(self, run_id: str) -> None:
        """A clean stop: the summary accounts for every frame, the per-run counts are not needed."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM run_results WHERE run_id = ?", (run_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass(slots=True)
class _Msg:
    source: str
    topic: str
    payload: bytes
    seq: int | None = None  # outbox row, when the message came from the outbox


class MqttPublisher:
    """Publishes results with QoS 1 through paho-mqtt and the outbox; see the module doc."""

    def __init__(
        self,
        host: str,
        port: int,
        outbox_dir: Path,
        *,
        stats_for: Callable[[str], SourceStats | None] = lambda name: None,
        metrics: StreamMetrics | None = None,
        client_id: str | None = None,
        window: int = 500,
        queue_size: int = 10_000,
        keepalive_s: int = 10,
        username: str | None = None,
        password: str | None = None,
        tls: MqttTls | None = None,
        outbox_max: int = DEFAULT_OUTBOX_MAX,
        put_timeout_s: float = 1.0,
    ):
        import paho.mqtt.client as mqtt

        self.host, self.port = host, port
        self.outbox = Outbox(Path(outbox_dir), outbox_max)
        self._runs_dir = Path(outbox_dir) / RUNS_DIR
        self._stats_for = stats_for
        self._metrics = metrics
        self._window = window
        self._put_timeout_s = put_timeout_s
        self._queue: queue.Queue[_Msg] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()  # paho's callbacks vs. the publisher thread
        self._store_lock = threading.Lock()  # outbox writes and the replay cursor: publisher vs. submit
        self._pending: dict[int, _Msg] = {}
        self._early: set[int] = set()
        self._acked: list[_Msg] = []
        self._connected = threading.Event()
        self._gate = True  # set on each (re)connect: wait for paho's re-sends to be acknowledged first
        self._closing = threading.Event()
        self._flush_deadline = float("inf")
        self._unsent = self.outbox.rows  # rows not yet handed to paho (a previous run's backlog goes first)
        self._cursor = 0  # highest outbox seq handed to paho
        self._batch: list[_Msg] = []  # drained from the queue, not yet in the outbox (kept across a restart)
        self._full_since: float | None = None
        self._dropped_while_full = 0
        self._degraded_until = 0.0
        self._failures = 0
        self._last_ledger_flush = 0.0
        self.restarts = 0
        self.run_id: str | None = None
        self.lost: list[LostFrames] = []
        self._ledger: RunLedger | None = None
        self._started = False
        self._thread = self._new_thread()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edgeloop-stream-{uuid.uuid4().hex[:12]}",
        )
        if username:
            self._client.username_pw_set(username, password)
        if tls is not None:
            self._client.tls_set(
                ca_certs=str(tls.ca) if tls.ca else None,
                certfile=str(tls.cert) if tls.cert else None,
                keyfile=str(tls.key) if tls.key else None,
            )
        self.username = username
        self.refused: str | None = None  # why the broker refused the last connection, if it did
        self._client.max_inflight_messages_set(min(window, 1000))
        self._client.reconnect_delay_set(min_delay=1, max_delay=5)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._keepalive = keepalive_s
        if metrics:
            metrics.outbox_capacity.set(outbox_max)
            metrics.outbox_depth.set(self.outbox.rows)
        if self.outbox.rows:
            log.info(
                "outbox %s holds %d results from before; they are replayed first",
                self.outbox.path,
                self.outbox.rows,
            )

    # -- paho callbacks (paho's network thread) ---------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self.refused = str(reason_code)
            hint = (
                " (check the MQTT username/password: --mqtt-username/--mqtt-password-file or settings mqtt.*)"
                if "authori" in self.refused.lower() or "password" in self.refused.lower()
                else ""
            )
            log.warning(
                "MQTT broker %s:%s refused the connection as %s: %s%s",
                self.host,
                self.port,
                self.username or "anonymous",
                reason_code,
                hint,
            )
            return
        self.refused = None
        log.info("connected to MQTT broker %s:%s", self.host, self.port)
        with self._lock:
            self._gate = True
        self._connected.set()
        if self._metrics:
            self._metrics.mqtt_connected.set(1)

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if self._connected.is_set() and not self._closing.is_set():
            log.warning(
                "lost the MQTT broker %s:%s (%s); results wait in the outbox until it is back",
                self.host,
                self.port,
                reason_code,
            )
        self._connected.clear()
        if self._metrics:
            self._metrics.mqtt_connected.set(0)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._lock:
            msg = self._pending.pop(mid, None)
            if msg is None:
                self._early.add(mid)  # PUBACK before publish() returned in our thread
            else:
                self._acked.append(msg)

    # -- public --------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        self._client.connect_async(self.host, self.port, keepalive=self._keepalive)
        self._client.loop_start()
        self._started = True
        self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def begin_run(self, run_id: str, stats: Mapping[str, SourceStats]) -> list[LostFrames]:
        """Count what killed runs on this outbox lost (logged, exported, returned), then keep this run's
        frame counters in its own ledger file (see :mod:`edgeloop.stream.ledger`)."""
        self.lost = self.outbox.count_lost(self._runs_dir)
        for entry in self.lost:
            if self._metrics:
                self._metrics.frames_lost.labels(entry.source).inc(entry.lost)
            log.warning(
                "run %s ended without a clean stop (killed?): source %s lost %d frames that were only in "
                "memory (%d in, %d dropped, %d results kept in the outbox, %d results dropped)",
                entry.run_id,
                entry.source,
                entry.lost,
                entry.frames_in,
                entry.frames_dropped,
                entry.results_durable,
                entry.results_dropped,
            )
        self._ledger = RunLedger(self._runs_dir, run_id, list(stats))
        for name, st in stats.items():
            st.attach_ledger(self._ledger.slots[name])
        self.run_id = run_id
        return self.lost

    def submit(self, source: str, topic: str, payload: bytes) -> None:
        """Hand a result over. Waits at most ``put_timeout_s`` for room in the queue, then writes the
        result to the outbox in this thread; never blocks for longer, never raises for a full disk (the
        result is then dropped and counted).

        A topic no client may publish to raises :class:`ValueError` here, in the caller's thread."""
        msg = _Msg(source, check_topic(topic), payload)
        if self._started and not self._thread.is_alive() and not self._closing.is_set():
            log.error("the MQTT publisher thread had stopped; starting it again")
            self._thread = self._new_thread()
            self._thread.start()
        timeout = 0.0 if time.monotonic() < self._degraded_until else self._put_timeout_s
        try:
            self._queue.put(msg, timeout=timeout) if timeout else self._queue.put_nowait(msg)
            return
        except queue.Full:
            pass
        if self._degraded_until < time.monotonic():
            log.warning(
                "the MQTT publisher is %d results behind; results go straight to the outbox for now "
                "(order across cameras may mix while this lasts)",
                self._queue.qsize(),
            )
        self._degraded_until = time.monotonic() + 5.0
        try:
            with self._store_lock:
                self._store([msg])
        except (sqlite3.Error, OSError) as e:
            self._drop([msg], ResultDropReason.OUTBOX_ERROR, e)

    def close(self, flush_timeout_s: float = 10.0) -> None:
        """Deliver what can be delivered within the timeout; the rest stays in the outbox for the next run."""
        self._flush_deadline = time.monotonic() + flush_timeout_s
        self._closing.set()
        if self._started:
            self._thread.join()
        self._client.disconnect()
        self._client.loop_stop()
        if self.outbox.rows:
            log.warning(
                "%d results wait in the outbox %s; they are sent on the next run",
                self.outbox.rows,
                self.outbox.path,
            )
        if self._ledger is not None and self.run_id is not None:
            self.outbox.end_run(self.run_id)
            self._ledger.close(remove=True)
        self.outbox.close()

    @property
    def outbox_depth(self) -> int:
        return self.outbox.rows

    # -- the publisher thread (supervised) ----------------------------------------------------------
    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)

    def _run(self) -> None:
        while True:
            try:
                self._loop()
                return
            except Exception as e:
                self._failures += 1
                self.restarts += 1
                if self._metrics:
                    self._metrics.publisher_restarts.inc()
                log.exception(
                    "MQTT publisher failed (%d in a row); restarting it, its results are kept", self._failures
                )
                if self._closing.is_set() and time.monotonic() > self._flush_deadline:
                    self._give_up(e)
                    return
                self._closing.wait(min(5.0, 0.1 * 2 ** min(self._failures, 6)))

    def _loop(self) -> None:
        while True:
            self._settle_acks()
            if not self._batch:
                self._batch = self._drain(timeout=0.02)
            if self._batch:
                with self._store_lock:
                    self._store(self._batch)
                self._batch = []
            with self._store_lock:
                self._replay()
            self._failures = 0
            if self._ledger is not None and time.monotonic() - self._last_ledger_flush > 1.0:
                self._ledger.flush()  # counters to disk too (a power cut), not only to the page cache
                self._last_ledger_flush = time.monotonic()
            if self._closing.is_set() and self._queue.empty():
                done = self._unsent == 0 and not self._pending and not self._acked
                if done or time.monotonic() > self._flush_deadline:
                    self._settle_acks()
                    return
                if not self._connected.is_set():
                    time.sleep(0.05)

    def _give_up(self, error: Exception) -> None:
        """Closing, past the deadline, and the outbox still fails: count what is left as dropped."""
        left = self._batch
        self._batch = []
        while True:
            try:
                left.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self._drop(left, ResultDropReason.OUTBOX_ERROR, error)

    def _drain(self, timeout: float) -> list[_Msg]:
        out: list[_Msg] = []
        try:
            out.append(self._queue.get(timeout=timeout))
            while len(out) < 1000:
                out.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        return out

    def _open_gate(self) -> bool:
        """True when new messages may go to paho: connected, and paho's re-sends are all acknowledged."""
        if not self._connected.is_set():
            return False
        with self._lock:
            if self._gate and not self._pending:
                self._gate = False
            return not self._gate

    def _store(self, msgs: list[_Msg]) -> None:
        """Make ``msgs`` durable in the outbox, publish them at once if nothing older waits (else they
        wait their turn), count those that did not fit. Call with ``_store_lock`` held."""
        seqs, n_over = self.outbox.add([(m.source, m.topic, m.payload) for m in msgs], self.run_id)
        kept = msgs[: len(seqs)]
        for seq, m in zip(seqs, kept, strict=True):
            m.seq = seq
        if n_over:
            self._drop(msgs[len(seqs) :], ResultDropReason.OUTBOX_FULL)
        elif self._full_since is not None and self.outbox.rows < self.outbox.max_rows:
            log.warning(
                "outbox has room again after %.0f s; %d results were dropped while it was full",
                time.monotonic() - self._full_since,
                self._dropped_while_full,
            )
            self._full_since, self._dropped_while_full = None, 0
        if self._metrics:
            self._metrics.outbox_depth.set(self.outbox.rows)
        direct = self._unsent == 0 and bool(kept) and kept[0].seq == self._cursor + 1
        self._unsent += len(kept)
        if direct:  # nothing older waits: send from memory, no need to read the rows back
            for m in kept:
                if len(self._pending) >= self._window or not self._open_gate() or not self._publish(m):
                    break
        for m in kept:
            if m.seq is not None and m.seq > self._cursor:
                st = self._stats_for(m.source)
                if st is not None:
                    st.on_outboxed()

    def _drop(self, msgs: list[_Msg], reason: ResultDropReason, error: Exception | None = None) -> None:
        if not msgs:
            return
        per_source = Counter(m.source for m in msgs)
        for source, n in per_source.items():
            st = self._stats_for(source)
            if st is not None:
                st.on_result_dropped(reason, n)
        if reason == ResultDropReason.OUTBOX_FULL:
            if self._full_since is None:
                self._full_since = time.monotonic()
                log.error(
                    "outbox %s is full (%d results, the --outbox-max cap): new results are dropped and "
                    'counted (edgeloop_stream_results_dropped{reason="outbox_full"}) until the broker '
                    "%s:%s takes some; fix the broker connection or raise --outbox-max",
                    self.outbox.path,
                    self.outbox.max_rows,
                    self.host,
                    self.port,
                )
            self._dropped_while_full += len(msgs)
        else:
            log.error(
                "could not write %d results to the outbox %s (%s); they are dropped and counted "
                '(edgeloop_stream_results_dropped{reason="outbox_error"}): free disk space or fix its '
                "permissions",
                len(msgs),
                self.outbox.path,
                error,
            )

    def _publish(self, msg: _Msg) -> bool:
        """Hand an outbox row to paho; False (and the cursor stays before it) if paho refused it."""
        assert msg.seq is not None
        info = self._client.publish(msg.topic, msg.payload, qos=1)
        if info.rc not in (
            0,
            4,
        ):  # MQTT_ERR_SUCCESS, MQTT_ERR_NO_CONN (paho queues it and sends on reconnect)
            return False
        self._cursor = msg.seq
        self._unsent -= 1
        with self._lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                self._acked.append(msg)
            else:
                self._pending[info.mid] = msg
        return True

    def _replay(self) -> None:
        """Hand waiting rows to paho, oldest first. Call with ``_store_lock`` held."""
        while self._unsent > 0 and len(self._pending) < self._window and self._open_gate():
            rows = self.outbox.after(self._cursor, min(200, self._window - len(self._pending)))
            if not rows:
                self._unsent = 0
                return
            for seq, source, topic, payload in rows:
                if not self._publish(_Msg(source, topic, payload, seq)):
                    return

    def _settle_acks(self) -> None:
        with self._lock:
            acked, self._acked = self._acked, []
        if not acked:
            return
        self.outbox.delete([m.seq for m in acked if m.seq is not None])
        for source, n in Counter(m.source for m in acked).items():
            st = self._stats_for(source)
            if st is not None:
                st.on_published(n)
        if self._metrics:
            self._metrics.outbox_depth.set(self.outbox.rows)


class CountingSink:
    """A sink that only counts (``--no-mqtt``, benchmarks): every result counts as published."""

    def __init__(
        self, stats_for: Callable[[str], SourceStats | None] = lambda name: None, keep: bool = False
    ):
        self._stats_for = stats_for
        self.messages: list[tuple[str, bytes]] = []
        self._keep = keep

    def start(self) -> None:
        pass

    def begin_run(self, run_id: str, stats: Mapping[str, SourceStats]) -> list[LostFrames]:
        return []

    def submit(self, source: str, topic: str, payload: bytes) -> None:
        if self._keep:
            self.messages.append((topic, payload))
        st = self._stats_for(source)
        if st is not None:
            st.on_published()

    def close(self, flush_timeout_s: float = 10.0) -> None:
        pass
