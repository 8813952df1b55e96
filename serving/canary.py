"""Evidence for promoting a canary or shadow: how it compares with the champion on live traffic.

The server logs, for a sampled image, the answering version's record and the other version's
record under one ``request_id`` (a shadow runs champion traffic; the champion re-runs the
sampled canary traffic), so the two versions are compared on the same images:

* **agreement**: share of paired images with the same top-1 label, with a Wilson 95 % lower bound;
* **confidence**: mean top-1 score of each, and the paired mean difference with its 95 % bound;
* **traffic**: requests each version answered, from the server's ``/metrics`` when given.

``edgeloop approve`` calls :func:`canary_evidence` (or :func:`compare_versions` over records it
read) and refuses to move the alias unless :meth:`CanaryReport.check` returns no reasons.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from edgeloop.core.errors import EdgeloopError
from edgeloop.core.payload_log import PayloadRecord, read_window

if TYPE_CHECKING:
    from edgeloop.core.blob import BlobStore

_Z = 1.959963984540054  # two-sided 95 %


@dataclass
class CanaryReport:
    model: str
    champion: str
    candidate: str
    pairs: int  # images both versions answered (same request id and image)
    agreement: float  # top-1 labels equal, share of pairs
    agreement_low: float  # Wilson 95 % lower bound
    champion_confidence: float  # mean top-1 score over the pairs
    candidate_confidence: float
    confidence_delta: float  # candidate - champion, paired mean
    confidence_delta_low: float  # its 95 % lower bound
    candidate_requests: int | None = None  # answered by the candidate, from /metrics
    champion_requests: int | None = None

    def check(
        self, min_pairs: int = 200, min_agreement: float = 0.95, max_confidence_drop: float = 0.02
    ) -> list[str]:
        """Why the candidate may not be promoted yet; empty when it may.

        ``min_agreement`` is held against the lower bound, so a small sample cannot pass by luck;
        the confidence may drop by at most ``max_confidence_drop`` (at the 95 % bound)."""
        reasons = []
        if self.pairs < min_pairs:
            reasons.append(
                f"only {self.pairs} images compared with the champion, {min_pairs} needed: "
                "let the canary or shadow run longer (or raise --payload-log-rate)"
            )
            return reasons
        if self.agreement_low < min_agreement:
            reasons.append(
                f"top-1 agreement with the champion is {self.agreement:.3f} "
                f"(95% lower bound {self.agreement_low:.3f} < {min_agreement})"
            )
        if self.confidence_delta_low < -max_confidence_drop:
            reasons.append(
                f"confidence drops by {-self.confidence_delta:.3f} against the champion "
                f"(95% bound {-self.confidence_delta_low:.3f} > {max_confidence_drop})"
            )
        return reasons

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def wilson_low(successes: int, n: int, z: float = _Z) -> float:
    if n == 0:
        return 0.0
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def compare_versions(
    records: Iterable[PayloadRecord],
    champion: str,
    candidate: str,
    model: str = "",
    metrics_text: str | None = None,
) -> CanaryReport:
    """Pair the two versions' records by (request id, image) and compare them."""
    by_version: dict[str, dict[tuple[str, str], PayloadRecord]] = {champion: {}, candidate: {}}
    for r in records:
        if r.request_id and r.version in by_version:
            by_version[r.version][(r.request_id, r.image_sha256)] = r
    a, b = by_version[champion], by_version[candidate]
    keys = sorted(a.keys() & b.keys())
    n = len(keys)
    agree = sum(a[k].label == b[k].label for k in keys)
    deltas = [b[k].score - a[k].score for k in keys]
    mean_delta = sum(deltas) / n if n else 0.0
    sd = math.sqrt(sum((d - mean_delta) ** 2 for d in deltas) / (n - 1)) if n > 1 else 0.0
    requests = routed_requests(metrics_text, model) if metrics_text else {}
    return CanaryReport(
        model=model,
        champion=champion,
        candidate=candidate,
        pairs=n,
        agreement=agree / n if n else 0.0,
        agreement_low=wilson_low(agree, n),
        champion_confidence=sum(a[k].score for k in keys) / n if n else 0.0,
        candidate_confidence=sum(b[k].score for k in keys) / n if n else 0.0,
        confidence_delta=mean_delta,
        confidence_delta_low=mean_delta - _Z * sd / math.sqrt(n) if n else 0.0,
        candidate_requests=requests.get(candidate) if metrics_text else None,
        champion_requests=requests.get(champion) if metrics_text else None,
    )


def routed_requests(metrics_text: str, model: str) -> dict[str, int]:
    """Requests answered per version of ``model``, from a scrape of the server's ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, int] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "edgeloop_serving_routed_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("model") == model:
                v = sample.labels["version"]
                out[v] = out.get(v, 0) + int(sample.value)
    return out


def canary_evidence(
    store: BlobStore,
    container: str,
    model: str,
    champion: str,
    candidate: str,
    start: datetime,
    end: datetime,
    metrics_text: str | None = None,
) -> CanaryReport:
    """:func:`compare_versions` over the payload log window ``[start, end)`` of ``model``."""
    return compare_versions(
        read_window(store, container, model, start, end), champion, candidate, model, metrics_text
    )


class CanaryNotReady(EdgeloopError):
    """The candidate has not yet shown on live traffic that it may replace the champion."""


def require_canary(report: CanaryReport, min_pairs: int, **limits: float) -> str:
    """The one-line evidence ``edgeloop approve`` signs; raises :class:`CanaryNotReady` with the reasons."""
    reasons = report.check(min_pairs=min_pairs, **limits)
    if reasons:
        raise CanaryNotReady(
            f"version {report.candidate} is not approved yet against champion version {report.champion}: "
            + "; ".join(reasons)
        )
    return (
        f"live traffic vs champion v{report.champion}: {report.pairs} images, top-1 agreement "
        f"{report.agreement:.3f} (95% low {report.agreement_low:.3f}), confidence {report.confidence_delta:+.3f}"
    )
