"""Staging metrics and the automatic gate, on crafted predictions."""

from __future__ import annotations

import numpy as np
import pytest

from edgeloop.components.stats import mcnemar_exact, wilson_interval
from edgeloop.pipelines.evaluation import (
    confusion_matrix,
    ece_interval,
    evaluate_predictions,
    expected_calibration_error,
    latency_summary,
    parity,
    quantile_estimate,
    render_markdown,
    slice_metrics,
)
from edgeloop.pipelines.gate import GateThresholds, evaluate_rules, paired_comparison
from edgeloop.pipelines.registry import GATE_RULE_PREFIX, gate_rule_tags

LABELS = ["ok", "scratch", "dent", "stain"]
Y240 = [0, 1, 2, 3] * 60  # 240 test images: enough evidence for the default min_eval_images (200)


def onehot(pred: list[int], conf: float = 0.9, k: int = 4) -> np.ndarray:
    p = np.full((len(pred), k), (1 - conf) / (k - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def report_for(y_true, y_pred, conf=0.9, latency=5.0, metas=None, ref=None, ids=None):
    probs = onehot(y_pred, conf)
    return evaluate_predictions(
        LABELS,
        y_true,
        probs,
        metas=metas,
        latencies_ms=[latency] * len(y_true),
        reference_probs=probs if ref is None else ref,
        image_ids=ids,
    )


def wrong_at(y: list[int], positions: list[int]) -> list[int]:
    """``y`` with the predictions at ``positions`` moved to the next class."""
    pred = list(y)
    for i in positions:
        pred[i] = (y[i] + 1) % 4
    return pred


def test_confusion_matrix_and_per_class():
    y_true = [0, 0, 1, 1, 2, 3]
    y_pred = [0, 1, 1, 1, 2, 0]
    cm = confusion_matrix(y_true, y_pred, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]]
    r = report_for(y_true, y_pred)
    assert r.accuracy == pytest.approx(4 / 6)
    assert r.per_class["ok"].recall == pytest.approx(0.5) and r.per_class["ok"].precision == pytest.approx(
        0.5
    )
    assert r.per_class["scratch"].precision == pytest.approx(2 / 3) and r.per_class["scratch"].recall == 1.0
    assert r.per_class["stain"].recall == 0.0 and r.per_class["stain"].support == 1


def test_every_figure_has_its_sample_size_and_wilson_interval():
    y = Y240
    pred = wrong_at(y, [3, 7, 11])  # three stains missed
    r = report_for(y, pred, metas=[{"lighting": "dim" if i % 2 else "bright"} for i in range(240)])
    acc = r.estimates["accuracy"]
    assert (acc.n, acc.method) == (240, "wilson") and acc.value == pytest.approx(237 / 240)
    assert (acc.low, acc.high) == pytest.approx(wilson_interval(237, 240))
    stain = r.estimates["recall.stain"]
    assert stain.n == 60 and (stain.low, stain.high) == pytest.approx(wilson_interval(57, 60))
    assert r.estimates["slice.lighting.dim.accuracy"].n == 120
    assert r.estimates["parity_top1_agreement"].n == 240
    assert r.estimates["latency_p95_ms"].n == 240
    flat = r.flat_metrics()
    for name in ("accuracy", "ece", "recall.stain", "precision.ok", "latency_p95_ms"):
        assert {f"{name}.n", f"{name}.ci95_low", f"{name}.ci95_high"} <= set(flat), name
    assert "0.9875 (n=240, 95% CI 0.9639-0.9957)" in render_markdown(r)


def test_ece_perfectly_calibrated_and_overconfident():
    # 10 predictions at confidence 0.8, 8 correct: calibrated -> ECE 0
    y = [0] * 10
    pred = [0] * 8 + [1] * 2
    assert expected_calibration_error(y, onehot(pred, 0.8)) == pytest.approx(0.0, abs=1e-9)
    # same hits at confidence 1.0: ECE = |0.8 - 1.0| = 0.2
    assert expected_calibration_error(y, onehot(pred, 1.0)) == pytest.approx(0.2)


def test_ece_bootstrap_interval_is_seeded_and_brackets_the_value():
    y = Y240
    probs = onehot(wrong_at(y, list(range(0, 240, 10))), 0.97)
    a, b = ece_interval(y, probs), ece_interval(y, probs)
    assert a == b and a.method == "bootstrap" and a.n == 240
    assert a.low <= a.value <= a.high and a.high - a.low > 0


def test_latency_percentiles_and_empty():
    s = latency_summary(list(range(1, 101)))
    assert s.p50_ms == pytest.approx(50.5) and s.p99_ms == pytest.approx(99.01) and s.n == 100
    with pytest.raises(ValueError, match="no latency"):
        latency_summary([])


def test_latency_p95_interval_from_order_statistics():
    e = quantile_estimate(list(range(1, 201)), 0.95)  # 1..200 ms
    assert e.n == 200 and e.method == "order-statistic"
    assert e.low <= e.value <= e.high and (e.low, e.high) == (184.0, 197.0)


def test_parity_counts_and_names_the_flipped_images():
    ref = onehot([0, 1, 2, 3], 0.9)
    got = ref.copy()
    got[3] = onehot([2], 0.9)[0]
    p = parity(ref, got, chosen_precision="int8", labels=LABELS, y_true=[0, 1, 2, 3], image_ids=list("abcd"))
    assert p.top1_agreement == pytest.approx(0.75) and p.max_abs_diff == pytest.approx(0.9 - 0.1 / 3)
    assert (p.n, p.flipped) == (4, 1)
    assert [(f.image, f.label, f.reference, f.chosen) for f in p.flips] == [("d", "stain", "stain", "dent")]
    with pytest.raises(ValueError, match="same shape"):
        parity(ref, got[:2])


def test_slices_per_lighting_and_camera():
    metas = [
        {"lighting": "dim", "camera": "cam-a"},
        {"lighting": "dim", "camera": "cam-b"},
        {"lighting": "bright", "camera": "cam-a"},
        {"camera": "cam-b"},
    ]
    s = slice_metrics([0, 1, 2, 3], [0, 0, 2, 3], metas)
    assert s["lighting"]["dim"].accuracy == 0.5 and s["lighting"]["dim"].n == 2
    assert s["lighting"]["bright"].accuracy == 1.0 and "None" not in s["lighting"]
    assert s["camera"]["cam-b"].accuracy == 0.5


def test_report_digest_stable_and_sensitive():
    a = report_for([0, 1, 2, 3], [0, 1, 2, 3])
    b = report_for([0, 1, 2, 3], [0, 1, 2, 3])
    c = report_for([0, 1, 2, 3], [0, 1, 2, 2])
    assert a.digest() == b.digest() != c.digest()


def test_gate_passes_good_first_model_and_renders_report():
    r = report_for(Y240, Y240)
    d = evaluate_rules(r, None, GateThresholds())
    assert d.passed and d.reasons == []
    by = {x.name: x for x in d.results}
    assert by["min_accuracy"].n == 240 and by["min_accuracy"].ci95 == pytest.approx(wilson_interval(240, 240))
    md = render_markdown(r, d)
    assert "Gate: PASS" in md and "| **stain** |" in md
    assert "accuracy 1.0000 (n=240, 95% CI 0.9842-1.0000) >= 0.7000" in md


def test_a_20_image_split_is_refused_for_insufficient_evidence():
    """Even a perfect score on 20 images decides nothing: one image is 5 points."""
    y = [0, 1, 2, 3] * 5
    r = report_for(y, y)
    d = evaluate_rules(r, None, GateThresholds())
    assert not d.passed
    assert len(d.reasons) == 1 and d.reasons[0].startswith(
        "min_eval_images: insufficient evidence: 20 test images"
    )
    by = {x.name: x for x in d.results}
    for name in ("min_accuracy", "class_recall_floor", "max_ece", "precision_parity"):
        assert by[name].status == "not decided" and not by[name].passed, name
        assert by[name].detail.startswith("not decided (insufficient evidence)")
    assert "| min_accuracy | not decided |" in render_markdown(r, d)
    # the threshold is a parameter: a user who accepts the noise can lower it, and is then judged
    assert evaluate_rules(r, None, GateThresholds(min_eval_images=20)).passed


def test_one_image_difference_against_the_champion_is_not_a_regression():
    champion = report_for(Y240, Y240)
    cand = report_for(Y240, wrong_at(Y240, [3]))  # one stain missed that the champion gets right
    d = evaluate_rules(cand, champion, GateThresholds(max_regression=0.0))  # no tolerance at all
    rule = next(x for x in d.results if x.name == "no_regression_vs_champion")
    assert d.passed and rule.passed and rule.p_value == 1.0 and rule.n == 240
    assert "1 right only by the champion, 0 only by the candidate" in rule.detail
    assert "McNemar exact p=1" in rule.detail


def test_a_drop_beyond_the_tolerance_that_chance_explains_is_not_a_regression():
    """8 images only the champion gets right, 2 only the candidate: 2.5 points lower, but McNemar's
    exact p is 0.11. Comparing two point estimates would have called it a regression."""
    champion_pred = wrong_at(Y240, [0, 4])
    cand_pred = wrong_at(Y240, [1, 6, 11, 16, 21, 26, 31, 36])  # two per class
    champion, cand = report_for(Y240, champion_pred), report_for(Y240, cand_pred)
    pc = paired_comparison(cand, champion)
    assert (pc.champion_only, pc.candidate_only, pc.n) == (8, 2, 240)
    drop = champion.accuracy - cand.accuracy
    assert drop == pytest.approx(0.025) and drop > GateThresholds().max_regression
    assert pc.p_value == pytest.approx(mcnemar_exact(8, 2)) == pytest.approx(0.109375)
    assert evaluate_rules(cand, champion, GateThresholds()).passed


def test_gate_rejects_a_significant_paired_regression_with_reasons():
    champion = report_for(Y240, Y240)
    cand = report_for(Y240, wrong_at(Y240, [3 + 4 * k for k in range(12)]))  # 12 of 60 stains missed
    assert cand.accuracy == pytest.approx(0.95)  # above the absolute floor...
    d = evaluate_rules(cand, champion, GateThresholds(min_accuracy=0.7, min_class_recall=0.3))
    assert not d.passed  # ...but a regression vs the champion on the same images
    reasons = " ".join(d.reasons)
    assert "no_regression_vs_champion" in reasons and "recall[stain]" in reasons
    assert "12 right only by the champion, 0 only by the candidate" in reasons
    rule = next(x for x in d.results if x.name == "no_regression_vs_champion")
    assert rule.p_value == pytest.approx(2 / 2**12) and rule.ci95[0] > 0
    # a tolerance wider than the drop lets it through
    assert evaluate_rules(cand, champion, GateThresholds(min_class_recall=0.3, max_regression=0.7)).passed


def test_champion_comparison_pairs_images_by_id_not_by_position():
    ids = [f"img{i}" for i in range(240)]
    cand = report_for(Y240, wrong_at(Y240, list(range(12))), ids=ids)
    # the champion saw the same images in reverse order and got the same 12 wrong
    order = list(reversed(range(240)))
    champion = report_for(
        [Y240[i] for i in order],
        [wrong_at(Y240, list(range(12)))[i] for i in order],
        ids=[ids[i] for i in order],
    )
    pc = paired_comparison(cand, champion)
    assert (pc.n, pc.champion_only, pc.candidate_only, pc.neither) == (240, 0, 0, 12)
    assert evaluate_rules(cand, champion, GateThresholds()).passed


def test_gate_floors_latency_ece_parity():
    y = Y240
    pred = wrong_at(y, [2 + 4 * k for k in range(10)])  # ten dents missed: dent recall 50/60
    ref = onehot(pred, 0.9)
    ref[0] = onehot([1], 0.9)[0]  # fp32 disagrees on one image
    r = report_for(y, pred, conf=1.0, latency=500.0, ref=ref, ids=[f"sha{i:03d}" for i in range(240)])
    t = GateThresholds(class_recall_floors={"dent": 0.9}, max_latency_p95_ms=100, max_ece=0.01)
    d = evaluate_rules(r, None, t)
    failed = {x.name for x in d.results if not x.passed}
    assert failed == {"class_recall_floor", "latency_budget", "max_ece", "precision_parity"}
    assert any("dent 0.833 (n=60, 95% CI 0.720-0.907) < 0.900" in x for x in d.reasons)
    parity_detail = next(x.detail for x in d.results if x.name == "precision_parity")
    assert "1 of 240 images flipped top-1" in parity_detail and "sha000 (ok: scratch -> ok)" in parity_detail
    md = render_markdown(r, d)
    assert "## Flipped images: fp32 vs fp32" in md and "| sha000 | ok | scratch | ok |" in md


def test_gate_requires_a_latency_measurement():
    r = evaluate_predictions(LABELS, Y240, onehot(Y240))
    d = evaluate_rules(r)
    assert not d.passed and "latency_budget" in d.reasons[0]


def test_gate_rules_become_registry_tags_with_their_evidence():
    d = evaluate_rules(report_for(Y240, Y240))
    tags = gate_rule_tags(d)
    assert set(tags) == {GATE_RULE_PREFIX + r.name for r in d.results}
    assert tags[GATE_RULE_PREFIX + "min_accuracy"].startswith("pass: accuracy 1.0000 (n=240, 95% CI")


def test_evaluate_predictions_rejects_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        evaluate_predictions(LABELS, [0], np.zeros((1, 3)))
