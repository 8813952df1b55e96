"""Drift detectors with one result shape (alibi-detect style).

Each detector is built with reference data and a significance level ``p_val``;
``predict(x)`` on a window of served data returns a :class:`DriftResult` with
``is_drift``, ``p_val``, ``threshold``, ``distance`` and the detector's ``name``.

* :class:`MMDDrift` - maximum mean discrepancy on embeddings (RBF kernel, median
  heuristic bandwidth), p-value from a seeded permutation test;
* :class:`PSIDrift` - population stability index on a 1-D score (the model's
  confidence), bins at reference quantiles, p-value from the chi-square test of the
  same binned counts;
* :class:`KSDrift` - two-sample Kolmogorov-Smirnov per feature (image statistics) with
  a Bonferroni correction;
* :class:`CategoricalDrift` - chi-square on predicted-class counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

MIN_SAMPLES = 10


@dataclass
class DriftResult:
    name: str
    is_drift: bool
    p_val: float
    threshold: float
    distance: float
    n_ref: int
    n: int
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _too_few(name: str, n_ref: int, n: int, threshold: float) -> DriftResult:
    return DriftResult(
        name,
        False,
        float("nan"),
        threshold,
        float("nan"),
        n_ref,
        n,
        {"skipped": f"window has {n} samples; a test needs at least {MIN_SAMPLES}"},
    )


class MMDDrift:
    """MMD^2 (unbiased) between reference and window embeddings; permutation p-value."""

    def __init__(
        self,
        x_ref: np.ndarray,
        p_val: float = 0.05,
        n_permutations: int = 200,
        sigma: float | None = None,
        max_ref: int = 500,
        max_window: int = 500,
        seed: int = 0,
        name: str = "embedding_mmd",
    ):
        rng = np.random.default_rng(seed)
        x_ref = np.asarray(x_ref, dtype=np.float64)
        if len(x_ref) > max_ref:
            x_ref = x_ref[np.sort(rng.choice(len(x_ref), max_ref, replace=False))]
        self.x_ref = x_ref
        self.p_val = p_val
        self.n_permutations = n_permutations
        self.sigma = sigma
        self.max_window = max_window
        self.seed = seed
        self.name = name

    def predict(self, x: np.ndarray) -> DriftResult:
        x = np.asarray(x, dtype=np.float64)
        n_ref, n = len(self.x_ref), len(x)
        if n < MIN_SAMPLES:
            return _too_few(self.name, n_ref, n, self.p_val)
        rng = np.random.default_rng(self.seed)
        if n > self.max_window:
            x = x[np.sort(rng.choice(n, self.max_window, replace=False))]
        z = np.vstack([self.x_ref, x])
        sq = (z * z).sum(1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
        sigma = self.sigma
        if sigma is None:  # median heuristic over the pooled sample
            iu = np.triu_indices(len(z), k=1)
            med = float(np.median(d2[iu]))
            sigma = math.sqrt(0.5 * med) if med > 0 else 1.0
        k = np.exp(-d2 / (2.0 * sigma * sigma))
        np.fill_diagonal(k, 0.0)
        m_ref, m = len(self.x_ref), len(x)
        labels = np.zeros((len(z), self.n_permutations + 1))
        labels[:m_ref, 0] = 1.0  # column 0: the observed split; others: permutations
        for j in range(1, self.n_permutations + 1):
            labels[rng.permutation(len(z))[:m_ref], j] = 1.0
        ka = k @ labels  # [N, P+1]
        ones = np.ones(len(z))
        s_aa = (labels * ka).sum(0)
        s_all = ones @ ka  # sum over rows of (K a) = 1^T K a
        total = k.sum()
        s_bb = total - 2.0 * s_all + s_aa  # b = 1 - a
        s_ab = s_all - s_aa
        mmd2 = s_aa / (m_ref * (m_ref - 1)) + s_bb / (m * (m - 1)) - 2.0 * s_ab / (m_ref * m)
        stat = float(mmd2[0])
        p = float((1 + np.sum(mmd2[1:] >= stat)) / (1 + self.n_permutations))
        return DriftResult(
            self.name,
            p < self.p_val,
            p,
            self.p_val,
            stat,
            n_ref,
            n,
            {"sigma": sigma, "n_permutations": self.n_permutations, "window_used": m},
        )


class PSIDrift:
    """PSI of a 1-D score over bins at reference quantiles; chi-square p-value on the same bins."""

    def __init__(
        self,
        x_ref: np.ndarray,
        p_val: float = 0.05,
        n_bins: int = 10,
        name: str = "confidence_psi",
        eps: float = 1e-4,
    ):
        self.x_ref = np.asarray(x_ref, dtype=np.float64).ravel()
        self.p_val = p_val
        self.name = name
        self.eps = eps
        inner = np.unique(np.quantile(self.x_ref, np.linspace(0, 1, n_bins + 1)[1:-1]))
        self.edges = np.concatenate([[-np.inf], inner, [np.inf]])
        self.ref_counts = np.histogram(self.x_ref, self.edges)[0]

    def predict(self, x: np.ndarray) -> DriftResult:
        from scipy.stats import chi2_contingency

        x = np.asarray(x, dtype=np.float64).ravel()
        if len(x) < MIN_SAMPLES:
            return _too_few(self.name, len(self.x_ref), len(x), self.p_val)
        counts = np.histogram(x, self.edges)[0]
        r = np.maximum(self.ref_counts / self.ref_counts.sum(), self.eps)
        w = np.maximum(counts / counts.sum(), self.eps)
        psi = float(np.sum((w - r) * np.log(w / r)))
        table = np.vstack([self.ref_counts, counts])
        table = table[:, table.sum(0) > 0]
        p = 1.0 if table.shape[1] < 2 else float(chi2_contingency(table)[1])
        return DriftResult(
            self.name,
            p < self.p_val,
            p,
            self.p_val,
            psi,
            len(self.x_ref),
            len(x),
            {"ref_mean": float(self.x_ref.mean()), "mean": float(x.mean()), "bins": len(self.edges) - 1},
        )


class KSDrift:
    """Two-sample KS per feature, Bonferroni-corrected: drift if any p < p_val / n_features."""

    def __init__(
        self,
        x_ref: np.ndarray,
        p_val: float = 0.05,
        feature_names: Sequence[str] | None = None,
        name: str = "image_stats_ks",
    ):
        self.x_ref = np.asarray(x_ref, dtype=np.float64)
        if self.x_ref.ndim == 1:
            self.x_ref = self.x_ref[:, None]
        self.p_val = p_val
        self.name = name
        self.feature_names = list(feature_names or [f"f{i}" for i in range(self.x_ref.shape[1])])

    def predict(self, x: np.ndarray) -> DriftResult:
        from scipy.stats import ks_2samp

        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
        threshold = self.p_val / self.x_ref.shape[1]
        if len(x) < MIN_SAMPLES:
            return _too_few(self.name, len(self.x_ref), len(x), threshold)
        per: dict[str, dict[str, float]] = {}
        for j, fname in enumerate(self.feature_names):
            res = ks_2samp(self.x_ref[:, j], x[:, j])
            per[fname] = {
                "distance": float(res.statistic),
                "p_val": float(res.pvalue),
                "ref_mean": float(self.x_ref[:, j].mean()),
                "mean": float(x[:, j].mean()),
            }
        p = min(v["p_val"] for v in per.values())
        dist = max(v["distance"] for v in per.values())
        drifted = [f for f, v in per.items() if v["p_val"] < threshold]
        return DriftResult(
            self.name,
            p < threshold,
            p,
            threshold,
            dist,
            len(self.x_ref),
            len(x),
            {"features": per, "drifted_features": drifted},
        )


class CategoricalDrift:
    """Chi-square test of predicted-class counts against the reference; distance = total variation."""

    def __init__(
        self,
        ref_classes: np.ndarray,
        n_classes: int,
        p_val: float = 0.05,
        name: str = "prediction_chi2",
        labels: Sequence[str] | None = None,
    ):
        self.n_classes = n_classes
        self.ref_counts = np.bincount(np.asarray(ref_classes, dtype=int), minlength=n_classes)
        self.p_val = p_val
        self.name = name
        self.labels = list(labels or range(n_classes))

    def predict(self, classes: np.ndarray) -> DriftResult:
        from scipy.stats import chi2_contingency

        classes = np.asarray(classes, dtype=int)
        n_ref = int(self.ref_counts.sum())
        if len(classes) < MIN_SAMPLES:
            return _too_few(self.name, n_ref, len(classes), self.p_val)
        counts = np.bincount(classes, minlength=self.n_classes)
        table = np.vstack([self.ref_counts, counts])
        table = table[:, table.sum(0) > 0]
        p = 1.0 if table.shape[1] < 2 else float(chi2_contingency(table)[1])
        tv = float(0.5 * np.abs(self.ref_counts / n_ref - counts / counts.sum()).sum())
        freq = {str(lbl): float(c / counts.sum()) for lbl, c in zip(self.labels, counts, strict=False)}
        return DriftResult(
            self.name, p < self.p_val, p, self.p_val, tv, n_ref, len(classes), {"frequencies": freq}
        )
