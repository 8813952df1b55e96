"""A detector's staging report and its whole gate, on constructed boxes: the figures a reviewer
reads (mAP@0.5 with its interval, images handled rightly, recall per class), each rule's verdict,
and the evidence's JSON round trip (what the registry stores and the approval pins)."""

from __future__ import annotations

import json

import pytest

from edgeloop.components.coco_eval import Detection
from edgeloop.core.boxes import Box
from edgeloop.pipelines.detection_evaluation import (
    DetectionReport,
    detection_parity,
    evaluate_detection_predictions,
    render_detection_markdown,
)
from edgeloop.pipelines.evaluation import load_report
from edgeloop.pipelines.gate import GateThresholds, evaluate_detection_rules
from edgeloop.pipelines.staging import StagingResult

CLASSES = ["scratch", "dent", "stain"]
LOOSE = GateThresholds(min_eval_images=0, min_map_50=0.5, min_class_recall=0.5, max_latency_p95_ms=100)


def _truth(n: int) -> list[list[Box]]:
    return [[] if i % 4 == 0 else [Box(CLASSES[i % 3], 10 + i % 5, 20, 20, 16)] for i in range(n)]


def _found(truth, miss: str = "") -> list[list[Detection]]:
    return [[Detection(b, 0.9) for b in boxes if b.label != miss] for boxes in truth]


def _report(truth, predicted, **kw) -> DetectionReport:
    ids = [f"img{i:04d}" for i in range(len(truth))]
    return evaluate_detection_predictions(CLASSES, truth, predicted, image_ids=ids, bootstrap=30, **kw)


def test_a_detector_that_finds_every_defect_passes_with_its_figures_and_intervals():
    truth = _truth(40)
    report = _report(truth, _found(truth), latencies_ms=[5.0 + i % 3 for i in range(40)])
    assert report.map_50 == pytest.approx(1.0) and report.image_accuracy == 1.0
    assert report.recall_per_class == {"scratch": 1.0, "dent": 1.0, "stain": 1.0}
    assert report.confusion_matrix == [[10, 0], [0, 30]]  # rows: image without / with a defect
    acc = report.estimate("image_accuracy")
    assert acc.n == 40 and acc.low < 1.0 == acc.high
    decision = evaluate_detection_rules(report, LOOSE)
    assert decision.passed, decision.summary()
    assert {r.name for r in decision.results} == {
        "min_eval_images",
        "min_map_50",
        "class_recall_floor",
        "latency_budget",
        "no_regression_vs_champion",
    }
    assert "mAP@0.5 " in report.headline() and "images handled rightly" in report.headline()


def test_a_class_never_found_fails_its_recall_floor_and_the_map_floor_names_the_figure():
    truth = _truth(40)
    report = _report(truth, _found(truth, miss="stain"), latencies_ms=[5.0])
    assert report.recall_per_class["stain"] == 0.0 and report.ap_50["stain"] == 0.0
    decision = evaluate_detection_rules(report, LOOSE.model_copy(update={"min_map_50": 0.9}))
    failed = {r.name: r.detail for r in decision.results if not r.passed}
    assert set(failed) == {"min_map_50", "class_recall_floor"}
    assert "stain 0.000" in failed["class_recall_floor"] and "< 0.500" in failed["class_recall_floor"]
    assert "< 0.9000" in failed["min_map_50"]


def test_too_few_test_images_leave_the_figures_undecided_and_the_gate_failed():
    truth = _truth(12)
    report = _report(truth, _found(truth), latencies_ms=[5.0])
    decision = evaluate_detection_rules(report, GateThresholds(min_eval_images=200))
    assert not decision.passed
    by = {r.name: r for r in decision.results}
    assert (
        not by["min_eval_images"].passed
        and "insufficient evidence: 12 test images" in by["min_eval_images"].detail
    )
    assert not by["min_map_50"].decided and by["latency_budget"].decided


def test_served_detections_that_differ_from_fp32_fail_parity_naming_the_images():
    truth = _truth(40)
    reference = _found(truth)
    served = [list(d) for d in reference]
    served[1], served[2] = [], [Detection(Box("dent", 70, 70, 10, 10), 0.8)]
    ids = [f"img{i:04d}" for i in range(40)]
    parity = detection_parity(reference, served, ids, 0.5, "fp32", "int8")
    assert (parity.disagreeing, parity.images) == (2, ["img0001", "img0002"])
    report = _report(truth, served, latencies_ms=[5.0], parity=parity, precision="int8")
    rule = next(r for r in evaluate_detection_rules(report, LOOSE).results if r.name == "precision_parity")
    assert not rule.passed and "2 of 40 images" in rule.detail and "img0001" in rule.detail


def test_a_classifier_champion_under_the_same_model_fails_the_comparison_with_the_fix():
    truth = _truth(40)
    report = _report(truth, _found(truth), latencies_ms=[5.0])
    problem = "the champion v3 of 'm' is a classification model: set mlflow.registered_model"
    decision = evaluate_detection_rules(report, LOOSE, champion_problem=problem)
    rule = next(r for r in decision.results if r.name == "no_regression_vs_champion")
    assert not decision.passed and not rule.passed and "mlflow.registered_model" in rule.detail


def test_a_candidate_worse_than_the_champion_on_the_same_images_is_a_regression():
    truth = _truth(240)
    candidate = _found(truth, miss="dent")
    report = _report(truth, candidate, latencies_ms=[5.0])
    decision = evaluate_detection_rules(
        report,
        LOOSE.model_copy(update={"min_class_recall": 0.0, "min_map_50": 0.0}),
        truth=truth,
        predicted=candidate,
        champion=_found(truth),
        champion_version="4",
    )
    rule = next(r for r in decision.results if r.name == "no_regression_vs_champion")
    assert not rule.passed and rule.detail.startswith("vs champion v4: regression")


def test_the_evidence_survives_its_json_round_trip_with_the_same_digest():
    truth = _truth(40)
    report = _report(truth, _found(truth), latencies_ms=[5.0, 6.0])
    decision = evaluate_detection_rules(report, LOOSE)
    md = render_detection_markdown(report, decision, title="t")
    assert "| rule | result | detail |" in md and "| dent |" in md and "AP@0.5" in md
    back = StagingResult.from_json(StagingResult(report, None, None, decision, md).to_json())
    assert isinstance(back.report, DetectionReport) and back.report.digest() == report.digest()
    assert isinstance(load_report(json.loads(report.model_dump_json())), DetectionReport)
    flat = report.flat_metrics()
    assert {"map_50", "map_50.ci95_low", "image_accuracy.n", "recall.dent", "ap_50.scratch"} <= set(flat)
