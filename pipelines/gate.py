"""The automatic gate: rules over the staging evaluation that a candidate must pass before a human sees it.

Each rule yields a :class:`RuleResult` with a reason a reviewer can read, the number of
observations it rests on and the 95 % interval of the figure it compares; the decision passes
only if every rule passes.

Evidence first: an evaluation on fewer than ``min_eval_images`` test images fails the gate with
"insufficient evidence" and the rules that would judge its figures are reported, not decided
(on 26 images one image moves accuracy by 4 points: a verdict there is noise).

The champion comparison uses the champion's evaluation on the *same* test images (re-evaluated
in staging) and is a paired test: only the images one model gets right and the other wrong
count, and a regression is called when the candidate loses more than ``max_regression`` *and*
McNemar's exact test says the loss is not chance (p < ``regression_alpha``; per class the level
is divided by the number of classes, Bonferroni). A one-image difference is never a regression.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from edgeloop.components.stats import (
    CONFIDENCE,
    mcnemar_exact,
    newcombe_paired_interval,
    proportion,
)

if TYPE_CHECKING:  # this module is imported by the pipeline compiler: keep it free of numpy
    from edgeloop.components.coco_eval import Detection
    from edgeloop.core.boxes import Box
    from edgeloop.pipelines.detection_evaluation import DetectionReport
    from edgeloop.pipelines.evaluation import Estimate, EvaluationReport, LatencySummary

MAX_FLIPS_IN_DETAIL = 10


class GateThresholds(BaseModel):
    """The gate's thresholds. Their defaults are the defaults of the pipeline parameters of the
    same names (:data:`GATE`; ``tests/unit/pipelines/test_pipeline_defaults.py`` checks they agree)."""

    model_config = ConfigDict(frozen=True)

    min_accuracy: float = Field(default=0.70, ge=0, le=1, description="a classifier's test accuracy")
    min_map_50: float = Field(default=0.70, ge=0, le=1, description="a detector's test mAP@0.5")
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
    min_eval_images: int = Field(
        default=200,
        ge=0,
        description="fewer test images than this: the gate fails for insufficient evidence (at 200 a "
        "95 % interval of an accuracy near 0.9 is about +-4 points)",
    )
    regression_alpha: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="significance level of the paired (McNemar exact) test against the champion",
    )


GATE = GateThresholds()
"""The defaults, as one object the pipeline's signature reads (``min_accuracy: float = GATE.min_accuracy``)."""


class RuleResult(BaseModel):
    name: str
    passed: bool
    detail: str
    n: int | None = Field(default=None, description="observations the rule rests on (images, requests)")
    value: float | None = None
    ci95: tuple[float, float] | None = None
    threshold: float | None = None
    p_value: float | None = None
    decided: bool = Field(default=True, description="False: too little evidence to judge (never a pass)")

    @property
    def status(self) -> str:
        if not self.decided:
            return "not decided"
        return "pass" if self.passed else "FAIL"


class GateDecision(BaseModel):
    passed: bool
    results: list[RuleResult]

    @property
    def reasons(self) -> list[str]:
        """Why it failed: one line per failed rule that was decided (empty when it passed)."""
        failed = [r for r in self.results if not r.passed]
        return [f"{r.name}: {r.detail}" for r in ([r for r in failed if r.decided] or failed)]

    def summary(self) -> str:
        return "passed all rules" if self.passed else "; ".join(self.reasons)


def _text(e: Estimate | None, value: float, n: int, digits: int = 3, unit: str = "", what: str = "") -> str:
    if e is not None:
        return e.text(digits, unit, what)
    return f"{value:.{digits}f}{' ' + unit if unit else ''} (n={n})"


def _ci(e: Estimate | None) -> tuple[float, float] | None:
    return (e.low, e.high) if e is not None else None


