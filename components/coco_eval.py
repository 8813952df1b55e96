"""COCO detection metrics with pycocotools: mAP@0.5, mAP@0.5:0.95, AP per class, recall at the
operating threshold, each with its sample size, and a bootstrap interval over images for mAP@0.5.

No torch: the staging evaluation runs it in the pipeline image on the ONNX model's outputs. Boxes are
:class:`edgeloop.core.boxes.Box` (pixels, COCO order); a prediction is a :class:`Detection` (a box and
its score).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgeloop.core.boxes import Box, coco_document

#: The score above which a detection counts as found on the line (the model card's default).
OPERATING_THRESHOLD = 0.5


@dataclass(frozen=True)
class Detection:
    box: Box
    score: float


@dataclass
class DetectionMetrics:
    map_50: float
    map_50_95: float
    ap_50: dict[str, float | None]  # per class; None: the class has no ground-truth box here
    recall_at_threshold: float  # share of ground-truth boxes found (IoU >= 0.5, score >= threshold)
    score_threshold: float
    images: int
    boxes: int
    boxes_per_class: dict[str, int]
    map_50_ci95: tuple[float, float] = (float("nan"), float("nan"))
    bootstrap: int = 0
    recall_per_class: dict[str, float | None] = field(default_factory=dict)  # None: no box of the class
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _documents(
    truth: Sequence[Sequence[Box]],
    predicted: Sequence[Sequence[Detection]],
    classes: Sequence[str],
    order: Sequence[int],
    score_threshold: float = 0.0,
) -> tuple[dict, list[dict]]:
    """COCO ground truth and results for the images ``order`` (indices, repeats allowed: new ids)."""
    # COCO needs a size per image; boxes are evaluated by IoU, so the extent of all boxes suffices
    images = []
    for i in order:
        extent = [b.x + b.w for b in truth[i]] + [d.box.x + d.box.w for d in predicted[i]] + [1.0]
        height = [b.y + b.h for b in truth[i]] + [d.box.y + d.box.h for d in predicted[i]] + [1.0]
        images.append((str(i), int(np.ceil(max(extent))), int(np.ceil(max(height))), truth[i]))
    gt = coco_document(images, classes)
    ids = {c: k for k, c in enumerate(classes, 1)}
    results = [
        {
            "image_id": image_id,
            "category_id": ids[d.box.label],
            "bbox": d.box.as_coco(),
            "score": float(d.score),
        }
        for image_id, i in enumerate(order, 1)
        for d in predicted[i]
        if d.score >= score_threshold and d.box.label in ids
    ]
    return gt, results


def _coco_eval(gt_doc: dict, results: list[dict], iou_thresholds: Sequence[float] | None = None):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and tables
        gt = COCO()
        gt.dataset = gt_doc
        gt.createIndex()
        dt = gt.loadRes(results) if results else COCO()
        if not results:
            dt.dataset = {"images": gt_doc["images"], "annotations": [], "categories": gt_doc["categories"]}
            dt.createIndex()
        ev = COCOeval(gt, dt, iouType="bbox")
        if iou_thresholds is not None:
            ev.params.iouThrs = np.asarray(iou_thresholds, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _map50(
    truth: Sequence[Sequence[Box]],
    predicted: Sequence[Sequence[Detection]],
    classes: Sequence[str],
    order: list[int],
) -> float:
    return max(0.0, float(_coco_eval(*_documents(truth, predicted, classes, order)).stats[1]))


def _mean_valid(a: np.ndarray) -> float:
    valid = a[a > -1]
    return float(valid.mean()) if valid.size else 0.0


def evaluate_detections(
    truth: Sequence[Sequence[Box]],
    predicted: Sequence[Sequence[Detection]],
    classes: Sequence[str],
    *,
    score_threshold: float = OPERATING_THRESHOLD,
    bootstrap: int = 200,
    seed: int = 0,
) -> DetectionMetrics:
    """COCO metrics of ``predicted`` against ``truth`` (one list per image, the same images in order)."""
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} images of ground truth but {len(predicted)} of predictions")
    order = list(range(len(truth)))
    ev = _coco_eval(*_documents(truth, predicted, classes, order))
    counts = {c: sum(1 for boxes in truth for b in boxes if b.label == c) for c in classes}
    # precision[T, R, K, A, M]: IoU 0.5 is T=0, all areas A=0, 100 detections M=-1
    ap_50 = {
        c: (_mean_valid(ev.eval["precision"][0, :, k, 0, -1]) if counts[c] else None)
        for k, c in enumerate(classes)
    }
    at_threshold = _coco_eval(
        *_documents(truth, predicted, classes, order, score_threshold), iou_thresholds=[0.5]
    )
    recall = at_threshold.eval["recall"][0, :, 0, -1]  # per class
    found = sum(max(0.0, float(recall[k])) * counts[c] for k, c in enumerate(classes))
    total = sum(counts.values())
    metrics = DetectionMetrics(
        map_50=max(0.0, float(ev.stats[1])),
        map_50_95=max(0.0, float(ev.stats[0])),
        ap_50=ap_50,
        recall_at_threshold=found / total if total else 0.0,
        score_threshold=score_threshold,
        images=len(truth),
        boxes=total,
        boxes_per_class=counts,
        recall_per_class={
            c: (max(0.0, float(recall[k])) if counts[c] else None) for k, c in enumerate(classes)
        },
    )
    if bootstrap and len(truth) > 1:
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(bootstrap):
            sample = rng.integers(0, len(truth), len(truth)).tolist()
            draws.append(_map50(truth, predicted, classes, sample))
        low, high = np.percentile(draws, [2.5, 97.5])
        metrics.map_50_ci95 = (round(float(low), 4), round(float(high), 4))
        metrics.bootstrap = bootstrap
    return metrics


def iou(a: Box, b: Box) -> float:
    w = min(a.x + a.w, b.x + b.w) - max(a.x, b.x)
    h = min(a.y + a.h, b.y + b.h) - max(a.y, b.y)
    inter = max(0.0, w) * max(0.0, h)
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


def image_correct(
    truth: Sequence[Box],
    predicted: Sequence[Detection],
    score_threshold: float = OPERATING_THRESHOLD,
    iou_threshold: float = 0.5,
) -> bool:
    """Would the line act rightly on this image: every defect found (a detection of its class at or
    above the threshold, IoU >= ``iou_threshold``, each used once, best scores first) and no
    detection above the threshold left over (a false alarm)."""
    kept = sorted((d for d in predicted if d.score >= score_threshold), key=lambda d: -d.score)
    unmatched = list(truth)
    for d in kept:
        best = max(
            (b for b in unmatched if b.label == d.box.label),
            key=lambda b: iou(b, d.box),
            default=None,
        )
        if best is None or iou(best, d.box) < iou_threshold:
            return False
        unmatched.remove(best)
    return not unmatched


def paired_map_difference(
    truth: Sequence[Sequence[Box]],
    candidate: Sequence[Sequence[Detection]],
    champion: Sequence[Sequence[Detection]],
    classes: Sequence[str],
    *,
    bootstrap: int = 200,
    seed: int = 0,
) -> tuple[float, tuple[float, float]]:
    """Candidate minus champion mAP@0.5 on the same images, and its 95 % interval from a paired
    bootstrap (each draw resamples images once and scores both models on them)."""
    if not len(truth) == len(candidate) == len(champion):
        raise ValueError("the candidate, the champion and the ground truth must cover the same images")
    order = list(range(len(truth)))
    diff = _map50(truth, candidate, classes, order) - _map50(truth, champion, classes, order)
    if not bootstrap or len(truth) < 2:
        return round(diff, 4), (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        sample = rng.integers(0, len(truth), len(truth)).tolist()
        draws.append(_map50(truth, candidate, classes, sample) - _map50(truth, champion, classes, sample))
    low, high = np.percentile(draws, [2.5, 97.5])
    return round(diff, 4), (round(float(low), 4), round(float(high), 4))
