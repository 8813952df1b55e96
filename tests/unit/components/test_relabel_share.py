"""A drifted site's few relabeled images get their share of each epoch (train.py --relabel-share)."""

from __future__ import annotations

import torch

from edgeloop.components.train import DistributedWeightedSampler, class_weights, sampling_weights

TARGETS = [0] * 240 + [1] * 240 + [0] * 5 + [1] * 5
SOURCES = ["sample"] * 480 + ["relabel"] * 10


def _drawn_share(weights: list[float], epochs: int = 20) -> float:
    sampler = DistributedWeightedSampler(weights, 1, 0, seed=0)
    drawn = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        drawn += list(sampler)
    return sum(SOURCES[i] == "relabel" for i in drawn) / len(drawn)


def test_ten_relabeled_images_among_480_get_a_quarter_of_the_draws():
    weights = sampling_weights(TARGETS, SOURCES, None, 0.25)
    assert weights is not None
    assert 0.22 < _drawn_share(weights) < 0.28  # instead of 10/490 = 0.02


def test_every_relabeled_image_is_drawn_not_just_a_few():
    weights = sampling_weights(TARGETS, SOURCES, None, 0.25)
    sampler = DistributedWeightedSampler(weights, 1, 0, seed=0)
    assert set(range(480, 490)) <= set(sampler)


def test_without_relabeled_images_or_with_share_zero_training_shuffles_as_before():
    assert sampling_weights(TARGETS, ["sample"] * len(TARGETS), None, 0.25) is None
    assert sampling_weights(TARGETS, SOURCES, None, 0.0) is None


def test_relabeled_images_already_above_the_share_are_not_reduced():
    sources = ["relabel"] * 200 + ["sample"] * 290
    assert sampling_weights(TARGETS, sources, None, 0.25) is None


def test_class_balance_is_kept_within_the_relabeled_share():
    targets = [0] * 400 + [1] * 80 + [0] * 5 + [1] * 5
    weights = sampling_weights(targets, SOURCES, class_weights(targets, 2), 0.25)
    assert weights is not None
    per_class = torch.zeros(2)
    for t, w in zip(targets, weights, strict=True):
        per_class[t] += w
    assert abs(float(per_class[0] - per_class[1])) / float(per_class.sum()) < 0.15
    relabeled = sum(weights[480:]) / sum(weights)
    assert abs(relabeled - 0.25) < 1e-9


def test_a_share_outside_zero_to_one_is_refused_with_the_range():
    import pytest

    from edgeloop.components.train import get_args_parser

    parser = get_args_parser()
    assert parser.parse_args(["--data", "d", "--out", "o", "--relabel-share", "0.3"]).relabel_share == 0.3
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "d", "--out", "o", "--relabel-share", "1.5"])
