"""Results to MQTT (QoS 1), with an on-disk outbox so no result is lost while the broker is away.

Delivery is at least once, in order per camera:

* while connected and nothing is waiting in the outbox, a result is published
  directly; paho keeps it until the broker's PUBACK and re-sends it after a
  reconnect;
* while disconnected (or while a backlog exists, or too many are in flight), a
  result is appended to the outbox, a SQLite table ordered by a sequence number;
* after a reconnect, the publisher first waits until every message paho
  re-sends has been acknowledged, then replays the outbox oldest first and
  deletes each row only when the broker has acknowledged it;
* at exit, whatever is still unacknowledged is written to the outbox, so the
  next run replays it (the outbox survives the process).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgeloop.stream.stats import SourceStats, StreamMetrics

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.sqlite3"


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

    def submit(self, source: str, topic: str, payload: bytes) -> None: ...

    def close(self, flush_timeout_s: float = 10.0) -> None: ...


class Outbox:
    """Append-only (until acknowledged) SQLite table of results; one writer thread."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)  # results may be sensitive
        self.path = directory / OUTBOX_FILE
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "source TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL)"
        )

    def add(self, rows: list[tuple[str, str, bytes]]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO outbox (source, topic, payload) VALUES (?, ?, ?)", rows)

    def after(self, seq: int, limit: int) -> list[tuple[int, str, str, bytes]]:
        return self._db.execute(
            "SELECT seq, source, topic, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        ).fetchall()

    def delete(self, seqs: list[int]) -> None:
        if seqs:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        self._db.close()


@dataclass(slots=True)
class _Msg:
    source: str
    topic: str
    payload: bytes
    seq: int | None = None  # outbox row, when the message came from the outbox


class MqttPublisher:
    """Publishes results with QoS 1 through paho-mqtt, falling back to the outbox; see the module doc."""

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
    ):
        import paho.mqtt.client as mqtt

        self.host, self.port = host, port
        self.outbox = Outbox(Path(outbox_dir))
        self._stats_for = stats_for
        self._metrics = metrics
        self._window = window
        self._queue: queue.Queue[_Msg] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._pending: dict[int, _Msg] = {}
        self._early: set[int] = set()
        self._acked: list[_Msg] = []
        self._connected = threading.Event()
        self._gate = True  # set on each (re)connect: wait for paho's re-sends to be acknowledged first
        self._closing = threading.Event()
        self._flush_deadline = float("inf")
        self._rows = self.outbox.count()  # rows in the outbox (a previous run's backlog is replayed first)
        self._unsent = self._rows  # rows not yet handed to paho
        self._cursor = 0  # highest outbox seq handed to paho
        self.replayed = 0
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
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
        if self._rows:
            log.info(
                "outbox %s holds %d results from before; they are replayed first",
                self.outbox.path,
                self._rows,
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
                "lost the MQTT broker %s:%s (%s); results go to the outbox until it is back",
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
        self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def submit(self, source: str, topic: str, payload: bytes) -> None:
        """Hand a result over; blocks only if the publisher is far behind (back-pressure, bounded memory).

        A topic no client may publish to raises :class:`ValueError` here, in the caller's thread."""
        self._queue.put(_Msg(source, check_topic(topic), payload))

    def close(self, flush_timeout_s: float = 10.0) -> None:
        """Deliver what can be delivered within the timeout; keep the rest in the outbox for the next run."""
        self._flush_deadline = time.monotonic() + flush_timeout_s
        self._closing.set()
        self._thread.join()
        self._client.disconnect()
        self._client.loop_stop()
        self.outbox.close()

    @property
    def outbox_depth(self) -> int:
        return self._rows

    # -- the publisher thread ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                self._settle_acks()
                batch = self._drain(timeout=0.02)
                for msg in batch:
                    self._route(msg)
                self._replay()
                if self._closing.is_set() and self._queue.empty():
                    done = self._unsent == 0 and not self._pending and not self._acked
                    if done or time.monotonic() > self._flush_deadline:
                        break
                    if not self._connected.is_set():
                        time.sleep(0.05)
            self._settle_acks()
            self._persist_unacknowledged()
        except Exception:  # never lose the thread silently
            log.exception("MQTT publisher failed")
            raise

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

    def _route(self, msg: _Msg) -> None:
        if self._unsent == 0 and len(self._pending) < self._window and self._open_gate():
            self._publish(msg)
        else:
            self._to_outbox([msg])

    def _publish(self, msg: _Msg) -> None:
        info = self._client.publish(msg.topic, msg.payload, qos=1)
        if info.rc not in (
            0,
            4,
        ):  # MQTT_ERR_SUCCESS, MQTT_ERR_NO_CONN (paho queues it and sends on reconnect)
            if msg.seq is None:
                self._to_outbox([msg])
            return
        with self._lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                self._acked.append(msg)
            else:
                self._pending[info.mid] = msg

    def _to_outbox(self, msgs: list[_Msg]) -> None:
        self.outbox.add([(m.source, m.topic, m.payload) for m in msgs])
        self._rows += len(msgs)
        self._unsent += len(msgs)
        for m in msgs:
            st = self._stats_for(m.source)
            if st is not None:
                st.on_outboxed()
        if self._metrics:
            self._metrics.outbox_depth.set(self._rows)

    def _replay(self) -> None:
        while self._unsent > 0 and len(self._pending) < self._window and self._open_gate():
            rows = self.outbox.after(self._cursor, min(200, self._window - len(self._pending)))
            if not rows:
                self._unsent = 0
                return
            for seq, source, topic, payload in rows:
                self._cursor = seq
                self._unsent -= 1
                self._publish(_Msg(source, topic, payload, seq))

    def _settle_acks(self) -> None:
        with self._lock:
            acked, self._acked = self._acked, []
        if not acked:
            return
        seqs = [m.seq for m in acked if m.seq is not None]
        self.outbox.delete(seqs)
        self._rows -= len(seqs)
        self.replayed += len(seqs)
        for m in acked:
            st = self._stats_for(m.source)
            if st is not None:
                st.on_published()
        if self._metrics:
            self._metrics.outbox_depth.set(self._rows)

    def _persist_unacknowledged(self) -> None:
        with self._lock:
            direct = [m for m in self._pending.values() if m.seq is None]
            self._pending.clear()
        if direct:
            log.warning(
                "%d results were not acknowledged by the broker before exit; kept in %s for the next run",
                len(direct),
                self.outbox.path,
            )
            self._to_outbox(direct)
        if self._rows:
            log.warning(
                "%d results wait in the outbox %s; they are sent on the next run",
                self._rows,
                self.outbox.path,
            )


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

    def submit(self, source: str, topic: str, payload: bytes) -> None:
        if self._keep:
            self.messages.append((topic, payload))
        st = self._stats_for(source)
        if st is not None:
            st.on_published()

    def close(self, flush_timeout_s: float = 10.0) -> None:
        pass