class _RuleBook:
    """The rules of one decision; a rule judged on the test images is not decided (and fails) while
    they are fewer than ``min_eval_images``."""

    def __init__(self, n: int, t: GateThresholds):
        self.t, self.n, self.enough = t, n, n >= t.min_eval_images
        self.results: list[RuleResult] = []

    def rule(
        self, name: str, ok: bool, detail: str, *, judged_on_test_images: bool = True, **evidence
    ) -> None:
        decided = self.enough or not judged_on_test_images
        if not decided:
            detail = f"not decided (insufficient evidence): {detail}"
        self.results.append(
            RuleResult(name=name, passed=bool(ok) and decided, detail=detail, decided=decided, **evidence)
        )

    def evidence(self, figure: str = "accuracy") -> None:
        t, n = self.t, self.n
        self.rule(
            "min_eval_images",
            self.enough,
            f"{n} test images >= {t.min_eval_images}"
            if self.enough
            else f"insufficient evidence: {n} test images < min_eval_images {t.min_eval_images}; "
            f"one image would move {figure} by {1 / max(n, 1):.1%}. Label more images (or give the "
            "test split a larger share) before a gate decides",
            judged_on_test_images=False,
            n=n,
            threshold=float(t.min_eval_images),
        )

    def latency(self, latency: LatencySummary | None, p95: Estimate | None) -> None:
        t = self.t
        if latency is None:
            self.rule(
                "latency_budget",
                False,
                "no latency was measured through the staging server",
                judged_on_test_images=False,
            )
            return
        self.rule(
            "latency_budget",
            latency.p95_ms <= t.max_latency_p95_ms,
            f"p95 {_text(p95, latency.p95_ms, latency.n, 2, 'ms', 'requests')} "
            f"(budget {t.max_latency_p95_ms:.2f} ms)",
            judged_on_test_images=False,
            n=latency.n,
            value=latency.p95_ms,
            ci95=_ci(p95),
            threshold=t.max_latency_p95_ms,
        )

    def decision(self) -> GateDecision:
        return GateDecision(passed=all(r.passed for r in self.results), results=self.results)


def evaluate_rules(
    candidate: EvaluationReport,
    champion: EvaluationReport | None = None,
    thresholds: GateThresholds | None = None,
) -> GateDecision:
    t = thresholds or GATE
    book = _RuleBook(candidate.n, t)
    rule, results, enough = book.rule, book.results, book.enough
    book.evidence()

    acc = candidate.estimate("accuracy")
    ok = candidate.accuracy >= t.min_accuracy
    rule(
        "min_accuracy",
        ok,
        f"accuracy {_text(acc, candidate.accuracy, candidate.n, 4)} "
        f"{'>=' if ok else '<'} {t.min_accuracy:.4f}",
        n=candidate.n,
        value=candidate.accuracy,
        ci95=_ci(acc),
        threshold=t.min_accuracy,
    )

    low, parts = [], []
    for name, m in candidate.per_class.items():
        floor = t.class_recall_floors.get(name, t.min_class_recall)
        shown = f"{name} {_text(candidate.estimate(f'recall.{name}'), m.recall, m.support)}"
        parts.append(shown)
        if m.recall < floor:
            low.append(f"{shown} < {floor:.3f}")
    rule(
        "class_recall_floor",
        not low,
        "; ".join(low)
        if low
        else f"every class >= its floor (default {t.min_class_recall:.3f}): " + "; ".join(parts),
        n=candidate.n,
        threshold=t.min_class_recall,
    )

    ece = candidate.estimate("ece")
    rule(
        "max_ece",
        candidate.ece <= t.max_ece,
        f"ECE {_text(ece, candidate.ece, candidate.n, 4)} (max {t.max_ece:.4f})",
        n=candidate.n,
        value=candidate.ece,
        ci95=_ci(ece),
        threshold=t.max_ece,
    )

    book.latency(candidate.latency, candidate.estimate("latency_p95_ms"))

    if candidate.parity is not None:
        pa = candidate.parity
        n_par = pa.n or candidate.n
        agree = candidate.estimate("parity_top1_agreement")
        ok = pa.max_abs_diff <= t.max_parity_diff and pa.top1_agreement >= t.min_top1_agreement
        flips = ", ".join(
            f"{f.image[:12]} ({f.label}: {f.reference} -> {f.chosen})" for f in pa.flips[:MAX_FLIPS_IN_DETAIL]
        )
        more = f" and {pa.flipped - MAX_FLIPS_IN_DETAIL} more" if pa.flipped > MAX_FLIPS_IN_DETAIL else ""
        rule(
            "precision_parity",
            ok,
            f"{pa.chosen_precision} vs {pa.reference_precision}: {pa.flipped} of {n_par} images flipped top-1"
            + (f" [{flips}{more}]" if pa.flipped else "")
            + f", agreement {_text(agree, pa.top1_agreement, n_par, 4)} (min {t.min_top1_agreement:.4f}); "
            f"max |diff| {pa.max_abs_diff:.2e} (max {t.max_parity_diff:.2e})",
            n=n_par,
            value=pa.top1_agreement,
            ci95=_ci(agree),
            threshold=t.min_top1_agreement,
        )

    if champion is None:
        rule("no_regression_vs_champion", True, "no champion yet: first model", judged_on_test_images=False)
    else:
        results.append(_regression_rule(candidate, champion, t, enough))

    return book.decision()


