"""Staging evaluation of a detector: the numbers a reviewer approves a detection model on.

:func:`evaluate_detection_predictions` scores the detections the staging server answered for the
held-out images against their boxes with the COCO metrics (:mod:`edgeloop.components.coco_eval`:
mAP@0.5 with a bootstrap interval over images, mAP@0.5:0.95, AP@0.5 and recall at the operating
threshold per class) and with what the line acts on: the share of images handled rightly (every
defect found, no false alarm, at the operating threshold; Wilson interval). Parity is the share of
images on which the served model acts like the fp32 reference. The :class:`DetectionReport` keeps,
per image, its id and whether it was handled rightly, like the classification report.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from edgeloop.components.stats import proportion
from edgeloop.pipelines.evaluation import Estimate, LatencySummary, latency_summary, quantile_estimate

if TYPE_CHECKING:
    from edgeloop.components.coco_eval import Detection
    from edgeloop.core.boxes import Box

DETECTION = "detection"
MAX_DISAGREEMENTS_LISTED = 50
#: The image-level confusion matrix's classes: does the image hold a defect (truth) / a detection (model)?
IMAGE_CLASSES = ["no defect", "defect"]


class DetectionParity(BaseModel):
    """How often the served model acts like the fp32 reference (same detections at the threshold)."""

    reference_precision: str = "fp32"
    chosen_precision: str = "fp32"
    n: int
    agreement: float
    disagreeing: int = 0
    images: list[str] = Field(default_factory=list, description="the first disagreeing images' ids")


class DetectionReport(BaseModel):
    task: Literal["detection"] = "detection"
    labels: list[str]
    n: int = Field(description="test images")
    boxes: int = Field(description="ground-truth boxes on them")
    boxes_per_class: dict[str, int]
    map_50: float
    map_50_95: float
    ap_50: dict[str, float | None] = Field(description="per class; None: no box of the class here")
    recall_at_threshold: float
    recall_per_class: dict[str, float | None]
    score_threshold: float
    image_accuracy: float = Field(description="images handled rightly at the operating threshold")
    confusion_matrix: list[list[int]] = Field(
        description=f"images: rows truth, columns model, classes {IMAGE_CLASSES}"
    )
    latency: LatencySummary | None = None
    parity: DetectionParity | None = None
    model_digest: str | None = None
    precision: str | None = None
    test_set_digest: str | None = None
    estimates: dict[str, Estimate] = Field(default_factory=dict)
    image_ids: list[str] = Field(default_factory=list)
    correct: list[bool] = Field(default_factory=list, description="per image: handled rightly")

    def correct_by_image(self) -> dict[str, bool]:
        return dict(zip(self.image_ids, self.correct, strict=True))

    def estimate(self, name: str) -> Estimate | None:
        return self.estimates.get(name)

    def confusion(self) -> tuple[list[str], list[list[int]]]:
        return list(IMAGE_CLASSES), self.confusion_matrix

    def headline(self) -> str:
        e = self.estimate("map_50")
        acc = self.estimate("image_accuracy")
        return (
            f"mAP@0.5 {e.text(4) if e else f'{self.map_50:.4f}'}, images handled rightly "
            f"{acc.text(4) if acc else f'{self.image_accuracy:.4f}'}"
        )

    def flat_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {
            "map_50": self.map_50,
            "map_50_95": self.map_50_95,
            "recall_at_threshold": self.recall_at_threshold,
            "image_accuracy": self.image_accuracy,
            "test_images": float(self.n),
            "test_boxes": float(self.boxes),
        }
        for name, ap in self.ap_50.items():
            if ap is not None:
                out[f"ap_50.{name}"] = ap
        for name, r in self.recall_per_class.items():
            if r is not None:
                out[f"recall.{name}"] = r
        if self.latency:
            out |= {
                "latency_p50_ms": self.latency.p50_ms,
                "latency_p95_ms": self.latency.p95_ms,
                "latency_p99_ms": self.latency.p99_ms,
            }
        if self.parity:
            out |= {
                "parity_agreement": self.parity.agreement,
                "parity_disagreeing": float(self.parity.disagreeing),
            }
        for name, e in self.estimates.items():
            out |= {f"{name}.n": float(e.n), f"{name}.ci95_low": e.low, f"{name}.ci95_high": e.high}
        return out

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def image_confusion(
    truth: Sequence[Sequence[Box]], predicted: Sequence[Sequence[Detection]], threshold: float
) -> list[list[int]]:
    cm = [[0, 0], [0, 0]]
    for boxes, dets in zip(truth, predicted, strict=True):
        cm[int(bool(boxes))][int(any(d.score >= threshold for d in dets))] += 1
    return cm


def detection_parity(
    reference: Sequence[Sequence[Detection]],
    chosen: Sequence[Sequence[Detection]],
    image_ids: Sequence[str],
    threshold: float,
    reference_precision: str = "fp32",
    chosen_precision: str = "fp32",
) -> DetectionParity:
    from edgeloop.components.detection_runtime import same_detections

    differ = [
        i
        for i, a, b in zip(image_ids, reference, chosen, strict=True)
        if not same_detections(a, b, threshold)
    ]
    n = len(image_ids)
    return DetectionParity(
        reference_precision=reference_precision,
        chosen_precision=chosen_precision,
        n=n,
        agreement=(n - len(differ)) / n if n else 1.0,
        disagreeing=len(differ),
        images=differ[:MAX_DISAGREEMENTS_LISTED],
    )


def evaluate_detection_predictions(
    labels: Sequence[str],
    truth: Sequence[Sequence[Box]],
    predicted: Sequence[Sequence[Detection]],
    *,
    image_ids: Sequence[str],
    score_threshold: float | None = None,
    latencies_ms: Sequence[float] | None = None,
    parity: DetectionParity | None = None,
    precision: str | None = None,
    model_digest: str | None = None,
    test_set_digest: str | None = None,
    bootstrap: int = 200,
) -> DetectionReport:
    from edgeloop.components.coco_eval import OPERATING_THRESHOLD, evaluate_detections, image_correct

    threshold = OPERATING_THRESHOLD if score_threshold is None else score_threshold
    m = evaluate_detections(truth, predicted, labels, score_threshold=threshold, bootstrap=bootstrap)
    correct = [image_correct(b, d, threshold) for b, d in zip(truth, predicted, strict=True)]
    n = len(truth)
    estimates = {"image_accuracy": Estimate.of(proportion(sum(correct), n))}
    if m.bootstrap:
        estimates["map_50"] = Estimate(
            value=m.map_50, n=n, low=m.map_50_ci95[0], high=m.map_50_ci95[1], method="bootstrap"
        )
    if parity is not None:
        estimates["parity_agreement"] = Estimate.of(proportion(parity.n - parity.disagreeing, parity.n))
    latency = latency_summary(latencies_ms) if latencies_ms else None
    if latencies_ms:
        for q in (50, 95, 99):
            estimates[f"latency_p{q}_ms"] = quantile_estimate(latencies_ms, q / 100)
    return DetectionReport(
        labels=list(labels),
        n=n,
        boxes=m.boxes,
        boxes_per_class=m.boxes_per_class,
        map_50=m.map_50,
        map_50_95=m.map_50_95,
        ap_50=m.ap_50,
        recall_at_threshold=m.recall_at_threshold,
        recall_per_class=m.recall_per_class,
        score_threshold=threshold,
        image_accuracy=sum(correct) / n if n else 0.0,
        confusion_matrix=image_confusion(truth, predicted, threshold),
        latency=latency,
        parity=parity,
        model_digest=model_digest,
        precision=precision,
        test_set_digest=test_set_digest,
        estimates=estimates,
        image_ids=list(image_ids),
        correct=correct,
    )


def _num(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def render_detection_markdown(
    report: DetectionReport,
    decision: Any | None = None,
    champion: DetectionReport | None = None,
    title: str = "Staging evaluation",
) -> str:
    """The evidence a reviewer reads before approving a detector: each figure with its n and interval."""
    from edgeloop.pipelines.evaluation import render_rules

    lines = [f"# {title}", "", *render_rules(decision)]
    champ = f" (champion on the same images: {champion.headline()})" if champion else ""
    lines += [
        f"- test images: {report.n} with {report.boxes} defect boxes"
        + (f" (test set {report.test_set_digest[:12]})" if report.test_set_digest else ""),
        f"- {report.headline()}{champ}",
        f"- mAP@0.5:0.95 {report.map_50_95:.4f}; recall at score >= {report.score_threshold:g}: "
        f"{report.recall_at_threshold:.4f}",
        f"- precision: {report.precision}"
        + (f", model digest {report.model_digest[:12]}" if report.model_digest else ""),
    ]
    if report.latency:
        lt = report.latency
        p95 = report.estimate("latency_p95_ms")
        lines.append(
            f"- latency through the staging server ({lt.transport}, n={lt.n} requests): p50 {lt.p50_ms:.2f} ms, "
            f"p95 {p95.text(2, 'ms') if p95 else f'{lt.p95_ms:.2f} ms'}, p99 {lt.p99_ms:.2f} ms"
        )
    if report.parity:
        pa = report.parity
        lines.append(
            f"- parity {pa.chosen_precision} (served) vs {pa.reference_precision} (in-process): "
            f"{pa.disagreeing} of {pa.n} images with other detections at the threshold"
        )
    lines += [
        "",
        f"## Per class (IoU 0.5; recall at score >= {report.score_threshold:g})",
        "",
        "| class | boxes | AP@0.5 | recall |" + (" champion AP@0.5 |" if champion else ""),
        "|---|---|---|---|" + ("---|" if champion else ""),
    ]
    for name in report.labels:
        row = (
            f"| {name} | {report.boxes_per_class.get(name, 0)} | {_num(report.ap_50.get(name))} | "
            f"{_num(report.recall_per_class.get(name))} |"
        )
        if champion:
            row += f" {_num(champion.ap_50.get(name))} |"
        lines.append(row)
    lines += ["", "## Images (rows: truth, columns: model at the threshold)", ""]
    lines += ["| | " + " | ".join(IMAGE_CLASSES) + " |", "|---|---|---|"]
    for name, counts in zip(IMAGE_CLASSES, report.confusion_matrix, strict=True):
        lines.append(f"| **{name}** | " + " | ".join(str(v) for v in counts) + " |")
    return "\n".join(lines) + "\n"
