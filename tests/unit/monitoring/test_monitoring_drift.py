"""Each drift detector: same result shape, no drift on a seeded same-distribution window, drift on the shifted one."""

import math

import numpy as np
import pytest

from edgeloop.monitoring.drift import MIN_SAMPLES, CategoricalDrift, DriftResult, KSDrift, MMDDrift, PSIDrift
from edgeloop.monitoring.profile import IMAGE_STAT_NAMES, ReferenceProfile, confidence_and_margin

ALPHA = 0.05 / 4  # the level each of the four detectors runs at in a scan (family-wise 0.05)


def _detector_and_inputs(kind, profile, outputs, name):
    out, stats = outputs[name]
    if kind == "mmd":
        return MMDDrift(profile.embeddings, p_val=ALPHA, seed=0), out.embeddings
    if kind == "psi":
        return PSIDrift(profile.confidence, p_val=ALPHA), confidence_and_margin(out.probabilities)[0]
    if kind == "ks":
        return KSDrift(profile.image_stats, p_val=ALPHA, feature_names=IMAGE_STAT_NAMES), stats
    return CategoricalDrift(profile.predicted, len(profile.labels), p_val=ALPHA), out.labels_idx


KINDS = ["mmd", "psi", "ks", "chi2"]


@pytest.fixture(scope="module")
def profile(mon_assets):
    return ReferenceProfile.load(mon_assets.model_dir)


@pytest.mark.parametrize("kind", KINDS)
def test_same_distribution_window_is_not_drift(kind, profile, mon_outputs):
    det, x = _detector_and_inputs(kind, profile, mon_outputs, "same")
    res = det.predict(x)
    assert isinstance(res, DriftResult)
    assert not res.is_drift, res
    assert res.p_val >= res.threshold
    assert res.n == len(x)


@pytest.mark.parametrize("kind", ["mmd", "ks", "chi2"])
def test_shifted_window_is_drift(kind, profile, mon_outputs):
    det, x = _detector_and_inputs(kind, profile, mon_outputs, "shifted")
    res = det.predict(x)
    assert res.is_drift, res
    assert res.p_val < res.threshold
    same = _detector_and_inputs(kind, profile, mon_outputs, "same")[0].predict(
        _detector_and_inputs(kind, profile, mon_outputs, "same")[1]
    )
    assert res.distance > same.distance


def test_image_stats_name_what_changed(profile, mon_outputs):
    det, x = _detector_and_inputs("ks", profile, mon_outputs, "shifted")
    res = det.predict(x)
    assert res.threshold == pytest.approx(ALPHA / len(IMAGE_STAT_NAMES))  # Bonferroni
    # the shifted site is darker and blurred: brightness and sharpness must be among the drifted features
    assert {"brightness", "sharpness"} <= set(res.extra["drifted_features"])
    assert res.extra["features"]["brightness"]["mean"] < res.extra["features"]["brightness"]["ref_mean"]
    assert res.extra["features"]["sharpness"]["mean"] < res.extra["features"]["sharpness"]["ref_mean"]


def test_psi_detects_a_confidence_shift():
    rng = np.random.default_rng(0)
    ref = rng.beta(8, 2, 500)  # a confident model
    same = PSIDrift(ref).predict(rng.beta(8, 2, 300))
    shifted = PSIDrift(ref).predict(rng.beta(3, 3, 300))  # unsure on new data
    assert not same.is_drift and same.distance < 0.1
    assert shifted.is_drift and shifted.distance > 0.25  # "major shift" by the usual PSI rule of thumb


def test_mmd_p_value_is_calibrated_and_seeded():
    rng = np.random.default_rng(1)
    p_vals = []
    for _ in range(20):
        ref, x = rng.normal(size=(60, 8)), rng.normal(size=(60, 8))
        p_vals.append(MMDDrift(ref, n_permutations=100, seed=3).predict(x).p_val)
    assert sum(p < 0.05 for p in p_vals) <= 3  # ~5% false alarms expected under the null
    ref, x = rng.normal(size=(60, 8)), rng.normal(size=(60, 8)) + 0.5
    a = MMDDrift(ref, n_permutations=100, seed=3).predict(x)
    b = MMDDrift(ref, n_permutations=100, seed=3).predict(x)
    assert a.p_val == b.p_val and a.distance == b.distance
    assert a.is_drift


@pytest.mark.parametrize("kind", KINDS)
def test_too_small_window_is_skipped_not_guessed(kind, profile, mon_outputs):
    det, x = _detector_and_inputs(kind, profile, mon_outputs, "shifted")
    res = det.predict(x[: MIN_SAMPLES - 1])
    assert not res.is_drift
    assert math.isnan(res.p_val)
    assert "skipped" in res.extra
    assert res.as_dict()["p_val"] is None  # JSON-safe
