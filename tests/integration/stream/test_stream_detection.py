"""A detection model in the stream: every frame's boxes reach MQTT in the pixels of the frame as
decoded, the same whether ONNX Runtime runs in process or the model server answers over gRPC."""

from __future__ import annotations

import jsonschema
import numpy as np
import pytest
from PIL import Image

from edgeloop.stream.predictors import GrpcPredictor, OnnxPredictor
from edgeloop.stream.processor import StreamConfig, StreamProcessor
from edgeloop.stream.publisher import MqttPublisher
from edgeloop.stream.queues import DropPolicy
from edgeloop.stream.result import result_schema
from edgeloop.stream.sources import ReaderConfig, SourceSpec
from edgeloop.testing.media import random_frames
from edgeloop.testing.models import (
    as_tuples,
    assert_same_detections,
    build_detection_model_dir,
    reference_detections,
)

WIDTH, HEIGHT = 200, 150  # not the model's 96 x 96, nor square


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
    return build_detection_model_dir(
        tmp_path_factory.mktemp("stream-detector") / "v1", size=96, seed=3, version="1"
    )


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream-detection-frames")
    frames = np.ascontiguousarray(random_frames(6, WIDTH, seed=11)[:, :HEIGHT])
    for i, f in enumerate(frames):
        Image.fromarray(f).save(d / f"{i:03d}.png")
    return d, frames


def _stream(predictor, broker, frames_dir, tmp_path):
    proc = StreamProcessor(
        [SourceSpec.parse(f"tags={frames_dir}")],
        predictor,
        None,
        StreamConfig(line="line2", drop_policy=DropPolicy.BLOCK, reader=ReaderConfig(realtime=False)),
    )
    proc.sink = MqttPublisher(
        "127.0.0.1", broker.port, tmp_path / "outbox", stats_for=proc.stats_for, metrics=proc.metrics
    )
    proc.sink.start()
    assert proc.sink.wait_connected(10), f"no connection to the broker at 127.0.0.1:{broker.port} in 10 s"
    return proc.run(duration_s=30)


@pytest.mark.parametrize("path", ["in-process", "grpc"])
def test_each_frames_boxes_reach_mqtt_in_source_pixels(
    path, broker, subscribe, detector_dir, frames_dir, tmp_path
):
    directory, frames = frames_dir
    want = reference_detections(detector_dir, frames)
    assert sum(map(len, want)) > 0, "the test detector should find boxes"
    sub = subscribe("127.0.0.1", broker.port, "edgeloop/results/line2/#")
    if path == "in-process":
        summary = _stream(OnnxPredictor(detector_dir), broker, directory, tmp_path)
    else:
        from edgeloop.serving.launcher import running_server

        with running_server([detector_dir]) as srv:
            summary = _stream(GrpcPredictor(srv.grpc_target, "inspection"), broker, directory, tmp_path)
    assert summary.sources[0]["frames_processed"] == len(frames)
    assert sub.wait_for(lambda s: len(s.messages) >= len(frames), what=f"{len(frames)} results")
    msgs = sub.by_camera()["tags"]
    assert [m["frame_index"] for m in msgs] == list(range(len(frames)))
    for m in msgs:
        jsonschema.validate(m, result_schema())
        assert m["task"] == "detection" and m["frame_size"] == {"width": WIDTH, "height": HEIGHT}
        assert m["model"] == {"name": "inspection", "version": "1"}
    assert_same_detections(as_tuples([m["detections"] for m in msgs]), want)
