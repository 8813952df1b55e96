"""Staging evaluation: the numbers a reviewer approves a model on.

Pure numpy functions over predictions (tested with crafted inputs), plus
:func:`evaluate_predictions`, which assembles an :class:`EvaluationReport` from
the predictions the staging model server returned, their latencies, and the
fp32 reference model's predictions on the same images (parity).

Every figure comes with how sure it is (:class:`Estimate`: the value, its sample size and a
95 % interval): Wilson for proportions (accuracy, recall, precision, slices, top-1 agreement),
a seeded bootstrap for the calibration error, order statistics for latency percentiles
(:mod:`edgeloop.components.stats`). The report keeps each image's id, label and prediction, so
two models scored on the same images can be compared image by image (the gate's McNemar test).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from edgeloop.components.stats import CONFIDENCE, Interval, proportion, quantile_interval_ranks

# "source": where an image came from (the seeded sample, "relabel" for a site's flagged images)
SLICE_KEYS = ("lighting", "camera", "source")
BOOTSTRAP_RESAMPLES = 1000
MAX_FLIPS_LISTED = 50  # flipped images kept in the report (the count is always exact)


class Estimate(BaseModel):
    """A figure, the number of observations behind it and its two-sided interval."""

    value: float
    n: int
    low: float
    high: float
    method: str  # wilson | bootstrap | order-statistic
    confidence: float = CONFIDENCE

    @classmethod
    def of(cls, interval: Interval) -> Estimate:
        return cls(
            value=interval.value,
            n=interval.n,
            low=interval.low,
            high=interval.high,
            method=interval.method,
            confidence=interval.confidence,
        )

    def text(self, digits: int = 3, unit: str = "", what: str = "") -> str:
        """``0.976 (n=251, 95% CI 0.949-0.989)``."""
        u = f" {unit}" if unit else ""
        count = f"n={self.n}" + (f" {what}" if what else "")
        return (
            f"{self.value:.{digits}f}{u} ({count}, {self.confidence:.0%} CI "
            f"{self.low:.{digits}f}-{self.high:.{digits}f}{u})"
        )


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


class Flip(BaseModel):
    """An image whose top-1 class differs between the reference (fp32) and the chosen precision."""

    image: str
    label: str
    reference: str
    chosen: str


class Parity(BaseModel):
    """How far the chosen-precision model's outputs are from the fp32 reference on the same inputs."""

    reference_precision: str = "fp32"
    chosen_precision: str = "fp32"
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    n: int = 0
    flipped: int = 0  # images whose top-1 class differs
    flips: list[Flip] = Field(default_factory=list, description=f"the first {MAX_FLIPS_LISTED} flipped")


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
    estimates: dict[str, Estimate] = Field(
        default_factory=dict, description="metric name (as in flat_metrics) -> value, n, 95 % interval"
    )
    image_ids: list[str] = Field(default_factory=list, description="per image, in evaluation order")
    y_true: list[int] = Field(default_factory=list)
    y_pred: list[int] = Field(default_factory=list)

    def correct_by_image(self) -> dict[str, bool]:
        """Image id -> whether this model got it right: what a paired comparison needs."""
        return {i: t == p for i, t, p in zip(self.image_ids, self.y_true, self.y_pred, strict=True)}

    def estimate(self, name: str) -> Estimate | None:
        return self.estimates.get(name)

    def confusion(self) -> tuple[list[str], list[list[int]]]:
        """(class names, matrix: rows true, columns predicted)."""
        return list(self.labels), self.confusion_matrix

    def headline(self) -> str:
        acc, ece = self.estimate("accuracy"), self.estimate("ece")
        return (
            f"accuracy {acc.text(4) if acc else f'{self.accuracy:.4f}'}, "
            f"ECE {ece.text(4) if ece else f'{self.ece:.4f}'}"
        )

    def flat_metrics(self) -> dict[str, float]:
        """Scalar metrics with stable names, for MLflow and KFP Metrics; each figure that has an
        :class:`Estimate` also gets ``<name>.n``, ``<name>.ci95_low`` and ``<name>.ci95_high``."""
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
                "parity_flipped": float(self.parity.flipped),
            }
        for key, groups in self.slices.items():
            for value, s in groups.items():
                out[f"slice.{key}.{value}.accuracy"] = s.accuracy
        for name, e in self.estimates.items():
            out |= {f"{name}.n": float(e.n), f"{name}.ci95_low": e.low, f"{name}.ci95_high": e.high}
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


