"""The statistics the gate and the model card rest on, against published values."""

from __future__ import annotations

import math

import pytest

from edgeloop.components.stats import (
    binom_cdf,
    is_evidence_field,
    mcnemar_exact,
    metric_fields,
    newcombe_paired_interval,
    proportion,
    proportion_fields,
    quantile_interval_ranks,
    wilson_interval,
    z_value,
)


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        # Newcombe RG (1998), Two-sided confidence intervals for the single proportion: comparison of
        # seven methods, Stat Med 17:857-872, Table I, method 3 (Wilson score, no continuity correction)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_newcombe_1998(successes, n, low, high):
    got = wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_edges_and_errors():
    assert wilson_interval(20, 20)[1] == 1.0 and wilson_interval(0, 20)[0] == 0.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(237, 240)
    assert low < 237 / 240 < high
    assert z_value() == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)
    p = proportion(237, 240)
    assert p.text(4) == "0.9875 (n=240, 95% CI 0.9639-0.9957)"


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        # Fagerland MW, Lydersen S, Laake P (2013), The McNemar test for binary matched-pairs data:
        # mid-p and asymptotic are better than exact conditional, BMC Med Res Methodol 13:91:
        # airway hyper-responsiveness before/after stem cell transplantation (Bentur et al. 2009),
        # discordant pairs 1 and 7, exact conditional p = 0.070
        (1, 7, 0.0703125),
        (7, 1, 0.0703125),
        # Fagerland, Lydersen, Laake (2017), Statistical Analysis of Contingency Tables, ch. 8:
        # complete response before/after consolidation therapy (Cavo et al. 2012), 6 and 16, p = 0.052
        (6, 16, 0.052478790),
        (0, 0, 1.0),
        (3, 3, 1.0),
        (0, 1, 1.0),  # one image of difference: never evidence
        (0, 12, 2 / 2**12),
    ],
)
def test_mcnemar_exact_published_values(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-6)


def test_newcombe_paired_interval_matches_the_textbook():
    # Fagerland, Lydersen, Laake (2017), ch. 8, Cavo et al. (2012): table 59, 6 / 16, 80;
    # Newcombe square-and-add: estimate -0.0621, 95% CI -0.1186 to -0.0046
    low, high = newcombe_paired_interval(59, 6, 16, 80)
    assert (low, high) == pytest.approx((-0.1186, -0.0046), abs=5e-5)
    # no discordant pair: the interval still has width (the estimate is 0, not known to be 0)
    low, high = newcombe_paired_interval(230, 0, 0, 10)
    assert low < 0 < high


def test_quantile_interval_ranks():
    # the classic distribution-free 95 % interval for the median of 10 observations: x(2)..x(9)
    assert quantile_interval_ranks(10, 0.5) == (2, 9)
    lo, hi = quantile_interval_ranks(200, 0.95)
    coverage = binom_cdf(hi - 1, 200, 0.95) - binom_cdf(lo - 1, 200, 0.95)
    assert coverage >= 0.95 and lo < 190 < hi
    assert quantile_interval_ranks(20, 0.95)[1] == 20  # too few samples: the max bounds it


def test_binom_cdf_against_direct_sum():
    for n, p, k in [(22, 0.5, 6), (30, 0.3, 10), (200, 0.95, 185)]:
        direct = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))
        assert binom_cdf(k, n, p) == pytest.approx(direct, rel=1e-9)
    assert binom_cdf(-1, 5, 0.5) == 0.0 and binom_cdf(5, 5, 0.5) == 1.0


def test_metric_fields_for_cards():
    f = proportion_fields("val_accuracy", 250, 261)
    assert f["val_accuracy"] == pytest.approx(250 / 261) and f["val_accuracy.n"] == 261.0
    assert (f["val_accuracy.ci95_low"], f["val_accuracy.ci95_high"]) == pytest.approx(
        wilson_interval(250, 261)
    )
    assert metric_fields("latency_ms_b1", 1.2, 50) == {"latency_ms_b1": 1.2, "latency_ms_b1.n": 50.0}
    assert is_evidence_field("val_accuracy.n") and not is_evidence_field("val_accuracy")
