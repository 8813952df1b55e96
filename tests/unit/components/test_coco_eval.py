"""COCO metrics through pycocotools on boxes whose answer is known."""

from __future__ import annotations

import math

import pytest

from edgeloop.components.coco_eval import Detection, evaluate_detections
from edgeloop.core.boxes import Box

CLASSES = ("scratch", "dent", "stain")


def _truth():
    return [
        [Box("dent", 10, 10, 20, 20)],
        [Box("scratch", 40, 5, 30, 6), Box("stain", 5, 50, 25, 25)],
        [],  # an image without defects
        [Box("dent", 60, 60, 18, 16)],
    ]


def test_perfect_detections_score_one_everywhere():
    truth = _truth()
    predicted = [[Detection(b, 0.9) for b in boxes] for boxes in truth]
    m = evaluate_detections(truth, predicted, CLASSES, bootstrap=20)
    assert m.map_50 == pytest.approx(1.0) and m.map_50_95 == pytest.approx(1.0)
    assert m.ap_50 == {"scratch": pytest.approx(1.0), "dent": pytest.approx(1.0), "stain": pytest.approx(1.0)}
    assert m.recall_at_threshold == 1.0 and (m.images, m.boxes) == (4, 4)
    assert m.map_50_ci95 == (1.0, 1.0) and m.bootstrap == 20


def test_a_box_shifted_past_iou_half_is_a_miss_and_a_low_score_is_not_found_at_the_threshold():
    truth = _truth()
    predicted = [[Detection(b, 0.9) for b in boxes] for boxes in truth]
    predicted[0] = [Detection(Box("dent", 22, 22, 20, 20), 0.9)]  # IoU 64/736 < 0.5: a miss
    predicted[3] = [Detection(truth[3][0], 0.2)]  # right box, below the operating threshold
    m = evaluate_detections(truth, predicted, CLASSES, bootstrap=0)
    # one of two dents found, ranked after the miss: precision 1/2 up to recall 1/2, on COCO's 101 points
    assert m.ap_50["dent"] == pytest.approx(0.5 * 51 / 101)
    assert m.ap_50["scratch"] == pytest.approx(1.0) and m.map_50 < 1.0
    assert m.recall_at_threshold == pytest.approx(2 / 4)  # the scratch and the stain
    assert math.isnan(m.map_50_ci95[0]) and m.bootstrap == 0


def test_no_detections_at_all_is_zero_and_a_class_without_truth_has_no_ap():
    truth = [[Box("dent", 10, 10, 20, 20)], []]
    m = evaluate_detections(truth, [[], []], CLASSES, bootstrap=10)
    assert m.map_50 == 0.0 and m.recall_at_threshold == 0.0
    assert m.ap_50 == {"scratch": None, "dent": 0.0, "stain": None}
    assert m.boxes_per_class == {"scratch": 0, "dent": 1, "stain": 0}


def test_the_bootstrap_interval_is_seeded_and_brackets_the_estimate():
    truth = _truth() * 5
    predicted = [[Detection(b, 0.9) for b in boxes] for boxes in truth]
    for i in range(0, len(predicted), 3):
        predicted[i] = []
    a = evaluate_detections(truth, predicted, CLASSES, bootstrap=50, seed=3)
    b = evaluate_detections(truth, predicted, CLASSES, bootstrap=50, seed=3)
    assert a.map_50_ci95 == b.map_50_ci95
    assert a.map_50_ci95[0] < a.map_50 < a.map_50_ci95[1]


def test_truth_and_predictions_must_cover_the_same_images():
    with pytest.raises(ValueError, match="2 images of ground truth but 1"):
        evaluate_detections([[], []], [[]], CLASSES)
