"""Per-image flags and the budgeted, diverse selection of images worth a human label.

An image is flagged when the model was unsure (low confidence, small top-1/top-2 margin)
or when its embedding lies far from the reference embeddings (kNN distance above a
threshold calibrated on held-out reference images at a stated false-flag rate: out of
distribution). Thresholds come from the reference profile.

:func:`select_for_labeling` keeps at most ``budget`` images per window, one per image:

* when the window **drifts**, the budget goes to the images that carry the drift first:
  the out-of-distribution images, ranked by their kNN distance to the reference, with a
  greedy k-center pass on the embeddings so that the picks cover the new region (no ten
  near-copies of the same dark frame); what is left of the budget is filled with the most
  uncertain images;
* otherwise candidates are ranked by value (uncertainty plus novelty), the top ones form a
  pool, and the same k-center pass picks a diverse subset.

The result is ordered by priority (drift carriers first, then value). Deterministic: same
inputs, same selection.
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
    confidence_margin: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[Flag]:
    """One :class:`Flag` per image that trips at least one rule (unsorted). ``confidence_margin``:
    per image, computed elsewhere (a detector's, :func:`~edgeloop.monitoring.profile.detection_summary`)
    instead of from ``probabilities``."""
    conf, margin = confidence_margin or confidence_and_margin(probabilities)
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
    flags: Sequence[Flag],
    embeddings: np.ndarray,
    budget: int,
    pool_factor: int = 4,
    drift: bool = False,
) -> list[Flag]:
    """At most ``budget`` flags, one per image (sha256), diverse; see the module docstring."""
    if budget <= 0 or not flags:
        return []
    best: dict[str, Flag] = {}
    for f in flags:  # the same image served twice counts once, with its best value
        if f.sha256 not in best or f.value > best[f.sha256].value:
            best[f.sha256] = f
    if not drift:
        ranked = sorted(best.values(), key=lambda f: (-f.value, f.sha256))
        chosen = _k_center(ranked[: max(budget, pool_factor * budget)], embeddings, budget)
        return sorted(chosen, key=lambda f: (-f.value, f.sha256))
    carriers = sorted((f for f in best.values() if OOD in f.reasons), key=lambda f: (-f.ood_score, f.sha256))
    picked = _k_center(carriers, embeddings, budget)
    for f in picked:
        f.extra["priority"] = "drift"
    taken = {f.sha256 for f in picked}
    fill = sorted(
        (f for f in best.values() if f.sha256 not in taken), key=lambda f: (-(1.0 - f.margin), f.sha256)
    )
    return picked + fill[: budget - len(picked)]


def _k_center(ranked: Sequence[Flag], embeddings: np.ndarray, k: int) -> list[Flag]:
    """Greedy k-center over ``ranked`` (highest priority first): start from the first, then repeatedly
    take the one farthest from everything taken, ties nudged towards higher priority."""
    pool = list(ranked)
    if len(pool) <= k:
        return pool
    emb = np.asarray(embeddings, dtype=np.float64)[[f.index for f in pool]]
    prio = np.linspace(1.0, 0.0, len(pool))  # rank, not raw value: comparable across orderings
    chosen = [0]
    mind = np.linalg.norm(emb - emb[0], axis=1)
    scale = float(mind.max()) or 1.0
    while len(chosen) < k:
        score = mind / scale + 0.25 * prio
        score[chosen] = -np.inf
        nxt = int(np.argmax(score))
        chosen.append(nxt)
        mind = np.minimum(mind, np.linalg.norm(emb - emb[nxt], axis=1))
    return [pool[i] for i in sorted(chosen)]
