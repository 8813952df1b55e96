"""Staging evaluation: the numbers a reviewer approves a model on.

Pure numpy functions over predictions (tested with crafted inputs), plus
:func:`evaluate_predictions`, which assembles an :class:`EvaluationReport` from
the predictions the staging model server returned, their latencies, and the
fp32 reference model's predictions on the same images (parity).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

SLICE_KEYS = ("lighting", "camera")


class ClassMetrics(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


class LatencySummary(BaseModel):
    """Client-observed request latency through the model server, in milliseconds."""

    n: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    transport: str = "rest"


class Parity(BaseModel):
    """How far the chosen-precision model's outputs are from the fp32 reference on the same inputs."""

    reference_precision: str = "fp32"
    chosen_precision: str = "fp32"
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float


class SliceMetrics(BaseModel):
    n: int
    accuracy: float


class EvaluationReport(BaseModel):
    labels: list[str]
    n: int
    accuracy: float
    per_class: dict[str, ClassMetrics]
    confusion_matrix: list[list[int]] = Field(description="rows: true label, columns: predicted label")
    ece: float
    latency: LatencySummary | None = None
    parity: Parity | None = None
    slices: dict[str, dict[str, SliceMetrics]] = Field(default_factory=dict)
    model_digest: str | None = None
    precision: str | None = None
    test_set_digest: str | None = None

    def flat_metrics(self) -> dict[str, float]:
        """Scalar metrics with stable names, for MLflow and KFP Metrics."""
        out: dict[str, float] = {"accuracy": self.accuracy, "ece": self.ece, "test_images": float(self.n)}
        for name, m in self.per_class.items():
            out[f"recall.{name}"] = m.recall
            out[f"precision.{name}"] = m.precision
        if self.latency:
            out |= {
                "latency_p50_ms": self.latency.p50_ms,
                "latency_p95_ms": self.latency.p95_ms,
                "latency_p99_ms": self.latency.p99_ms,
            }
        if self.parity:
            out |= {
                "parity_max_abs_diff": self.parity.max_abs_diff,
                "parity_top1_agreement": self.parity.top1_agreement,
            }
        for key, groups in self.slices.items():
            for value, s in groups.items():
                out[f"slice.{key}.{value}.accuracy"] = s.accuracy
        return out

    def digest(self) -> str:
        """sha256 of the canonical JSON: what an approver's decision pins."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


# -- metrics -------------------------------------------------------------------------------------------
def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def per_class_metrics(cm: np.ndarray, labels: Sequence[str]) -> dict[str, ClassMetrics]:
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    actual = cm.sum(axis=1).astype(float)
    out = {}
    for i, name in enumerate(labels):
        p = tp[i] / predicted[i] if predicted[i] else 0.0
        r = tp[i] / actual[i] if actual[i] else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        out[name] = ClassMetrics(precision=float(p), recall=float(r), f1=float(f1), support=int(actual[i]))
    return out


def expected_calibration_error(y_true: Sequence[int], probs: np.ndarray, n_bins: int = 15) -> float:
    """ECE with equal-width confidence bins: sum over bins of |accuracy - confidence| weighted by bin size."""
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) == 0:
        return 0.0
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(y_true)).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def latency_summary(latencies_ms: Sequence[float], transport: str = "rest") -> LatencySummary:
    a = np.asarray(latencies_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no latency samples: the staging server answered no request")
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return LatencySummary(
        n=int(a.size),
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        mean_ms=float(a.mean()),
        transport=transport,
    )


def parity(
    reference_probs: np.ndarray,
    probs: np.ndarray,
    reference_precision: str = "fp32",
    chosen_precision: str = "fp32",
) -> Parity:
    ref = np.asarray(reference_probs, dtype=np.float64)
    got = np.asarray(probs, dtype=np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"parity needs outputs of the same shape; got {ref.shape} and {got.shape}")
    diff = np.abs(ref - got)
    return Parity(
        reference_precision=reference_precision,
        chosen_precision=chosen_precision,
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        top1_agreement=float((ref.argmax(1) == got.argmax(1)).mean()) if len(ref) else 1.0,
    )


def slice_metrics(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    metas: Sequence[Mapping[str, Any]],
    keys: Sequence[str] = SLICE_KEYS,
) -> dict[str, dict[str, SliceMetrics]]:
    """Accuracy per value of each metadata key (e.g. per lighting, per camera); images lacking a key are skipped."""
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    out: dict[str, dict[str, SliceMetrics]] = {}
    for key in keys:
        values = [m.get(key) for m in metas]
        groups = sorted({str(v) for v in values if v is not None})
        if not groups:
            continue
        out[key] = {}
        for g in groups:
            mask = np.array([v is not None and str(v) == g for v in values])
            out[key][g] = SliceMetrics(n=int(mask.sum()), accuracy=float((yt[mask] == yp[mask]).mean()))
    return out


def evaluate_predictions(
    labels: Sequence[str],
    y_true: Sequence[int],
    probs: np.ndarray,
    metas: Sequence[Mapping[str, Any]] | None = None,
    latencies_ms: Sequence[float] | None = None,
    transport: str = "rest",
    reference_probs: np.ndarray | None = None,
    precision: str = "fp32",
    model_digest: str | None = None,
    test_set_digest: str | None = None,
    n_bins: int = 15,
) -> EvaluationReport:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(labels):
        raise ValueError(f"expected probabilities of shape (n, {len(labels)}), got {probs.shape}")
    if len(y_true) != len(probs):
        raise ValueError(f"{len(y_true)} labels but {len(probs)} predictions")
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, len(labels))
    return EvaluationReport(
        labels=list(labels),
        n=len(y_true),
        accuracy=float((np.asarray(y_true) == y_pred).mean()) if len(y_true) else 0.0,
        per_class=per_class_metrics(cm, labels),
        confusion_matrix=cm.tolist(),
        ece=expected_calibration_error(y_true, probs, n_bins),
        latency=latency_summary(latencies_ms, transport) if latencies_ms else None,
        parity=parity(reference_probs, probs, chosen_precision=precision)
        if reference_probs is not None
        else None,
        slices=slice_metrics(y_true, y_pred, metas) if metas else {},
        model_digest=model_digest,
        precision=precision,
        test_set_digest=test_set_digest,
    )


# -- the human-readable report ----------------------------------------------------------------------------
def render_markdown(
    report: EvaluationReport,
    decision: Any | None = None,
    champion: EvaluationReport | None = None,
    title: str = "Staging evaluation",
) -> str:
    """The evidence report a reviewer reads before approving (also stored in MLflow)."""
    lines = [f"# {title}", ""]
    if decision is not None:
        verdict = "PASS" if decision.passed else "FAIL"
        lines += [f"**Gate: {verdict}**", ""]
        lines += ["| rule | result | detail |", "|---|---|---|"]
        lines += [f"| {r.name} | {'pass' if r.passed else 'FAIL'} | {r.detail} |" for r in decision.results]
        lines.append("")
    champ = f" (champion: {champion.accuracy:.4f})" if champion else ""
    lines += [
        f"- test images: {report.n}"
        + (f" (test set {report.test_set_digest[:12]})" if report.test_set_digest else ""),
        f"- accuracy: {report.accuracy:.4f}{champ}",
        f"- expected calibration error: {report.ece:.4f}",
        f"- precision: {report.precision}"
        + (f", model digest {report.model_digest[:12]}" if report.model_digest else ""),
    ]
    if report.latency:
        lt = report.latency
        lines.append(
            f"- latency through the staging server ({lt.transport}, n={lt.n}): "
            f"p50 {lt.p50_ms:.2f} ms, p95 {lt.p95_ms:.2f} ms, p99 {lt.p99_ms:.2f} ms"
        )
    if report.parity:
        pa = report.parity
        lines.append(
            f"- parity {pa.chosen_precision} vs {pa.reference_precision}: max |diff| {pa.max_abs_diff:.2e}, "
            f"top-1 agreement {pa.top1_agreement:.4f}"
        )
    lines += [
        "",
        "## Per class",
        "",
        "| class | precision | recall | f1 | support |" + (" champion recall |" if champion else ""),
        "|---|---|---|---|---|" + ("---|" if champion else ""),
    ]
    for name, m in report.per_class.items():
        row = f"| {name} | {m.precision:.3f} | {m.recall:.3f} | {m.f1:.3f} | {m.support} |"
        if champion:
            cm_ = champion.per_class.get(name)
            row += f" {cm_.recall:.3f} |" if cm_ else " - |"
        lines.append(row)
    lines += [
        "",
        "## Confusion matrix (rows: true, columns: predicted)",
        "",
        "| | " + " | ".join(report.labels) + " |",
        "|---|" + "---|" * len(report.labels),
    ]
    for name, counts in zip(report.labels, report.confusion_matrix, strict=True):
        lines.append(f"| **{name}** | " + " | ".join(str(v) for v in counts) + " |")
    if report.slices:
        lines += ["", "## Slices", "", "| slice | n | accuracy |", "|---|---|---|"]
        for key, groups in report.slices.items():
            for value, s in groups.items():
                lines.append(f"| {key}={value} | {s.n} | {s.accuracy:.3f} |")
    return "\n".join(lines) + "\n"
