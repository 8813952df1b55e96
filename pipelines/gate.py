"""The automatic gate: rules over the staging evaluation that a candidate must pass before a human sees it.

Each rule yields a :class:`RuleResult` with a reason a reviewer can read; the
decision passes only if every rule passes. The champion comparison uses the
champion's evaluation on the *same* test images (re-evaluated in staging), so
a regression is measured, not inferred from numbers on another test set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # this module is imported by the pipeline compiler: keep it free of numpy
    from edgeloop.pipelines.evaluation import EvaluationReport


class GateThresholds(BaseModel):
    """The gate's thresholds. Their defaults are the defaults of the pipeline parameters of the
    same names (:data:`GATE`; ``tests/unit/pipelines/test_pipeline_defaults.py`` checks they agree)."""

    model_config = ConfigDict(frozen=True)

    min_accuracy: float = Field(default=0.70, ge=0, le=1)
    max_regression: float = Field(
        default=0.02, ge=0, le=1, description="allowed drop vs the champion (accuracy, recall)"
    )
    min_class_recall: float = Field(default=0.50, ge=0, le=1, description="recall floor for every class")
    class_recall_floors: dict[str, float] = Field(default_factory=dict, description="per-class overrides")
    max_latency_p95_ms: float = Field(default=250.0, gt=0)
    max_ece: float = Field(default=0.25, ge=0, le=1)
    max_parity_diff: float = Field(
        default=0.15, ge=0, description="max |p_chosen - p_fp32| over the test images"
    )
    min_top1_agreement: float = Field(default=0.98, ge=0, le=1)


GATE = GateThresholds()
"""The defaults, as one object the pipeline's signature reads (``min_accuracy: float = GATE.min_accuracy``)."""


class RuleResult(BaseModel):
    name: str
    passed: bool
    detail: str


class GateDecision(BaseModel):
    passed: bool
    results: list[RuleResult]

    @property
    def reasons(self) -> list[str]:
        """Why it failed: one line per failed rule (empty when it passed)."""
        return [f"{r.name}: {r.detail}" for r in self.results if not r.passed]

    def summary(self) -> str:
        return "passed all rules" if self.passed else "; ".join(self.reasons)


def evaluate_rules(
    candidate: EvaluationReport,
    champion: EvaluationReport | None = None,
    thresholds: GateThresholds | None = None,
) -> GateDecision:
    t = thresholds or GATE
    results: list[RuleResult] = []

    def rule(name: str, ok: bool, detail: str) -> None:
        results.append(RuleResult(name=name, passed=bool(ok), detail=detail))

    rule(
        "min_accuracy",
        candidate.accuracy >= t.min_accuracy,
        f"accuracy {candidate.accuracy:.4f} {'>=' if candidate.accuracy >= t.min_accuracy else '<'} {t.min_accuracy:.4f}",
    )

    low = []
    for name, m in candidate.per_class.items():
        floor = t.class_recall_floors.get(name, t.min_class_recall)
        if m.recall < floor:
            low.append(f"{name} {m.recall:.3f} < {floor:.3f}")
    rule(
        "class_recall_floor",
        not low,
        "; ".join(low) if low else f"every class >= its floor (default {t.min_class_recall:.3f})",
    )

    rule("max_ece", candidate.ece <= t.max_ece, f"ECE {candidate.ece:.4f} (max {t.max_ece:.4f})")

    if candidate.latency is None:
        rule("latency_budget", False, "no latency was measured through the staging server")
    else:
        p95 = candidate.latency.p95_ms
        rule(
            "latency_budget",
            p95 <= t.max_latency_p95_ms,
            f"p95 {p95:.2f} ms (budget {t.max_latency_p95_ms:.2f} ms)",
        )

    if candidate.parity is not None:
        pa = candidate.parity
        ok = pa.max_abs_diff <= t.max_parity_diff and pa.top1_agreement >= t.min_top1_agreement
        rule(
            "precision_parity",
            ok,
            f"{pa.chosen_precision} vs {pa.reference_precision}: max |diff| {pa.max_abs_diff:.2e} (max {t.max_parity_diff:.2e}), "
            f"top-1 agreement {pa.top1_agreement:.4f} (min {t.min_top1_agreement:.4f})",
        )

    if champion is None:
        rule("no_regression_vs_champion", True, "no champion yet: first model")
    else:
        regressions = []
        drop = champion.accuracy - candidate.accuracy
        if drop > t.max_regression:
            regressions.append(
                f"accuracy {candidate.accuracy:.4f} vs champion {champion.accuracy:.4f} "
                f"(drop {drop:.4f} > {t.max_regression:.4f})"
            )
        for name, m in candidate.per_class.items():
            c = champion.per_class.get(name)
            if c is not None and c.recall - m.recall > t.max_regression:
                regressions.append(f"recall[{name}] {m.recall:.3f} vs champion {c.recall:.3f}")
        rule(
            "no_regression_vs_champion",
            not regressions,
            "; ".join(regressions)
            if regressions
            else f"within {t.max_regression:.4f} of the champion (accuracy {champion.accuracy:.4f})",
        )

    return GateDecision(passed=all(r.passed for r in results), results=results)
