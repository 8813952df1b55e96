"""Result messages follow the published JSON Schema; latency quantiles are accurate with bounded memory."""

from __future__ import annotations

import json
import time

import jsonschema
import numpy as np
import pytest

from edgeloop.stream.predictors import Prediction, decode_bytes_tensor
from edgeloop.stream.queues import Frame
from edgeloop.stream.result import build_result, encode, result_schema, topic_for
from edgeloop.stream.stats import LatencyHistogram


def _result(frame=None, pred=None, **overrides):
    frame = frame or Frame(
        "cam-1", 42, np.zeros((2, 2, 3), np.uint8), time.time(), time.monotonic(), media_time=1.4
    )
    pred = pred or Prediction("scratch", 0.7, np.array([0.2, 0.7, 0.1], np.float32))
    kwargs = dict(
        run_id="0123456789abcdef",
        line="line1",
        model_name="inspect",
        model_version="3",
        labels=["ok", "scratch", "dent"],
        latency_s=0.0123,
    )
    kwargs.update(overrides)
    return build_result(frame, pred, **kwargs)


def test_result_validates_against_the_schema():
    jsonschema.Draft202012Validator.check_schema(result_schema())
    result = _result()
    jsonschema.validate(json.loads(encode(result)), result_schema())
    assert result["top"][0] == {"label": "scratch", "score": pytest.approx(0.7)}
    assert [t["label"] for t in result["top"]] == ["scratch", "ok", "dent"]
    assert result["latency_ms"] == pytest.approx(12.3)
    assert (result["camera"], result["frame_index"], result["model"]) == (
        "cam-1",
        42,
        {"name": "inspect", "version": "3"},
    )
    assert result["message_id"] == "0123456789abcdef:cam-1:42"  # what a consumer deduplicates on


def test_result_without_labels_or_version_is_still_valid():
    result = _result(labels=None, model_version=None)
    jsonschema.validate(result, result_schema())
    assert result["top"] == [{"label": "scratch", "score": pytest.approx(0.7)}]


@pytest.mark.parametrize(
    "breaks",
    [
        lambda r: r.pop("frame_index"),
        lambda r: r.update(score=1.5),
        lambda r: r.update(camera="a/b"),
        lambda r: r.update(extra=1),
        lambda r: r["model"].pop("version"),
        lambda r: r.pop("message_id"),
        lambda r: r.update(message_id="cam-1:42"),
    ],
)
def test_schema_rejects_broken_results(breaks):
    result = _result()
    breaks(result)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(result, result_schema())


def _detection_result(detections, source_size=(640, 480)):
    frame = Frame(
        "cam-1", 7, np.zeros((96, 96, 3), np.uint8), time.time(), time.monotonic(), source_size=source_size
    )
    best = max(detections, key=lambda d: d["score"], default=None)
    pred = Prediction(
        best["label"] if best else "", best["score"] if best else 0.0, np.zeros(0, np.float32), detections
    )
    return _result(frame, pred, labels=["scratch", "dent", "stain"])


def test_detection_result_gives_boxes_in_source_frame_pixels():
    seen = [{"label": "dent", "score": 0.91, "x": 12.0, "y": 48.0, "width": 24.0, "height": 6.0}]
    result = _detection_result(seen)
    jsonschema.validate(json.loads(encode(result)), result_schema())
    assert result["task"] == "detection" and result["frame_size"] == {"width": 640, "height": 480}
    # 96 px model input -> 640 x 480: x scaled by 640/96, y by 480/96
    assert result["detections"] == [
        {"label": "dent", "score": 0.91, "x": 80.0, "y": 240.0, "width": 160.0, "height": 30.0}
    ]
    assert "label" not in result and "top" not in result


def test_a_frame_without_defects_is_a_valid_detection_result_with_none():
    result = _detection_result([], source_size=None)
    jsonschema.validate(result, result_schema())
    assert result["detections"] == [] and result["frame_size"] == {"width": 96, "height": 96}


@pytest.mark.parametrize(
    "breaks",
    [
        lambda r: r.pop("detections"),
        lambda r: r.update(label="dent"),
        lambda r: r["detections"].append(
            {"label": "dent", "score": 0.5, "x": 1, "y": 1, "width": -2, "height": 1}
        ),
        lambda r: r["detections"][0].pop("x"),
        lambda r: r.update(task="segmentation"),
    ],
)
def test_schema_rejects_broken_detection_results(breaks):
    result = _detection_result(
        [{"label": "dent", "score": 0.9, "x": 1.0, "y": 2.0, "width": 3.0, "height": 4.0}]
    )
    breaks(result)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(result, result_schema())


def test_a_classification_result_cannot_carry_detections():
    result = _result()
    result["detections"] = []
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(result, result_schema())


def test_topic():
    assert topic_for("edgeloop/results/", "line1", "cam-1") == "edgeloop/results/line1/cam-1"


def test_latency_histogram_quantiles_match_numpy():
    rng = np.random.default_rng(0)
    samples = rng.lognormal(mean=np.log(0.02), sigma=0.6, size=20_000)
    h = LatencyHistogram()
    for s in samples:
        h.record(float(s))
    for q in (0.5, 0.9, 0.99):
        assert h.quantile(q) == pytest.approx(np.quantile(samples, q), rel=0.02)
    assert h.count == 20_000 and h.max == pytest.approx(samples.max())
    assert LatencyHistogram().quantile(0.5) is None


def test_decode_bytes_tensor():
    raw = b"".join(len(s).to_bytes(4, "little") + s for s in (b"ok", b"", b"dent"))
    assert decode_bytes_tensor(raw) == ["ok", "", "dent"]
