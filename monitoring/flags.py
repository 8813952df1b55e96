"""Per-image flags and the budgeted, diverse selection of images worth a human label.

An image is flagged when the model was unsure (low confidence, small top-1/top-2 margin)
or when its embedding lies far from the reference embeddings (kNN distance above the
reference quantile: out of distribution). Thresholds come from the reference profile.

:func:`select_for_labeling` keeps at most ``budget`` images per window: candidates are
ranked by value, the top ones form a pool, and a greedy farthest-point pass on the
embeddings picks a diverse subset (no ten near-copies of the same dark frame); the
result is ordered by value, highest first. Deterministic: same inputs, same selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeloop.monitoring.profile import ReferenceProfile, confidence_and_margin

LOW_CONFIDENCE = "low_confidence"
SMALL_MARGIN = "small_margin"
OOD = "out_of_distribution"


@dataclass
class Flag:
    index: int  # row in the window
    sha256: str
    reasons: list[str]
    value: float  # priority: higher first
    confidence: float
    margin: float
    ood_score: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return ",".join(self.reasons)


def flag_images(
    profile: ReferenceProfile,
    probabilities: np.ndarray,
    embeddings: np.ndarray,
    sha256s: Sequence[str],
    ood_scores: np.ndarray | None = None,
) -> list[Flag]:
    """One :class:`Flag` per image that trips at least one rule (unsorted)."""
    conf, margin = confidence_and_margin(probabilities)
    ood = profile.ood_scores(embeddings) if ood_scores is None else np.asarray(ood_scores)
    ood_thr = max(profile.ood_threshold, 1e-12)
    flags = []
    for i, sha in enumerate(sha256s):
        reasons = []
        if conf[i] < profile.low_confidence_threshold:
            reasons.append(LOW_CONFIDENCE)
        if margin[i] < profile.small_margin_threshold:
            reasons.append(SMALL_MARGIN)
        if ood[i] > ood_thr:
            reasons.append(OOD)
        if not reasons:
            continue
        # value: uncertainty (1 - margin, in [0, 1]) plus novelty (distance in units of the OOD threshold, capped)
        value = float((1.0 - margin[i]) + min(ood[i] / ood_thr, 3.0))
        flags.append(Flag(i, sha, reasons, value, float(conf[i]), float(margin[i]), float(ood[i])))
    return flags


def select_for_labeling(
    flags: Sequence[Flag], embeddings: np.ndarray, budget: int, pool_factor: int = 4
) -> list[Flag]:
    """At most ``budget`` flags, one per image (sha256), diverse, highest value first."""
    if budget <= 0 or not flags:
        return []
    best: dict[str, Flag] = {}
    for f in flags:  # the same image served twice counts once, with its best value
        if f.sha256 not in best or f.value > best[f.sha256].value:
            best[f.sha256] = f
    ranked = sorted(best.values(), key=lambda f: (-f.value, f.sha256))
    pool = ranked[: max(budget, pool_factor * budget)]
    if len(pool) <= budget:
        return pool
    emb = np.asarray(embeddings, dtype=np.float64)[[f.index for f in pool]]
    values = np.array([f.value for f in pool])
    chosen = [0]  # start from the most valuable
    mind = np.linalg.norm(emb - emb[0], axis=1)
    scale = float(mind.max()) or 1.0
    vmin, vspan = values.min(), (np.ptp(values) or 1.0)
    while len(chosen) < budget:
        # farthest from everything chosen so far, nudged by value so that ties go to the more valuable image
        score = mind / scale + 0.25 * (values - vmin) / vspan
        score[chosen] = -np.inf
        nxt = int(np.argmax(score))
        chosen.append(nxt)
        mind = np.minimum(mind, np.linalg.norm(emb - emb[nxt], axis=1))
    return sorted((pool[i] for i in chosen), key=lambda f: (-f.value, f.sha256))
