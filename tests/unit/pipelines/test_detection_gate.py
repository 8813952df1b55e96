"""The staging gate's champion comparison for detection models: a paired test over the same images
(would the line act rightly on each?), with the mAP@0.5 difference and its paired-bootstrap interval."""

from __future__ import annotations

import pytest

from edgeloop.components.coco_eval import Detection, image_correct
from edgeloop.core.boxes import Box
from edgeloop.pipelines.gate import GateThresholds, detection_regression_rule

CLASSES = ("scratch", "dent", "stain")


def _truth(n: int) -> list[list[Box]]:
    """n images: every fifth without defects, the others one or two boxes."""
    out = []
    for i in range(n):
        if i % 5 == 0:
            out.append([])
            continue
        boxes = [Box(CLASSES[i % 3], 10 + i % 7, 12, 24, 18)]
        if i % 4 == 0:
            boxes.append(Box(CLASSES[(i + 1) % 3], 60, 50 + i % 5, 10, 30))
        out.append(boxes)
    return out


def _perfect(truth):
    return [[Detection(b, 0.9) for b in boxes] for boxes in truth]


def test_an_image_is_right_only_when_every_defect_is_found_and_nothing_else():
    dent = Box("dent", 10, 10, 20, 20)
    assert image_correct([dent], [Detection(Box("dent", 12, 11, 20, 20), 0.8)])
    assert image_correct([], [Detection(dent, 0.3)])  # below the operating threshold: not raised
    assert not image_correct([dent], [])  # missed
    assert not image_correct([dent], [Detection(Box("stain", 10, 10, 20, 20), 0.8)])  # wrong class
    assert not image_correct([dent], [Detection(Box("dent", 25, 25, 20, 20), 0.8)])  # IoU < 0.5
    assert not image_correct([], [Detection(dent, 0.7)])  # a false alarm on a clean tag
    # one detection cannot account for two defects
    assert not image_correct([dent, Box("dent", 11, 10, 20, 20)], [Detection(dent, 0.9)])


def test_the_same_detections_as_the_champion_pass_with_no_difference():
    truth = _truth(220)
    r = detection_regression_rule(truth, _perfect(truth), _perfect(truth), CLASSES, bootstrap=20)
    assert r.passed and r.decided and r.n == 220
    assert r.value == 0 and r.p_value == 1.0
    assert "mAP@0.5 candidate minus champion +0.0000" in r.detail


def test_a_candidate_that_misses_defects_the_champion_finds_is_a_regression():
    truth = _truth(220)
    candidate = _perfect(truth)
    missed = [i for i, boxes in enumerate(truth) if boxes][:30]
    for i in missed:
        candidate[i] = []
    r = detection_regression_rule(truth, candidate, _perfect(truth), CLASSES, bootstrap=50)
    assert not r.passed and r.decided
    assert r.value == pytest.approx(30 / 220) and r.p_value < 0.001
    assert r.detail.startswith("regression:") and "30 right only by the champion" in r.detail
    low, high = r.ci95
    assert 0 < low < r.value < high
    assert "mAP@0.5 candidate minus champion -0.1" in r.detail  # about 30 of 198 boxed images lost


def test_a_candidate_that_fixes_false_alarms_passes():
    truth = _truth(220)
    champion = _perfect(truth)
    for i, boxes in enumerate(truth):
        if not boxes and i % 2 == 0:
            champion[i] = [Detection(Box("stain", 5, 5, 10, 10), 0.8)]
    r = detection_regression_rule(truth, _perfect(truth), champion, CLASSES, bootstrap=20)
    fixed = sum(1 for i, boxes in enumerate(truth) if not boxes and i % 2 == 0)
    assert r.passed and r.value == pytest.approx(-fixed / 220)
    assert f"0 right only by the champion, {fixed} only by the candidate" in r.detail


def test_too_few_shared_images_is_not_decided():
    truth = _truth(60)
    r = detection_regression_rule(
        truth, [[] for _ in truth], _perfect(truth), CLASSES, GateThresholds(min_eval_images=200), bootstrap=0
    )
    assert not r.passed and not r.decided and "insufficient evidence" in r.detail


def test_the_three_sets_must_cover_the_same_images():
    truth = _truth(10)
    with pytest.raises(ValueError, match="same images"):
        detection_regression_rule(truth, _perfect(truth)[:9], _perfect(truth), CLASSES)
