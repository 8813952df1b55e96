"""What the monitor reads off a detector's answer per image: the top score, how close its least
certain detection is to the operating threshold, and how many defects it reports."""

from __future__ import annotations

import numpy as np
import pytest

from edgeloop.monitoring.profile import BOX_COUNT_LABELS, detection_summary


def _dets(*scores: float) -> list[dict]:
    return [{"label": "dent", "score": s, "x": 1, "y": 1, "width": 4, "height": 4} for s in scores]


def test_a_clean_tag_is_certain_with_no_boxes_and_a_doubtful_box_has_a_small_margin():
    conf, margin, count = detection_summary(
        [_dets(), _dets(0.98, 0.95), _dets(0.97, 0.52), _dets(0.9, 0.8, 0.7, 0.6)]
    )
    np.testing.assert_allclose(conf, [0.0, 0.98, 0.97, 0.9])
    assert margin[0] == 1.0  # nothing to doubt
    assert margin[1] == pytest.approx(0.9)  # 0.95 is 0.45 above the threshold, of 0.5
    assert margin[2] == pytest.approx(0.04)  # 0.52: nearly a coin toss
    assert count.tolist() == [0, 2, 2, 3] and len(BOX_COUNT_LABELS) == 4  # 4 boxes: the 3+ bucket


def test_detections_below_the_threshold_are_doubts_not_defects():
    conf, margin, count = detection_summary([_dets(0.45, 0.2)], threshold=0.5)
    assert count.tolist() == [0] and conf[0] == 0.45 and margin[0] == pytest.approx(0.1)