class PairedComparison(BaseModel):
    """Two models on the same images: ``both`` right, only the ``champion`` right, only the
    ``candidate`` right, ``neither``."""

    n: int
    both: int
    champion_only: int
    candidate_only: int
    neither: int

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[bool, bool]]) -> PairedComparison:
        """From (champion right, candidate right) per image."""
        counts = {(True, True): 0, (True, False): 0, (False, True): 0, (False, False): 0}
        for pair in pairs:
            counts[pair] += 1
        return cls(
            n=sum(counts.values()),
            both=counts[(True, True)],
            champion_only=counts[(True, False)],
            candidate_only=counts[(False, True)],
            neither=counts[(False, False)],
        )

    @property
    def drop(self) -> float:
        """Champion accuracy minus candidate accuracy on these images."""
        return (self.champion_only - self.candidate_only) / self.n if self.n else 0.0

    @property
    def p_value(self) -> float:
        return mcnemar_exact(self.champion_only, self.candidate_only)

    def drop_interval(self, confidence: float = CONFIDENCE) -> tuple[float, float]:
        return newcombe_paired_interval(
            self.both, self.champion_only, self.candidate_only, self.neither, confidence
        )

    def is_regression(self, max_drop: float, alpha: float) -> bool:
        return self.drop > max_drop and self.p_value < alpha

    def text(self, what: str = "images") -> str:
        low, high = self.drop_interval()
        return (
            f"on the same {self.n} {what}: {self.champion_only} right only by the champion, "
            f"{self.candidate_only} only by the candidate; drop {self.drop:+.4f} "
            f"(95% CI {low:+.4f} to {high:+.4f}), McNemar exact p={self.p_value:.3g}"
        )


def paired_comparison(
    candidate: EvaluationReport, champion: EvaluationReport, label: str | None = None
) -> PairedComparison:
    """Pair the two evaluations image by image (by image id); ``label``: only images of that class."""
    cand, champ = candidate.correct_by_image(), champion.correct_by_image()
    if label is not None:
        k = candidate.labels.index(label)
        keep = {i for i, y in zip(candidate.image_ids, candidate.y_true, strict=True) if y == k}
        cand = {i: v for i, v in cand.items() if i in keep}
    return PairedComparison.from_pairs((champ[i], cand[i]) for i in cand if i in champ)


def _paired_result(
    name: str, paired: PairedComparison, t: GateThresholds, passed: bool, detail: str, decided: bool
) -> RuleResult:
    return RuleResult(
        name=name,
        passed=passed,
        detail=detail,
        decided=decided,
        n=paired.n,
        value=paired.drop,
        ci95=paired.drop_interval(),
        threshold=t.max_regression,
        p_value=paired.p_value,
    )


