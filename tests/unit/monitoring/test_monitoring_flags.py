"""Per-image flags and the budgeted, diverse selection."""

import numpy as np

from edgeloop.monitoring.flags import OOD, Flag, flag_images, select_for_labeling
from edgeloop.monitoring.profile import ReferenceProfile


def _flags(assets, outputs, name):
    profile = ReferenceProfile.load(assets.model_dir)
    out, _ = outputs[name]
    shas = [f"{name}-{i}" for i in range(len(out.probabilities))]
    return flag_images(profile, out.probabilities, out.embeddings, shas), out


def test_shifted_images_are_flagged_out_of_distribution_more_often(mon_assets, mon_outputs):
    same, _ = _flags(mon_assets, mon_outputs, "same")
    shifted, _ = _flags(mon_assets, mon_outputs, "shifted")
    n_ood = lambda flags: sum(OOD in f.reasons for f in flags)  # noqa: E731
    assert n_ood(shifted) > 2 * max(1, n_ood(same))
    assert all(f.value > 0 and f.reasons for f in shifted)


def test_selection_respects_budget_and_orders_by_value(mon_assets, mon_outputs):
    flags, out = _flags(mon_assets, mon_outputs, "shifted")
    picked = select_for_labeling(flags, out.embeddings, budget=5)
    assert len(picked) == 5
    assert len({f.sha256 for f in picked}) == 5
    values = [f.value for f in picked]
    assert values == sorted(values, reverse=True)
    assert picked[0].value == max(f.value for f in flags)  # the most valuable image is always kept
    assert select_for_labeling(flags, out.embeddings, budget=5) == picked  # deterministic
    assert select_for_labeling(flags, out.embeddings, budget=0) == []


def test_selection_prefers_diverse_images_over_near_copies():
    rng = np.random.default_rng(0)
    # ten near-copies of one frame with the highest values, and six distinct images slightly below
    emb = np.vstack([np.ones((10, 4)) + rng.normal(0, 1e-3, (10, 4)), rng.normal(0, 5, (6, 4))])
    flags = [
        Flag(i, f"img{i}", ["out_of_distribution"], 3.0 - 0.01 * i if i < 10 else 2.5, 0.5, 0.1, 1.0)
        for i in range(16)
    ]
    picked = select_for_labeling(flags, emb, budget=4)
    assert sum(f.index < 10 for f in picked) == 1  # one of the copies, not four
    assert picked[0].index == 0


def test_same_image_served_twice_is_selected_once():
    emb = np.eye(3)
    flags = [
        Flag(0, "a", ["low_confidence"], 1.0, 0.3, 0.1, 0.0),
        Flag(1, "a", ["low_confidence"], 1.2, 0.3, 0.1, 0.0),
        Flag(2, "b", ["low_confidence"], 0.9, 0.3, 0.1, 0.0),
    ]
    picked = select_for_labeling(flags, emb, budget=3)
    assert [f.sha256 for f in picked] == ["a", "b"]
    assert picked[0].value == 1.2


def _window(assets, outputs, name, budget=20):
    """Drift, flags and selection of one window of ``name``, as the scan computes them."""
    from edgeloop.monitoring.profile import confidence_and_margin
    from edgeloop.monitoring.scan import ScanOptions, detectors

    profile = ReferenceProfile.load(assets.model_dir)
    out, stats = outputs[name]
    mmd, psi, ks, cat = detectors(profile, ScanOptions())
    results = [
        mmd.predict(out.embeddings),
        psi.predict(confidence_and_margin(out.probabilities)[0]),
        ks.predict(stats),
        cat.predict(out.probabilities.argmax(1)),
    ]
    drift = any(r.is_drift for r in results)
    flags, _ = _flags(assets, outputs, name)
    return drift, flags, select_for_labeling(flags, out.embeddings, budget, drift=drift), out


def test_fresh_in_distribution_images_no_drift_and_at_most_15_percent_flagged(mon_assets, mon_outputs):
    drift, flags, picked, out = _window(mon_assets, mon_outputs, "fresh")
    assert len(out.probabilities) >= 200
    assert not drift
    assert len(flags) <= 0.15 * len(out.probabilities)
    assert all(f.extra.get("priority") != "drift" for f in picked)


def test_fresh_shifted_images_drift_and_at_least_half_are_flagged_and_take_the_budget(
    mon_assets, mon_outputs
):
    drift, flags, picked, out = _window(mon_assets, mon_outputs, "fresh_shifted", budget=20)
    assert len(out.probabilities) >= 200
    assert drift
    assert len(flags) >= 0.5 * len(out.probabilities)
    assert len(picked) == 20 and all(OOD in f.reasons and f.extra["priority"] == "drift" for f in picked)
    # k-center: the picks spread over the drifted images rather than 20 near-copies
    ood = [f for f in flags if OOD in f.reasons]
    top = sorted(ood, key=lambda f: -f.ood_score)[:20]
    spread = lambda fs: np.mean(  # noqa: E731
        [np.linalg.norm(out.embeddings[a.index] - out.embeddings[b.index]) for a in fs for b in fs]
    )
    assert spread(picked) > spread(top)


def test_a_drifting_window_fills_the_budget_with_uncertain_images_after_the_drift_carriers():
    emb = np.arange(12, dtype=float).reshape(6, 2)
    flags = [
        Flag(0, "far", [OOD], 2.0, 0.99, 0.98, 9.0),
        Flag(1, "farther", [OOD], 2.5, 0.99, 0.98, 12.0),
        Flag(2, "unsure", ["low_confidence"], 1.6, 0.3, 0.05, 0.1),
        Flag(3, "less-unsure", ["small_margin"], 1.2, 0.5, 0.4, 0.1),
    ]
    picked = select_for_labeling(flags, emb, budget=3, drift=True)
    assert [f.sha256 for f in picked] == ["farther", "far", "unsure"]
    assert [f.extra.get("priority") for f in picked] == ["drift", "drift", None]