def expected_calibration_error(
    y_true: Sequence[int] | np.ndarray, probs: np.ndarray, n_bins: int = 15
) -> float:
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


def ece_interval(
    y_true: Sequence[int],
    probs: np.ndarray,
    n_bins: int = 15,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> Estimate:
    """ECE with a percentile-bootstrap interval over the images (seeded: the same inputs give the
    same interval)."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true)
    value = expected_calibration_error(y, probs, n_bins)
    n = len(y)
    if n == 0:
        return Estimate(value=value, n=0, low=0.0, high=1.0, method="bootstrap", confidence=confidence)
    rng = np.random.default_rng(seed)
    stats = [expected_calibration_error(y[i], probs[i], n_bins) for i in rng.integers(0, n, (resamples, n))]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return Estimate(
        value=value, n=n, low=float(low), high=float(high), method="bootstrap", confidence=confidence
    )


def quantile_estimate(samples: Sequence[float], q: float, confidence: float = CONFIDENCE) -> Estimate:
    """The ``q``-quantile (numpy's linear interpolation) with a distribution-free order-statistic
    interval (:func:`~edgeloop.components.stats.quantile_interval_ranks`)."""
    a = np.sort(np.asarray(samples, dtype=np.float64))
    if a.size == 0:
        raise ValueError("no samples")
    lo, hi = quantile_interval_ranks(int(a.size), q, confidence)
    return Estimate(
        value=float(np.percentile(a, q * 100)),
        n=int(a.size),
        low=float(a[lo - 1]),
        high=float(a[hi - 1]),
        method="order-statistic",
        confidence=confidence,
    )


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
    *,
    labels: Sequence[str] | None = None,
    y_true: Sequence[int] | None = None,
    image_ids: Sequence[str] | None = None,
) -> Parity:
    """Output differences and top-1 flips between the reference and the chosen precision.

    Every flipped image is counted; the first :data:`MAX_FLIPS_LISTED` are listed with their id,
    label and both predictions (ids default to the image's position, labels to class indices).
    """
    ref = np.asarray(reference_probs, dtype=np.float64)
    got = np.asarray(probs, dtype=np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"parity needs outputs of the same shape; got {ref.shape} and {got.shape}")
    diff = np.abs(ref - got)
    ref_top, got_top = ref.argmax(1), got.argmax(1)
    flipped = np.flatnonzero(ref_top != got_top) if len(ref) else np.zeros(0, dtype=int)

    def name(k: int) -> str:
        return labels[k] if labels is not None else str(k)

    flips = [
        Flip(
            image=image_ids[i] if image_ids is not None else f"#{i}",
            label=name(int(y_true[i])) if y_true is not None else "",
            reference=name(int(ref_top[i])),
            chosen=name(int(got_top[i])),
        )
        for i in flipped[:MAX_FLIPS_LISTED]
    ]
    return Parity(
        reference_precision=reference_precision,
        chosen_precision=chosen_precision,
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        top1_agreement=float((ref_top == got_top).mean()) if len(ref) else 1.0,
        n=len(ref),
        flipped=len(flipped),
        flips=flips,
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


def estimates_for(
    cm: np.ndarray,
    labels: Sequence[str],
    slices: Mapping[str, Mapping[str, SliceMetrics]],
    par: Parity | None,
    latencies_ms: Sequence[float] | None,
    ece: Estimate,
    confidence: float = CONFIDENCE,
) -> dict[str, Estimate]:
    """The :class:`Estimate` of every figure in the report, keyed like :meth:`EvaluationReport.flat_metrics`."""
    tp = np.diag(cm)
    actual, predicted = cm.sum(axis=1), cm.sum(axis=0)
    n = int(cm.sum())
    out = {"accuracy": Estimate.of(proportion(int(tp.sum()), n, confidence)), "ece": ece}
    for i, name in enumerate(labels):
        out[f"recall.{name}"] = Estimate.of(proportion(int(tp[i]), int(actual[i]), confidence))
        out[f"precision.{name}"] = Estimate.of(proportion(int(tp[i]), int(predicted[i]), confidence))
    for key, groups in slices.items():
        for value, s in groups.items():
            hits = int(round(s.accuracy * s.n))
            out[f"slice.{key}.{value}.accuracy"] = Estimate.of(proportion(hits, s.n, confidence))
    if par is not None:
        out["parity_top1_agreement"] = Estimate.of(proportion(par.n - par.flipped, par.n, confidence))
    if latencies_ms:
        for q in (50, 95, 99):
            out[f"latency_p{q}_ms"] = quantile_estimate(latencies_ms, q / 100, confidence)
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
    image_ids: Sequence[str] | None = None,
) -> EvaluationReport:
    """The report over one model's predictions. ``image_ids`` name the images (the sha256 of their
    bytes in staging) so that two reports on the same images can be paired; without them an image
    is named by its position."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(labels):
        raise ValueError(f"expected probabilities of shape (n, {len(labels)}), got {probs.shape}")
    if len(y_true) != len(probs):
        raise ValueError(f"{len(y_true)} labels but {len(probs)} predictions")
    ids = [str(i) for i in image_ids] if image_ids is not None else [f"#{i}" for i in range(len(y_true))]
    if len(ids) != len(y_true):
        raise ValueError(f"{len(ids)} image ids for {len(y_true)} images")
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, len(labels))
    par = (
        parity(
            reference_probs, probs, chosen_precision=precision, labels=labels, y_true=y_true, image_ids=ids
        )
        if reference_probs is not None
        else None
    )
    slices = slice_metrics(y_true, y_pred, metas) if metas else {}
    ece = ece_interval(y_true, probs, n_bins)
    return EvaluationReport(
        labels=list(labels),
        n=len(y_true),
        accuracy=float((np.asarray(y_true) == y_pred).mean()) if len(y_true) else 0.0,
        per_class=per_class_metrics(cm, labels),
        confusion_matrix=cm.tolist(),
        ece=ece.value,
        latency=latency_summary(latencies_ms, transport) if latencies_ms else None,
        parity=par,
        slices=slices,
        model_digest=model_digest,
        precision=precision,
        test_set_digest=test_set_digest,
        estimates=estimates_for(cm, labels, slices, par, latencies_ms, ece),
        image_ids=ids,
        y_true=[int(v) for v in y_true],
        y_pred=[int(v) for v in y_pred],
    )


# -- the human-readable report ----------------------------------------------------------------------------
def _est(
    report: EvaluationReport, name: str, value: float, digits: int = 3, unit: str = "", what: str = ""
) -> str:
    """``value (n=.., 95% CI ..)`` when the report has the estimate (older reports: the value alone)."""
    e = report.estimate(name)
    return e.text(digits, unit, what) if e else f"{value:.{digits}f}{' ' + unit if unit else ''}"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (``max |diff|`` would split the row)."""
    return text.replace("|", "\\|").replace("\n", " ")


def render_rules(decision: Any | None) -> list[str]:
    """The gate's verdict and its rules as Markdown lines (none without a decision)."""
    if decision is None:
        return []
    lines = [f"**Gate: {'PASS' if decision.passed else 'FAIL'}**", ""]
    lines += ["| rule | result | detail |", "|---|---|---|"]
    lines += [f"| {r.name} | {r.status} | {_cell(r.detail)} |" for r in decision.results]
    return [*lines, ""]


def load_report(data: dict[str, Any]) -> Any:
    """An evaluation report from its JSON form: a :class:`EvaluationReport`, or a detector's
    :class:`~edgeloop.pipelines.detection_evaluation.DetectionReport`."""
    if data.get("task") == "detection":
        from edgeloop.pipelines.detection_evaluation import DetectionReport

        return DetectionReport.model_validate(data)
    return EvaluationReport.model_validate(data)


def render_markdown(
    report: EvaluationReport,
    decision: Any | None = None,
    champion: EvaluationReport | None = None,
    title: str = "Staging evaluation",
) -> str:
    """The evidence report a reviewer reads before approving (also stored in MLflow): every figure
    with the number of images (or requests) behind it and its 95 % interval."""
    lines = [f"# {title}", "", *render_rules(decision)]
    champ = (
        f" (champion on the same images: {_est(champion, 'accuracy', champion.accuracy, 4)})"
        if champion
        else ""
    )
    lines += [
        f"- test images: {report.n}"
        + (f" (test set {report.test_set_digest[:12]})" if report.test_set_digest else ""),
        f"- accuracy: {_est(report, 'accuracy', report.accuracy, 4)}{champ}",
        f"- expected calibration error: {_est(report, 'ece', report.ece, 4)}",
        f"- precision: {report.precision}"
        + (f", model digest {report.model_digest[:12]}" if report.model_digest else ""),
    ]
    if report.latency:
        lt = report.latency
        lines.append(
            f"- latency through the staging server ({lt.transport}, n={lt.n} requests): "
            f"p50 {_est(report, 'latency_p50_ms', lt.p50_ms, 2, 'ms')}, "
            f"p95 {_est(report, 'latency_p95_ms', lt.p95_ms, 2, 'ms')}, "
            f"p99 {_est(report, 'latency_p99_ms', lt.p99_ms, 2, 'ms')}"
        )
    if report.parity:
        pa = report.parity
        lines.append(
            f"- parity {pa.chosen_precision} vs {pa.reference_precision}: {pa.flipped} of {pa.n} images flipped "
            f"top-1, agreement {_est(report, 'parity_top1_agreement', pa.top1_agreement, 4)}, "
            f"max |diff| {pa.max_abs_diff:.2e}"
        )
    lines += [
        "",
        "## Per class (95 % Wilson intervals)",
        "",
        "| class | support | recall | precision | f1 |" + (" champion recall |" if champion else ""),
        "|---|---|---|---|---|" + ("---|" if champion else ""),
    ]
    for name, m in report.per_class.items():
        row = (
            f"| {name} | {m.support} | {_est(report, f'recall.{name}', m.recall)} | "
            f"{_est(report, f'precision.{name}', m.precision)} | {m.f1:.3f} |"
        )
        if champion:
            cm_ = champion.per_class.get(name)
            row += f" {_est(champion, f'recall.{name}', cm_.recall)} |" if cm_ else " - |"
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
    if report.parity and report.parity.flipped:
        pa = report.parity
        shown = f" (first {len(pa.flips)})" if len(pa.flips) < pa.flipped else ""
        lines += [
            "",
            f"## Flipped images: {pa.chosen_precision} vs {pa.reference_precision}{shown}",
            "",
            f"| image | label | {pa.reference_precision} | {pa.chosen_precision} |",
            "|---|---|---|---|",
        ]
        lines += [f"| {f.image[:16]} | {f.label} | {f.reference} | {f.chosen} |" for f in pa.flips]
    if report.slices:
        lines += ["", "## Slices", "", "| slice | n | accuracy (95 % CI) |", "|---|---|---|"]
        for key, groups in report.slices.items():
            for value, s in groups.items():
                e = report.estimate(f"slice.{key}.{value}.accuracy")
                ci = f" ({e.low:.3f}-{e.high:.3f})" if e else ""
                lines.append(f"| {key}={value} | {s.n} | {s.accuracy:.3f}{ci} |")
    return "\n".join(lines) + "\n"
