"""Detection models in the server: the graph's boxes per image, padded for the batcher, and the
flat OIP outputs a client reads.

A detection graph (:func:`edgeloop.components.detection_export.export_detector`) takes one image and
gives ``boxes`` (x0, y0, x1, y1 in model pixels), ``scores`` and 1-based ``labels`` for a dynamic
count of detections. The batcher slices results by row, so :func:`run_padded` runs each image and
pads to :data:`MAX_DETECTIONS` rows per image. :func:`outputs` keeps the detections at or above the
score threshold, maps the boxes to each source image's pixels as (x, y, width, height) and flattens
them: ``boxes`` FP32 [D, 4], ``scores`` FP32 [D], ``labels`` BYTES [D] and ``count`` INT32 [N] (the
detections of image i are rows sum(count[:i]) to sum(count[:i+1])).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeloop.core.model_card import DETECTION_OUTPUTS

BOXES, SCORES, LABELS = DETECTION_OUTPUTS
COUNT = "count"
OUTPUT_NAMES = (BOXES, SCORES, LABELS, COUNT)
#: Detections kept per image (the exported graph's own cap is 50).
MAX_DETECTIONS = 100
#: The default score a detection needs to be answered; a request's ``score_threshold`` parameter overrides it.
SCORE_THRESHOLD = 0.5


def run_padded(session: Any, input_name: str, x: np.ndarray) -> list[np.ndarray]:
    """[N,3,S,S] float32 -> boxes [N,K,4], scores [N,K] (-1 where padded), labels [N,K] (0 where padded)."""
    n = len(x)
    boxes = np.zeros((n, MAX_DETECTIONS, 4), dtype=np.float32)
    scores = np.full((n, MAX_DETECTIONS), -1.0, dtype=np.float32)
    labels = np.zeros((n, MAX_DETECTIONS), dtype=np.int64)
    for i in range(n):
        b, s, k = session.run(list(DETECTION_OUTPUTS), {input_name: x[i : i + 1]})
        m = min(len(s), MAX_DETECTIONS)
        boxes[i, :m], scores[i, :m], labels[i, :m] = b[:m], s[:m], k[:m]
    return [boxes, scores, labels]


@dataclass
class Detections:
    """The detections of a request, flat, in source pixels (x, y, width, height)."""

    boxes: np.ndarray  # float32 [D, 4]
    scores: np.ndarray  # float32 [D]
    labels: np.ndarray  # object (bytes) [D]
    count: np.ndarray  # int32 [N]

    def per_image(self) -> list[list[dict[str, Any]]]:
        out, start = [], 0
        for n in self.count.tolist():
            out.append(
                [
                    {
                        "label": self.labels[j].decode(),
                        "score": round(float(self.scores[j]), 5),
                        "x": round(float(self.boxes[j, 0]), 2),
                        "y": round(float(self.boxes[j, 1]), 2),
                        "width": round(float(self.boxes[j, 2]), 2),
                        "height": round(float(self.boxes[j, 3]), 2),
                    }
                    for j in range(start, start + n)
                ]
            )
            start += n
        return out

    def tensors(self) -> dict[str, tuple[np.ndarray, str]]:
        return {
            BOXES: (self.boxes, "FP32"),
            SCORES: (self.scores, "FP32"),
            LABELS: (self.labels, "BYTES"),
            COUNT: (self.count, "INT32"),
        }


def outputs(
    res: Sequence[np.ndarray],
    sources: Sequence[tuple[int, int]],
    size: int,
    label_names: np.ndarray,
    threshold: float = SCORE_THRESHOLD,
) -> Detections:
    """Padded graph results of N images -> the detections at or above ``threshold`` in each
    source image's pixels (``sources``: width, height of each image as it was sent)."""
    boxes, scores, labels = res
    keep = (scores >= threshold) & (labels >= 1) & (labels <= len(label_names))
    count = keep.sum(axis=1).astype(np.int32)
    scale = np.array([[w / size, h / size, w / size, h / size] for w, h in sources], dtype=np.float32)
    xyxy = (boxes * scale[:, None, :])[keep]
    xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1).astype(np.float32)
    return Detections(
        xywh.reshape(-1, 4), scores[keep].astype(np.float32), label_names[labels[keep] - 1], count
    )


def output_types() -> list[dict[str, Any]]:
    return [
        {"name": BOXES, "datatype": "FP32", "shape": [-1, 4]},
        {"name": SCORES, "datatype": "FP32", "shape": [-1]},
        {"name": LABELS, "datatype": "BYTES", "shape": [-1]},
        {"name": COUNT, "datatype": "INT32", "shape": [-1]},
    ]
