"""The processor with ONNX Runtime in process: complete, ordered, accounted, resilient to bad sources."""

from __future__ import annotations

import json
import random
import threading
import time

import jsonschema
import numpy as np
import pytest

from edgeloop.stream.predictors import OnnxPredictor
from edgeloop.stream.processor import StreamConfig, StreamProcessor
from edgeloop.stream.publisher import CountingSink
from edgeloop.stream.queues import DropPolicy
from edgeloop.stream.result import result_schema
from edgeloop.stream.sources import ReaderConfig, SourceSpec


class Slow:
    """Wraps a predictor: adds a delay per batch, optionally fails some batches."""

    def __init__(self, inner, delay_s: float = 0.0, fail_every: int = 0, jitter_s: float = 0.0):
        self.inner, self.delay_s, self.fail_every, self.jitter_s = inner, delay_s, fail_every, jitter_s
        self.model_name, self.model_version = inner.model_name, inner.model_version
        self.labels, self.preprocess = inner.labels, inner.preprocess
        self.calls = 0
        self._lock = threading.Lock()
        self._rng = random.Random(0)

    def predict(self, frames):
        with self._lock:
            self.calls += 1
            n = self.calls
            jitter = self._rng.uniform(0, self.jitter_s)
        time.sleep(self.delay_s + jitter)
        if self.fail_every and n % self.fail_every == 0:
            raise RuntimeError("model server unavailable")
        return self.inner.predict(frames)

    def close(self):
        self.inner.close()


def _run(specs, predictor, **cfg):
    reader = ReaderConfig(**cfg.pop("reader", {}))
    proc = StreamProcessor(
        [SourceSpec.parse(s) for s in specs], predictor, None, StreamConfig(reader=reader, **cfg)
    )
    sink = CountingSink(proc.stats_for, keep=True)
    proc.sink = sink
    summary = proc.run(duration_s=60)
    by_source: dict[str, list[dict]] = {}
    for topic, payload in sink.messages:
        msg = json.loads(payload)
        by_source.setdefault(msg["camera"], []).append(msg)
        assert topic == f"edgeloop/results/line1/{msg['camera']}"
    return proc, summary, by_source


def _balanced(summary):
    for s in summary.sources:
        assert s["frames_in"] == s["frames_processed"] + s["dropped_total"], s


def test_every_frame_of_every_good_source_gets_a_result_despite_bad_sources(
    tiny_model, short_video, tmp_path
):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(10_000))
    proc, summary, results = _run(
        [f"cam1={short_video}", f"cam2={short_video}", f"broken={corrupt}", f"gone={tmp_path / 'none.mp4'}"],
        OnnxPredictor(tiny_model),
        drop_policy=DropPolicy.BLOCK,
        reader={"realtime": False},
    )
    s = {x["source"]: x for x in summary.sources}
    for cam in ("cam1", "cam2"):
        assert s[cam]["state"] == "finished"
        assert [m["frame_index"] for m in results[cam]] == list(range(30))
        assert s[cam]["frames_processed"] == s[cam]["results_published"] == 30
        for m in results[cam][:3]:
            jsonschema.validate(m, result_schema())
            assert m["model"] == {"name": "stream-test", "version": "1"}
            assert m["label"] in ("ok", "scratch", "dent")
    assert (s["broken"]["state"], s["broken"]["errors"]) == ("failed", {"corrupt": 1})
    assert (s["gone"]["state"], s["gone"]["errors"]) == ("failed", {"not_found": 1})
    assert "none.mp4 does not exist" in summary.table()
    _balanced(summary)


def test_realtime_pacing_and_latency_are_recorded(tiny_model, short_video):
    proc, summary, results = _run([str(short_video)], OnnxPredictor(tiny_model), reader={"fps": 5})
    s = summary.sources[0]
    assert s["frames_processed"] == 10
    assert summary.elapsed_s >= 1.5  # a 2 s clip paced like a camera
    assert 0 < s["latency_p50_ms"] <= s["latency_p99_ms"]
    assert all(m["latency_ms"] > 0 for m in results["clip"])
    reg = proc.metrics.registry
    assert reg.get_sample_value("edgeloop_stream_latency_seconds_count", {"source": "clip"}) == 10
    assert reg.get_sample_value("edgeloop_stream_frames_processed_total", {"source": "clip"}) == 10
    assert reg.get_sample_value("edgeloop_stream_frames_decoded_total", {"source": "clip"}) == 30


def test_overload_drops_are_bounded_and_counted(tiny_model, short_video):
    slow = Slow(OnnxPredictor(tiny_model), delay_s=0.02)
    proc, summary, results = _run(
        [f"a={short_video}", f"b={short_video}", f"c={short_video}"],
        slow,
        queue_size=4,
        batch_size=2,
        reader={"realtime": False},
    )
    total_dropped = 0
    for s in summary.sources:
        assert s["queue_high_water"] <= 4
        assert s["frames_in"] == 30
        assert s["dropped_total"] == s["frames_in"] - s["frames_processed"]
        assert set(s["frames_dropped"]) <= {"queue_full"}
        total_dropped += s["dropped_total"]
        idx = [m["frame_index"] for m in results.get(s["source"], [])]
        assert idx == sorted(idx) and len(idx) == s["frames_processed"]
        assert (
            proc.metrics.registry.get_sample_value(
                "edgeloop_stream_frames_dropped_total", {"source": s["source"], "reason": "queue_full"}
            )
            == s["dropped_total"]
        )
    assert total_dropped > 0


def test_inference_failures_are_counted_and_the_stream_goes_on(tiny_model, short_video):
    slow = Slow(OnnxPredictor(tiny_model), fail_every=3)
    _, summary, results = _run(
        [str(short_video)], slow, batch_size=1, drop_policy=DropPolicy.BLOCK, reader={"realtime": False}
    )
    s = summary.sources[0]
    assert s["frames_dropped"] == {"inference_error": 10}
    assert s["frames_processed"] == 20 == len(results["clip"])
    _balanced(summary)


def test_several_workers_keep_each_camera_in_order(tiny_model, short_video):
    slow = Slow(OnnxPredictor(tiny_model), jitter_s=0.01)
    _, summary, results = _run(
        [f"a={short_video}", f"b={short_video}"],
        slow,
        workers=3,
        batch_size=3,
        drop_policy=DropPolicy.BLOCK,
        reader={"realtime": False},
    )
    for cam in ("a", "b"):
        assert [m["frame_index"] for m in results[cam]] == list(range(30))


@pytest.fixture
def looping(tiny_model, short_video):
    proc = StreamProcessor(
        [SourceSpec.parse(str(short_video))],
        OnnxPredictor(tiny_model),
        None,
        StreamConfig(reader=ReaderConfig(loop=True, realtime=False)),
    )
    proc.sink = CountingSink(proc.stats_for)
    return proc


def test_looping_source_runs_until_duration(looping):
    summary = looping.run(duration_s=1.5)
    s = summary.sources[0]
    assert s["state"] == "stopped"
    assert s["frames_in"] > 30  # it went round at least once
    _balanced(summary)