def _regression_rule(
    candidate: EvaluationReport, champion: EvaluationReport, t: GateThresholds, enough: bool
) -> RuleResult:
    name = "no_regression_vs_champion"
    overall = paired_comparison(candidate, champion)
    if overall.n == 0:
        return RuleResult(
            name=name,
            passed=False,
            detail="cannot compare: the champion's evaluation shares no image with the candidate's "
            "(re-evaluate both on the same test images)",
            n=0,
        )
    cand_acc = proportion(overall.both + overall.candidate_only, overall.n)
    champ_acc = proportion(overall.both + overall.champion_only, overall.n)
    head = (
        f"accuracy {cand_acc.text(4)} vs champion {champ_acc.text(4)} {overall.text()}"
        f" (a regression needs drop > {t.max_regression:.4f} and p < {t.regression_alpha:g})"
    )

    def result(passed: bool, detail: str, decided: bool = True) -> RuleResult:
        return _paired_result(name, overall, t, passed, detail, decided)

    if not enough:  # the min_eval_images rule has failed the gate already
        return result(False, f"not decided (insufficient evidence): {head}", decided=False)
    if overall.n < t.min_eval_images:  # e.g. a champion that knows only some of the classes
        return result(
            False,
            f"insufficient evidence: only {overall.n} test images are shared with the champion's "
            f"evaluation (< min_eval_images {t.min_eval_images}): {head}",
        )
    regressions = []
    if overall.is_regression(t.max_regression, t.regression_alpha):
        regressions.append(f"accuracy: {head}")
    per_class_alpha = t.regression_alpha / max(len(candidate.labels), 1)
    for label in candidate.labels:
        if label not in champion.labels:
            continue
        pc = paired_comparison(candidate, champion, label)
        if pc.n and pc.is_regression(t.max_regression, per_class_alpha):
            regressions.append(
                f"recall[{label}] {pc.text(f'{label} images')} (level {per_class_alpha:.3g}, Bonferroni)"
            )
    return result(
        not regressions, "; ".join(regressions) if regressions else f"no significant regression: {head}"
    )


def detection_regression_rule(
    truth: Sequence[Sequence[Box]],
    candidate: Sequence[Sequence[Detection]],
    champion: Sequence[Sequence[Detection]],
    classes: Sequence[str],
    t: GateThresholds = GATE,
    *,
    score_threshold: float | None = None,
    bootstrap: int = 200,
) -> RuleResult:
    """``no_regression_vs_champion`` for detection models, on the same test images: an image is
    right when the line would act rightly on it at the operating threshold (every defect found,
    no false alarm: :func:`~edgeloop.components.coco_eval.image_correct`); the paired test is the
    classification gate's (McNemar exact, drop > ``max_regression``), and the detail gives the
    mAP@0.5 difference with its paired-bootstrap interval."""
    from edgeloop.components.coco_eval import OPERATING_THRESHOLD, image_correct, paired_map_difference

    threshold = OPERATING_THRESHOLD if score_threshold is None else score_threshold
    name = "no_regression_vs_champion"
    if not len(truth) == len(candidate) == len(champion):
        raise ValueError("the candidate, the champion and the ground truth must cover the same images")
    paired = PairedComparison.from_pairs(
        (image_correct(boxes, champ, threshold), image_correct(boxes, cand, threshold))
        for boxes, cand, champ in zip(truth, candidate, champion, strict=True)
    )
    diff, (low, high) = paired_map_difference(truth, candidate, champion, classes, bootstrap=bootstrap)
    head = (
        f"images handled rightly at score >= {threshold:g} {paired.text()}; mAP@0.5 candidate minus "
        f"champion {diff:+.4f} (paired bootstrap 95% CI {low:+.4f} to {high:+.4f}); a regression needs "
        f"drop > {t.max_regression:.4f} and p < {t.regression_alpha:g}"
    )

    def result(passed: bool, detail: str, decided: bool = True) -> RuleResult:
        return _paired_result(name, paired, t, passed, detail, decided)

    if paired.n < t.min_eval_images:
        return result(
            False,
            f"not decided (insufficient evidence): {paired.n} test images "
            f"(< min_eval_images {t.min_eval_images}): {head}",
            decided=False,
        )
    regressed = paired.is_regression(t.max_regression, t.regression_alpha)
    return result(not regressed, ("regression: " if regressed else "") + head)


