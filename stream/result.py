"""The result message: one per frame, JSON, described by ``result.schema.json``."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from edgeloop.stream.predictors import Prediction
from edgeloop.stream.queues import Frame

SCHEMA_ID = "edgeloop.stream.result/v3"
SCHEMA_FILE = "result.schema.json"
TOP_K = 3


def message_id(run_id: str, camera: str, frame_index: int) -> str:
    """``<run>:<camera>:<frame>``: the same for every copy at-least-once delivery makes of one result,
    different for every frame of every run."""
    return f"{run_id}:{camera}:{frame_index}"


def topic_for(prefix: str, line: str, camera: str) -> str:
    """``<prefix>/<line>/<camera>``."""
    return f"{prefix.rstrip('/')}/{line}/{camera}"


def check_topic_parts(prefix: str, line: str) -> None:
    """Refuse, before anything starts, a topic prefix or line no result could be published under:
    :class:`~edgeloop.core.errors.EdgeloopError` naming the option to fix."""
    from edgeloop.core.errors import EdgeloopError

    bad = ("+", "#", "\0")
    levels = prefix.strip("/").split("/")
    if not prefix.strip("/") or any(not lv or any(c in lv for c in bad) for lv in levels):
        raise EdgeloopError(
            f"MQTT topic prefix {prefix!r} is not usable: it needs non-empty levels separated by '/' and no "
            "'+', '#' (set mqtt.topic_prefix / EDGELOOP_MQTT__TOPIC_PREFIX)"
        )
    if not line or "/" in line or any(c in line for c in bad):
        raise EdgeloopError(
            f"--line {line!r} is not one MQTT topic level: use a non-empty name without '/', '+' or '#' "
            "(e.g. line-a)"
        )


@cache
def result_schema() -> dict[str, Any]:
    return json.loads(resources.files("edgeloop.stream").joinpath(SCHEMA_FILE).read_text())


def build_result(
    frame: Frame,
    pred: Prediction,
    *,
    run_id: str,
    line: str,
    model_name: str,
    model_version: str | None,
    labels: list[str] | None,
    latency_s: float,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "message_id": message_id(run_id, frame.source, frame.index),
        "run_id": run_id,
        "line": line,
        "camera": frame.source,
        "frame_index": frame.index,
        "frame_time": round(frame.captured_at, 6),
        "media_time": None if frame.media_time is None else round(float(frame.media_time), 6),
        "model": {"name": model_name, "version": model_version},
    }
    if pred.detections is not None:
        message.update(_detection_fields(frame, pred.detections))
    else:
        message.update(_classification_fields(pred, labels))
    message["latency_ms"] = round(latency_s * 1e3, 3)
    return message


def _classification_fields(pred: Prediction, labels: list[str] | None) -> dict[str, Any]:
    probs = pred.probabilities
    k = min(TOP_K, len(probs))
    if labels and len(labels) == len(probs) and k:
        idx = np.argsort(-probs)[:k]
        top = [{"label": labels[i], "score": _unit(float(probs[i]))} for i in idx]
    else:
        top = [{"label": pred.label, "score": _unit(pred.score)}]
    return {"task": "classification", "label": pred.label, "score": _unit(pred.score), "top": top}


def _detection_fields(frame: Frame, detections: list[dict[str, Any]]) -> dict[str, Any]:
    """The detections, from the pixels of the frame the model saw to those of the frame as decoded."""
    seen_h, seen_w = frame.image.shape[:2]
    width, height = frame.source_size or (seen_w, seen_h)
    sx, sy = width / seen_w, height / seen_h
    return {
        "task": "detection",
        "frame_size": {"width": int(width), "height": int(height)},
        "detections": [
            {
                "label": d["label"],
                "score": _unit(float(d["score"])),
                "x": round(float(d["x"]) * sx, 2),
                "y": round(float(d["y"]) * sy, 2),
                "width": round(float(d["width"]) * sx, 2),
                "height": round(float(d["height"]) * sy, 2),
            }
            for d in detections
        ],
    }


def _unit(x: float) -> float:
    return round(min(max(x, 0.0), 1.0), 6)


def encode(result: dict[str, Any]) -> bytes:
    return json.dumps(result, separators=(",", ":")).encode()
