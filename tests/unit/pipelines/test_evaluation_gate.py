"""Staging metrics and the automatic gate, on crafted predictions."""

from __future__ import annotations

import numpy as np
import pytest

from edgeloop.pipelines.evaluation import (
    confusion_matrix,
    evaluate_predictions,
    expected_calibration_error,
    latency_summary,
    parity,
    render_markdown,
    slice_metrics,
)
from edgeloop.pipelines.gate import GateThresholds, evaluate_rules

LABELS = ["ok", "scratch", "dent", "stain"]


def onehot(pred: list[int], conf: float = 0.9, k: int = 4) -> np.ndarray:
    p = np.full((len(pred), k), (1 - conf) / (k - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def report_for(y_true, y_pred, conf=0.9, latency=5.0, metas=None, ref=None):
    probs = onehot(y_pred, conf)
    return evaluate_predictions(
        LABELS,
        y_true,
        probs,
        metas=metas,
        latencies_ms=[latency] * len(y_true),
        reference_probs=probs if ref is None else ref,
    )


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


def test_ece_perfectly_calibrated_and_overconfident():
    # 10 predictions at confidence 0.8, 8 correct: calibrated -> ECE 0
    y = [0] * 10
    pred = [0] * 8 + [1] * 2
    assert expected_calibration_error(y, onehot(pred, 0.8)) == pytest.approx(0.0, abs=1e-9)
    # same hits at confidence 1.0: ECE = |0.8 - 1.0| = 0.2
    assert expected_calibration_error(y, onehot(pred, 1.0)) == pytest.approx(0.2)


def test_latency_percentiles_and_empty():
    s = latency_summary(list(range(1, 101)))
    assert s.p50_ms == pytest.approx(50.5) and s.p99_ms == pytest.approx(99.01) and s.n == 100
    with pytest.raises(ValueError, match="no latency"):
        latency_summary([])


def test_parity_counts_top1_flips():
    ref = onehot([0, 1, 2, 3], 0.9)
    got = ref.copy()
    got[3] = onehot([2], 0.9)[0]
    p = parity(ref, got, chosen_precision="int8")
    assert p.top1_agreement == pytest.approx(0.75) and p.max_abs_diff == pytest.approx(0.9 - 0.1 / 3)
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
    y = [0, 1, 2, 3] * 5
    r = report_for(y, y)
    d = evaluate_rules(r, None, GateThresholds())
    assert d.passed and d.reasons == []
    md = render_markdown(r, d)
    assert "Gate: PASS" in md and "| **stain** |" in md


def test_gate_rejects_candidate_worse_than_champion_with_reasons():
    y = [0, 1, 2, 3] * 5
    champion = report_for(y, y)  # perfect on these images
    worse = list(y)
    worse[3] = worse[7] = worse[11] = 0  # three stains predicted as ok
    cand = report_for(y, worse)
    assert cand.accuracy == pytest.approx(0.85)  # above the absolute floor...
    d = evaluate_rules(cand, champion, GateThresholds(min_accuracy=0.7, min_class_recall=0.3))
    assert not d.passed  # ...but a regression vs the champion
    reasons = " ".join(d.reasons)
    assert "no_regression_vs_champion" in reasons and "recall[stain]" in reasons and "0.8500" in reasons
    # within epsilon is fine
    d2 = evaluate_rules(cand, champion, GateThresholds(min_class_recall=0.3, max_regression=0.7))
    assert d2.passed


def test_gate_floors_latency_ece_parity():
    y = [0, 1, 2, 3] * 5
    pred = list(y)
    pred[2] = 0  # one dent missed: dent recall 0.8
    ref = onehot(pred, 0.9)
    ref[0] = onehot([1], 0.9)[0]  # fp32 disagrees on one image
    r = report_for(y, pred, conf=1.0, latency=500.0, ref=ref)
    t = GateThresholds(class_recall_floors={"dent": 0.9}, max_latency_p95_ms=100, max_ece=0.01)
    d = evaluate_rules(r, None, t)
    failed = {x.name for x in d.results if not x.passed}
    assert failed == {"class_recall_floor", "latency_budget", "max_ece", "precision_parity"}
    assert any("dent 0.800 < 0.900" in x for x in d.reasons)


def test_gate_requires_a_latency_measurement():
    y = [0, 1, 2, 3]
    r = evaluate_predictions(LABELS, y, onehot(y))
    d = evaluate_rules(r)
    assert not d.passed and "latency_budget" in d.reasons[0]


def test_evaluate_predictions_rejects_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        evaluate_predictions(LABELS, [0], np.zeros((1, 3)))
