"""Reference profile: built from a model directory, stored beside it, reloaded identically."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from edgeloop.core.model_card import ModelCard
from edgeloop.local.sample_data import render_tag
from edgeloop.monitoring.profile import (
    IMAGE_STAT_NAMES,
    PROFILE_FILE,
    ProfileError,
    ReferenceProfile,
    build_reference_profile,
    image_stats,
)


def test_profile_is_stored_in_the_model_dir_and_round_trips(mon_assets, tmp_path):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(mon_assets.model_dir, model_dir)
    (model_dir / PROFILE_FILE).unlink()
    ModelCard.load(model_dir).with_digests(model_dir).save(model_dir)  # the card no longer lists it
    profile = build_reference_profile(model_dir, mon_assets.images("ref"))
    assert (model_dir / PROFILE_FILE).exists()
    loaded = ReferenceProfile.load(model_dir)
    assert loaded.model == profile.model and loaded.version == profile.version
    assert loaded.labels == ["ok", "scratch", "dent", "stain"]
    np.testing.assert_allclose(loaded.embeddings, profile.embeddings, rtol=1e-6)
    np.testing.assert_array_equal(loaded.confidence, profile.confidence)
    assert loaded.image_stats.shape == (len(mon_assets.images("ref")), len(IMAGE_STAT_NAMES))
    assert loaded.stats_size == 64  # the model's input size: the server logs images at that size
    assert 0 < loaded.low_confidence_threshold < 1
    assert loaded.ood_threshold > 0
    assert abs(sum(loaded.class_frequencies().values()) - 1) < 1e-9


def test_missing_profile_says_how_to_build_one(tmp_path):
    with pytest.raises(ProfileError, match="build_reference_profile"):
        ReferenceProfile.load(tmp_path)


def test_image_stats_see_darkness_blur_and_colour_cast():
    base = render_tag(5, "ok", size=64)
    shifted = render_tag(5, "ok", size=64, shifted=True)
    b, s = image_stats(base, 64), image_stats(shifted, 64)
    names = dict(zip(IMAGE_STAT_NAMES, range(6), strict=True))
    assert s[names["brightness"]] < 0.8 * b[names["brightness"]]
    assert s[names["sharpness"]] < b[names["sharpness"]]
    # bluish cast: blue rises relative to red
    assert s[names["mean_b"]] / s[names["mean_r"]] > b[names["mean_b"]] / b[names["mean_r"]]
    blurred = base.filter(ImageFilter.GaussianBlur(2))
    assert image_stats(blurred, 64)[names["sharpness"]] < 0.5 * b[names["sharpness"]]


def test_image_stats_do_not_depend_on_the_size_sent():
    img = render_tag(9, "dent", size=64)
    big = img.resize((128, 128), Image.Resampling.BILINEAR)
    np.testing.assert_allclose(image_stats(img, 64)[:2], image_stats(big, 64)[:2], rtol=0.05)


def test_ood_threshold_is_calibrated_on_held_out_data_at_the_stated_rate(mon_assets, mon_outputs):
    profile = ReferenceProfile.load(mon_assets.model_dir)
    assert len(profile.embeddings) >= 200 and profile.calibration["sufficient"]
    assert profile.calibration["false_flag_rate"] == pytest.approx(0.05) == profile.ood_false_flag_rate
    # fresh in-distribution images (never seen by the reference) are flagged at about the stated rate
    fresh, _ = mon_outputs["fresh"]
    assert np.mean(profile.ood_scores(fresh.embeddings) > profile.ood_threshold) <= 0.10


def test_a_small_reference_still_builds_but_says_it_is_too_small(mon_outputs, caplog):
    from edgeloop.monitoring.profile import profile_from_outputs

    out, stats = mon_outputs["same"]
    profile = profile_from_outputs(
        "m", "1", ["ok", "scratch", "dent", "stain"], out.probabilities[:60], out.embeddings[:60], stats[:60]
    )
    assert not profile.calibration["sufficient"] and profile.calibration["n_reference"] == 60
    assert "at least 200" in caplog.text
