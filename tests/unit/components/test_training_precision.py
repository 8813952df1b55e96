"""Precision selection logic with fake measurements."""

from __future__ import annotations

import pytest

from edgeloop.components.errors import PrecisionError
from edgeloop.components.precision import (
    PrecisionBounds,
    PrecisionMeasurement,
    decide_precision,
    provider_for_target,
)
from edgeloop.core.model_card import Precision


def m(precision, b1, acc, agree=1.0, b8=None):
    return PrecisionMeasurement(
        precision=precision,
        path="x",
        latency_ms_b1=b1,
        latency_ms_b8=b8 or b1 * 6,
        accuracy=acc,
        agreement_with_fp32=agree,
        size_bytes=1,
    )


FP32 = Precision.FP32
INT8 = Precision.INT8


def test_faster_int8_within_bounds_is_chosen():
    chosen, reasons = decide_precision([m(FP32, 1.0, 0.97), m(INT8, 0.5, 0.965, 0.99)])
    assert chosen is INT8
    assert reasons[-1] == "chose int8"


def test_slower_int8_keeps_fp32():  # AVX2 without VNNI: QDQ is slower
    chosen, reasons = decide_precision([m(FP32, 0.36, 0.97), m(INT8, 0.46, 0.97)])
    assert chosen is FP32
    assert "speed-up below" in reasons[0]


def test_accuracy_drop_beyond_bound_keeps_fp32():
    chosen, reasons = decide_precision(
        [m(FP32, 1.0, 0.97), m(INT8, 0.3, 0.93, 0.96)],
        PrecisionBounds(max_accuracy_drop=0.01, max_disagreement=0.1),
    )
    assert chosen is FP32
    assert "accuracy drop above" in reasons[0]


def test_disagreement_beyond_bound_keeps_fp32_even_with_equal_accuracy():
    chosen, reasons = decide_precision([m(FP32, 1.0, 0.9), m(INT8, 0.3, 0.9, agree=0.9)])
    assert chosen is FP32
    assert "disagreement above" in reasons[0]


def test_marginal_speedup_is_not_worth_quantizing():
    assert decide_precision([m(FP32, 1.0, 0.9), m(INT8, 0.97, 0.9)])[0] is FP32
    assert (
        decide_precision([m(FP32, 1.0, 0.9), m(INT8, 0.97, 0.9)], PrecisionBounds(min_speedup=1.0))[0] is INT8
    )


def test_fp32_baseline_is_required():
    with pytest.raises(PrecisionError):
        decide_precision([m(INT8, 0.3, 0.9)])


@pytest.mark.parametrize(
    "target,provider",
    [
        ("cpu-avx2", "CPUExecutionProvider"),
        ("cuda", "CUDAExecutionProvider"),
        ("tensorrt-fp16", "TensorrtExecutionProvider"),
        ("CUDAExecutionProvider", "CUDAExecutionProvider"),
    ],
)
def test_target_profiles_map_to_providers(target, provider):
    assert provider_for_target(target) == provider