def evaluate_detection_rules(
    candidate: DetectionReport,
    thresholds: GateThresholds | None = None,
    *,
    truth: Sequence[Sequence[Box]] | None = None,
    predicted: Sequence[Sequence[Detection]] | None = None,
    champion: Sequence[Sequence[Detection]] | None = None,
    champion_version: str | None = None,
    champion_problem: str = "",
) -> GateDecision:
    """The gate for a detector: evidence, ``min_map_50``, ``class_recall_floor`` (recall at the
    operating threshold per class), the latency budget, parity with fp32 (share of images with the
    same detections >= ``min_top1_agreement``) and no regression vs the champion's detections on the
    same images (:func:`detection_regression_rule`). ``champion_problem``: why the champion cannot be
    compared (a classifier under the same registered model): the regression rule fails with it."""
    t = thresholds or GATE
    book = _RuleBook(candidate.n, t)
    book.evidence("the share of images handled rightly")
    e = candidate.estimate("map_50")
    ok = candidate.map_50 >= t.min_map_50
    book.rule(
        "min_map_50",
        ok,
        f"mAP@0.5 {_text(e, candidate.map_50, candidate.n, 4, what='images')} "
        f"{'>=' if ok else '<'} {t.min_map_50:.4f}",
        n=candidate.n,
        value=candidate.map_50,
        ci95=_ci(e),
        threshold=t.min_map_50,
    )
    low, parts = [], []
    for name, recall in candidate.recall_per_class.items():
        if recall is None:
            continue
        floor = t.class_recall_floors.get(name, t.min_class_recall)
        shown = f"{name} {recall:.3f} (n={candidate.boxes_per_class.get(name, 0)} boxes)"
        parts.append(shown)
        if recall < floor:
            low.append(f"{shown} < {floor:.3f}")
    book.rule(
        "class_recall_floor",
        not low,
        f"recall at score >= {candidate.score_threshold:g}: "
        + (
            "; ".join(low)
            if low
            else f"every class >= its floor (default {t.min_class_recall:.3f}): " + "; ".join(parts)
        ),
        n=candidate.boxes,
        threshold=t.min_class_recall,
    )
    book.latency(candidate.latency, candidate.estimate("latency_p95_ms"))
    if candidate.parity is not None:
        pa = candidate.parity
        agree = candidate.estimate("parity_agreement")
        shown = ", ".join(i[:12] for i in pa.images[:MAX_FLIPS_IN_DETAIL])
        book.rule(
            "precision_parity",
            pa.agreement >= t.min_top1_agreement,
            f"{pa.chosen_precision} (served) vs {pa.reference_precision}: {pa.disagreeing} of {pa.n} images "
            f"with other detections at score >= {candidate.score_threshold:g}"
            + (f" [{shown}]" if shown else "")
            + f", agreement {_text(agree, pa.agreement, pa.n, 4)} (min {t.min_top1_agreement:.4f})",
            n=pa.n,
            value=pa.agreement,
            ci95=_ci(agree),
            threshold=t.min_top1_agreement,
        )
    name = "no_regression_vs_champion"
    if champion_problem:
        book.rule(name, False, champion_problem, judged_on_test_images=False)
    elif champion is None:
        book.rule(name, True, "no champion yet: first model", judged_on_test_images=False)
    else:
        if truth is None or predicted is None:
            raise ValueError(
                "a champion comparison needs the test images' boxes and the candidate's detections"
            )
        r = detection_regression_rule(
            truth, predicted, champion, candidate.labels, t, score_threshold=candidate.score_threshold
        )
        if champion_version:
            r = r.model_copy(update={"detail": f"vs champion v{champion_version}: {r.detail}"})
        book.results.append(r)
    return book.decision()
