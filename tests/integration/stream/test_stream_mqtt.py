"""The stream processor against a real Mosquitto: ordered delivery, counted overload, broker restarts,
dying sources, and the real model server over gRPC."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest

from edgeloop.stream.predictors import OnnxPredictor
from edgeloop.stream.processor import StreamConfig, StreamProcessor
from edgeloop.stream.publisher import MqttPublisher
from edgeloop.stream.queues import DropPolicy
from edgeloop.stream.result import result_schema
from edgeloop.stream.sources import ReaderConfig, SourceSpec
from edgeloop.testing.waits import wait_until


class SlowPredictor:
    def __init__(self, inner, delay_s: float):
        self.inner, self.delay_s = inner, delay_s
        self.model_name, self.model_version = inner.model_name, inner.model_version
        self.labels, self.preprocess = inner.labels, inner.preprocess

    def predict(self, frames):
        time.sleep(self.delay_s)
        return self.inner.predict(frames)

    def close(self):
        self.inner.close()


def _processor(sources, predictor, broker, outbox: Path, **cfg) -> StreamProcessor:
    reader = ReaderConfig(**cfg.pop("reader", {}))
    proc = StreamProcessor(
        [SourceSpec.parse(s) for s in sources], predictor, None, StreamConfig(reader=reader, **cfg)
    )
    proc.sink = MqttPublisher(
        "127.0.0.1", broker.port, outbox, stats_for=proc.stats_for, metrics=proc.metrics
    )
    proc.sink.start()
    return proc


def test_every_frame_arrives_on_mqtt_in_order(broker, subscribe, tiny_model, videos, tmp_path):
    sub = subscribe("127.0.0.1", broker.port, "edgeloop/results/line7/#")
    proc = _processor(
        [f"cam-a={videos['short']}", f"cam-b={videos['long']}"],
        OnnxPredictor(tiny_model),
        broker,
        tmp_path / "outbox",
        line="line7",
        drop_policy=DropPolicy.BLOCK,
    )
    assert proc.sink.wait_connected(10), f"no connection to the broker at 127.0.0.1:{broker.port} in 10 s"
    summary = proc.run(duration_s=30)
    assert sub.wait_for(lambda s: sum(len(v) for v in s.by_camera().values()) >= 90, what="90 results")
    got = sub.by_camera()
    assert [m["frame_index"] for m in got["cam-a"]] == list(range(30))
    assert [m["frame_index"] for m in got["cam-b"]] == list(range(60))
    for topic, msg in sub.messages:
        jsonschema.validate(msg, result_schema())
        assert topic == f"edgeloop/results/line7/{msg['camera']}"
    for s in summary.sources:
        assert s["results_published"] == s["frames_processed"] == s["frames_in"]
        assert s["results_outboxed"] == 0
    assert summary.outbox_depth == 0


def test_overload_drops_are_counted_and_queues_stay_bounded(broker, subscribe, tiny_model, videos, tmp_path):
    sub = subscribe("127.0.0.1", broker.port)
    slow = SlowPredictor(OnnxPredictor(tiny_model), delay_s=0.03)
    sources = [f"cam{i}={videos['long']}" for i in range(4)]
    proc = _processor(
        sources, slow, broker, tmp_path / "outbox", queue_size=4, batch_size=2, reader={"realtime": False}
    )
    summary = proc.run(duration_s=30)
    processed = sum(s["frames_processed"] for s in summary.sources)
    assert sub.wait_for(lambda s: len(s.messages) >= processed, what=f"{processed} results")
    for s in summary.sources:
        assert s["queue_high_water"] <= 4 == s["queue_capacity"]
        assert s["frames_in"] == 60
        assert s["dropped_total"] == s["frames_in"] - s["frames_processed"] > 0
        assert s["frames_dropped"] == {"queue_full": s["dropped_total"]}
        assert s["results_published"] == s["frames_processed"]
    got = sub.by_camera()
    assert sum(len(v) for v in got.values()) == processed
    for msgs in got.values():
        idx = [m["frame_index"] for m in msgs]
        assert idx == sorted(idx)


def test_broker_restart_loses_no_result(broker, subscribe, tiny_model, videos, tmp_path):
    sub = subscribe("127.0.0.1", broker.port)
    proc = _processor(
        [f"cam={videos['long']}"],
        OnnxPredictor(tiny_model),
        broker,
        tmp_path / "outbox",
        drop_policy=DropPolicy.BLOCK,
    )
    assert proc.sink.wait_connected(10), f"no connection to the broker at 127.0.0.1:{broker.port} in 10 s"
    proc.start()
    stats = proc.stats["cam"]
    wait_until(
        lambda: stats.published >= 10, 30, f"10 results published to 127.0.0.1:{broker.port}", step_s=0.02
    )
    broker.stop()  # mid-run: the 4 s clip is still being read
    down_at = stats.processed
    time.sleep(1.2)
    assert not proc.sink.connected
    broker.start()
    wait_until(proc.sources_done, 120, f"the source cam={videos['long']} to be read to its end")
    summary = proc.stop()
    s = summary.sources[0]
    assert s["frames_processed"] == 60
    assert s["results_outboxed"] > 0, "results produced while the broker was down must go to the outbox"
    assert s["results_published"] == 60
    assert summary.outbox_depth == 0
    assert stats.processed > down_at
    assert sub.wait_for(lambda x: len(x.unique_frames("cam")) >= 60, timeout=20, what="60 frames of cam")
    # at least once, in order: after removing QoS 1 duplicates every frame is there, in frame order
    assert sub.unique_frames("cam") == list(range(60))


class _LiveTs(BaseHTTPRequestHandler):
    """Serves an MPEG-TS at about real time; the first connection dies half way through."""

    data: bytes = b""
    seconds: float = 4.0
    requests = 0

    def do_GET(self) -> None:  # noqa: N802
        cls = type(self)
        cls.requests += 1
        cut = len(cls.data) // 2 if cls.requests == 1 else len(cls.data)
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.end_headers()
        chunk = 188 * 40
        pause = cls.seconds / (len(cls.data) / chunk)
        try:
            for off in range(0, cut, chunk):
                self.wfile.write(cls.data[off : min(off + chunk, cut)])
                self.wfile.flush()
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            return
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


def test_a_dying_source_is_reconnected_while_others_continue(broker, subscribe, tiny_model, videos, tmp_path):
    _LiveTs.data, _LiveTs.requests = videos["live"].read_bytes(), 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LiveTs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/live.ts"
    sub = subscribe("127.0.0.1", broker.port)
    proc = _processor(
        [f"live={url}", f"file={videos['long']}"],
        OnnxPredictor(tiny_model),
        broker,
        tmp_path / "outbox",
        reader={"reconnect_initial_s": 0.2},
    )
    try:
        proc.start()
        live = proc.stats["live"]
        # the live source dies after ~2 s, comes back, and delivers frames again
        wait_until(
            lambda: live.reconnects >= 1 and live.processed >= 45 and proc.readers[1].is_alive() is False,
            60,
            lambda: f"{url} to reconnect and give 45 frames (reconnects {live.reconnects}, frames "
            f"{live.processed}) and {videos['long']} to end",
            step_s=0.1,
        )
    finally:
        summary = proc.stop()
        server.shutdown()
    s = {x["source"]: x for x in summary.sources}
    assert s["live"]["reconnects"] >= 1 and _LiveTs.requests >= 2
    assert s["live"]["errors"].get("ended", 0) + s["live"]["errors"].get("stream_error", 0) >= 1
    assert s["live"]["frames_processed"] >= 45  # more than the first (half) connection could give
    assert s["file"]["state"] == "finished" and s["file"]["frames_processed"] == 60  # not disturbed
    assert sub.wait_for(lambda x: len(x.by_camera().get("file", [])) >= 60, what="60 results of file")
    live_idx = [m["frame_index"] for m in sub.by_camera()["live"]]
    assert live_idx == sorted(live_idx)  # indices continue across the reconnect


def test_through_the_model_server_over_grpc(broker, subscribe, tiny_model, videos, tmp_path):
    launcher = pytest.importorskip("edgeloop.serving.launcher")
    from edgeloop.stream.predictors import GrpcPredictor

    sub = subscribe("127.0.0.1", broker.port)
    with launcher.running_server([tiny_model]) as srv:
        predictor = GrpcPredictor(srv.grpc_target, "stream-test")
        assert predictor.preprocess.size == 64  # from the server's metadata
        proc = _processor(
            [f"cam={videos['short']}", f"bad={tmp_path / 'missing.mp4'}"],
            predictor,
            broker,
            tmp_path / "outbox",
            drop_policy=DropPolicy.BLOCK,
            workers=2,
        )
        summary = proc.run(duration_s=30)
    s = {x["source"]: x for x in summary.sources}
    assert s["cam"]["frames_processed"] == 30 and s["bad"]["state"] == "failed"
    assert sub.wait_for(lambda x: len(x.messages) >= 30, what="30 results")
    msgs = sub.by_camera()["cam"]
    assert [m["frame_index"] for m in msgs] == list(range(30))
    assert msgs[0]["model"] == {"name": "stream-test", "version": "1"}
    jsonschema.validate(msgs[0], result_schema())
