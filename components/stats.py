"""How sure a number is: sample sizes, 95 % intervals and paired tests for the figures decisions rest on.

Pure Python (``math`` only): the gate (:mod:`edgeloop.pipelines.gate`), which the pipeline compiler
imports, uses it without numpy or torch.

* :func:`wilson_interval`: the Wilson score interval of a proportion (accuracy, recall, agreement).
  It stays inside [0, 1] and keeps its coverage near 0 and 1, where the Wald interval
  (p ± z·sqrt(p(1-p)/n)) collapses to a point (Newcombe 1998, *Two-sided confidence intervals for
  the single proportion*, Stat Med 17:857).
* :func:`mcnemar_exact`: the exact conditional McNemar test for two classifiers scored on the *same*
  images: only the discordant images (one right, the other wrong) carry information, and under
  "no difference" each of them is a fair coin (Fagerland, Lydersen, Laake 2013, BMC Med Res
  Methodol 13:91).
* :func:`newcombe_paired_interval`: a 95 % interval for the difference of two paired proportions
  (Newcombe 1998, *Improved confidence intervals for the difference between binomial proportions
  based on paired data*, Stat Med 17:2635, method 10: square-and-add of Wilson intervals).
* :func:`quantile_interval_ranks`: a distribution-free interval for a quantile (a latency p95) from
  order statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

CONFIDENCE = 0.95


def z_value(confidence: float = CONFIDENCE) -> float:
    """The two-sided standard-normal quantile: 1.95996... for 95 %."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


@dataclass(frozen=True)
class Interval:
    """An estimate with its sample size and a two-sided interval."""

    value: float
    n: int
    low: float
    high: float
    method: str
    confidence: float = CONFIDENCE

    def text(self, digits: int = 3) -> str:
        """``0.976 (n=251, 95% CI 0.949-0.989)``: how every number is shown to a reviewer."""
        return (
            f"{self.value:.{digits}f} (n={self.n}, {self.confidence:.0%} CI "
            f"{self.low:.{digits}f}-{self.high:.{digits}f})"
        )


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for ``successes`` out of ``n``; ``(0.0, 1.0)`` when ``n`` is 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    z = z_value(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact bounds at the edges (the formula gives them up to rounding)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def proportion(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """A proportion with its Wilson interval (value 0.0 when ``n`` is 0)."""
    low, high = wilson_interval(successes, n, confidence)
    return Interval(successes / n if n else 0.0, n, low, high, "wilson", confidence)


def _binom_log_pmf(n: int, p: float) -> list[float]:
    lp, lq = math.log(p), math.log1p(-p)
    lgn = math.lgamma(n + 1)
    return [lgn - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq for i in range(n + 1)]


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (no overflow for large n)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0:
        return 1.0
    if p >= 1:
        return 0.0
    terms = _binom_log_pmf(n, p)[: k + 1]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def _binom_cdfs(n: int, p: float) -> list[float]:
    """[P(X <= k) for k in 0..n]."""
    pmf = [math.exp(t) for t in _binom_log_pmf(n, p)]
    out, acc = [], 0.0
    for v in pmf:
        acc += v
        out.append(min(1.0, acc))
    return out


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact conditional McNemar p-value from the discordant counts.

    ``b``: images only the first model gets right; ``c``: images only the second gets right.
    Under "the models are equally accurate" ``b ~ Binomial(b + c, 1/2)``;
    p = min(1, 2 * P(X <= min(b, c))). With no discordant image p is 1.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * binom_cdf(min(b, c), n, 0.5))


def newcombe_paired_interval(
    both: int, only_first: int, only_second: int, neither: int, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Interval for p1 - p2 of two paired proportions (p1 = (both + only_first) / n,
    p2 = (both + only_second) / n): Newcombe's method 10, with his continuity-free correlation
    estimate (0 when ad - bc lies in [0, n/2])."""
    n = both + only_first + only_second + neither
    if n == 0:
        return -1.0, 1.0
    s1, s2 = both + only_first, both + only_second
    p1, p2 = s1 / n, s2 / n
    l1, u1 = wilson_interval(s1, n, confidence)
    l2, u2 = wilson_interval(s2, n, confidence)
    f1, f2 = n - s1, n - s2
    phi = 0.0
    if s1 and f1 and s2 and f2:
        a = both * neither - only_first * only_second
        if a > n / 2:
            phi = (a - n / 2) / math.sqrt(s1 * f1 * s2 * f2)
        elif a < 0:
            phi = a / math.sqrt(s1 * f1 * s2 * f2)
    d = p1 - p2
    lower = d - math.sqrt(max(0.0, (p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2)))
    upper = d + math.sqrt(max(0.0, (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1)))
    return max(-1.0, lower), min(1.0, upper)


def quantile_interval_ranks(n: int, q: float, confidence: float = CONFIDENCE) -> tuple[int, int]:
    """1-based ranks (l, u) of the order statistics bounding the ``q``-quantile with at least
    ``confidence`` coverage, whatever the distribution: the number of samples below the true
    quantile is Binomial(n, q). Ranks are clamped to [1, n]: with few samples (a p95 from 20
    requests) the bound on that side is the sample extreme and the coverage is lower."""
    if n <= 0:
        raise ValueError("a quantile interval needs at least one sample")
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q}")
    tail = (1 - confidence) / 2
    cdf = _binom_cdfs(n, q)
    # lower: the largest l with P(B <= l - 1) <= tail
    low = 0
    while low < n and cdf[low] <= tail:
        low += 1
    # upper: the smallest u with P(B <= u - 1) >= 1 - tail
    up = low
    while up < n and cdf[up] < 1 - tail:
        up += 1
    return max(1, low), min(n, up + 1)


def metric_fields(
    name: str, value: float, n: int, low: float | None = None, high: float | None = None
) -> dict[str, float]:
    """A metric as flat float fields for a model card or MLflow: ``name``, ``name.n`` and, when an
    interval is known, ``name.ci95_low`` / ``name.ci95_high``."""
    out = {name: float(value), f"{name}.n": float(n)}
    if low is not None and high is not None:
        out |= {f"{name}.ci95_low": float(low), f"{name}.ci95_high": float(high)}
    return out


def proportion_fields(name: str, successes: int, n: int) -> dict[str, float]:
    """:func:`metric_fields` of a proportion with its Wilson interval."""
    p = proportion(successes, n)
    return metric_fields(name, p.value, n, p.low, p.high)


EVIDENCE_SUFFIXES = (".n", ".ci95_low", ".ci95_high")


def fields_text(fields: dict[str, float], name: str, digits: int = 4) -> str:
    """``0.9960 (n=249, 95% CI 0.9776-0.9993)`` from the flat fields :func:`metric_fields` wrote;
    ``n/a`` when the metric is missing."""
    if name not in fields:
        return "n/a"
    text = f"{fields[name]:.{digits}f}"
    if f"{name}.n" in fields:
        n = int(fields[f"{name}.n"])
        low, high = fields.get(f"{name}.ci95_low"), fields.get(f"{name}.ci95_high")
        ci = f", 95% CI {low:.{digits}f}-{high:.{digits}f}" if low is not None and high is not None else ""
        text += f" (n={n}{ci})"
    return text


def is_evidence_field(name: str) -> bool:
    """True for the ``.n`` / ``.ci95_*`` companions :func:`metric_fields` adds."""
    return name.endswith(EVIDENCE_SUFFIXES)
