"""The gate after a round of relabeling: a candidate that learned a new site's images (the "relabel"
source slice) without losing the rest is approved; one that pays for it with the rest is not."""

from __future__ import annotations

import numpy as np

from edgeloop.pipelines.evaluation import evaluate_predictions
from edgeloop.pipelines.gate import GateThresholds, evaluate_rules

LABELS = ["ok", "scratch", "dent", "stain"]
DEMO_GATE = GateThresholds(min_accuracy=0.9, min_class_recall=0.8)  # the demo's thresholds
Y_SAMPLE = [0, 1, 2, 3] * 60  # 240 in-distribution test images
Y_SITE = [0, 1, 2, 3] * 5  # 20 relabeled images of the new site in the test split
Y = Y_SAMPLE + Y_SITE
METAS = [{"source": "sample"}] * len(Y_SAMPLE) + [{"source": "relabel"}] * len(Y_SITE)
IDS = [f"img-{i}" for i in range(len(Y))]


def report(pred: list[int]):
    probs = np.full((len(pred), 4), 0.1 / 3)
    probs[np.arange(len(pred)), pred] = 0.9
    return evaluate_predictions(
        LABELS, Y, probs, metas=METAS, latencies_ms=[5.0] * len(Y), reference_probs=probs, image_ids=IDS
    )


def wrong(y: list[int], positions: list[int]) -> list[int]:
    out = list(y)
    for i in positions:
        out[i] = (y[i] + 1) % 4
    return out


CHAMPION = report(wrong(Y_SAMPLE, [5, 77]) + [2] * len(Y_SITE))  # calls every new-site image "dent"


def test_a_candidate_that_learns_the_new_site_without_regressing_is_approved():
    cand = report(wrong(Y_SAMPLE, [5, 130, 201]) + wrong(Y_SITE, [9]))
    site_before = CHAMPION.estimate("slice.source.relabel.accuracy")
    site_after = cand.estimate("slice.source.relabel.accuracy")
    assert site_before.n == site_after.n == 20  # the shifted slice, with its n, in the report
    assert site_before.value == 0.25 and site_after.value == 0.95 and site_after.low > site_before.high
    decision = evaluate_rules(cand, CHAMPION, DEMO_GATE)
    assert decision.passed, decision.reasons
    rule = next(r for r in decision.results if r.name == "no_regression_vs_champion")
    assert "2 right only by the champion, 15 only by the candidate" in rule.detail


def test_a_candidate_that_pays_for_the_new_site_with_the_rest_is_rejected():
    cand = report(wrong(Y_SAMPLE, list(range(0, 240, 8))) + list(Y_SITE))  # 30 in-distribution misses
    assert cand.estimate("slice.source.relabel.accuracy").value == 1.0
    decision = evaluate_rules(cand, CHAMPION, DEMO_GATE)
    assert not decision.passed
    assert any("no_regression_vs_champion" in r for r in decision.reasons)
