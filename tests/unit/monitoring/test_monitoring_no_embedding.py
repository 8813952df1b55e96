"""A model without an embedding output (an imported one) is still monitored: image statistics,
confidence and predictions; the embedding detectors are reported off, with the reason."""

from pathlib import Path

import numpy as np
import pytest

from edgeloop.components.model_import import ImportSpec, import_onnx
from edgeloop.core.payload_log import PayloadRecord
from edgeloop.local.sample_data import CLASSES
from edgeloop.monitoring.flags import OOD, flag_images, select_for_labeling
from edgeloop.monitoring.model import ModelRunner
from edgeloop.monitoring.profile import (
    NO_EMBEDDING,
    ReferenceProfile,
    build_reference_profile,
    image_stats_batch,
)
from edgeloop.monitoring.report import render_html
from edgeloop.monitoring.scan import ScanOptions, ScanReport, Window, run_detectors
from edgeloop.testing.external import write_external_onnx


@pytest.fixture(scope="module")
def no_embedding_model(mon_assets, tmp_path_factory) -> Path:
    raw = write_external_onnx(tmp_path_factory.mktemp("raw") / "vendor.onnx", n_classes=len(CLASSES))
    out = tmp_path_factory.mktemp("imported")
    import_onnx(raw, out, ImportSpec(name="vendor", labels=list(CLASSES), size=32))
    build_reference_profile(out, mon_assets.images("ref"))
    return out


def _window(model_dir: Path, paths: list[Path]) -> Window:
    runner = ModelRunner(model_dir)
    out = runner.run(paths)
    records = [
        PayloadRecord(
            ts=0,
            model="vendor",
            version="1",
            label="x",
            score=float(p.max()),
            probabilities=p.tolist(),
            image_sha256=f"sha{i}",
            image_uri=f"az://payloads/sha{i}.png",
        )
        for i, p in enumerate(out.probabilities)
    ]
    stats = image_stats_batch(paths, runner.preprocess.size)
    return Window(records, out.probabilities, out.embeddings, stats, list(range(len(paths))))


def test_profile_without_embeddings_round_trips(no_embedding_model):
    profile = ReferenceProfile.load(no_embedding_model)
    assert not profile.has_embeddings
    assert (
        profile.n_images == len(profile.confidence) > 0 and profile.image_stats.shape[0] == profile.n_images
    )
    assert profile.calibration["method"] == "off" and "no embedding output" in profile.calibration["reason"]


def test_shifted_traffic_drifts_on_image_statistics_with_the_embedding_detector_off(
    no_embedding_model, mon_assets
):
    profile = ReferenceProfile.load(no_embedding_model)
    window = _window(no_embedding_model, mon_assets.images("shifted"))
    assert window.embeddings.shape == (len(window.records), 0)
    results = {r.name: r for r in run_detectors(profile, window, ScanOptions(n_permutations=50))}
    assert results["embedding_mmd"].extra["skipped"] == f"off: {NO_EMBEDDING}"
    assert not results["embedding_mmd"].is_drift
    assert results["image_stats_ks"].is_drift  # darker, colour-cast, blurred site: still caught

    same = _window(no_embedding_model, mon_assets.images("same"))
    calm = run_detectors(profile, same, ScanOptions(n_permutations=50))
    assert not any(r.is_drift for r in calm)


def test_flags_and_report_without_embeddings(no_embedding_model, mon_assets):
    profile = ReferenceProfile.load(no_embedding_model)
    window = _window(no_embedding_model, mon_assets.images("shifted"))
    shas = [r.image_sha256 for r in window.records]
    flags = flag_images(profile, window.probabilities, window.embeddings, shas)
    assert all(OOD not in f.reasons for f in flags)  # no embedding: no out-of-distribution flag
    selected = select_for_labeling(flags, window.embeddings, 3, drift=True)
    assert len(selected) == min(3, len(flags)) and len({f.sha256 for f in selected}) == len(selected)
    results = run_detectors(profile, window, ScanOptions(n_permutations=50))
    report = ScanReport(
        model="vendor",
        version="1",
        start="s",
        end="e",
        records=len(shas),
        images=len(shas),
        other_versions=0,
        drift=any(r.is_drift for r in results),
        results=results,
        flagged=len(flags),
        flag_reasons={},
        selected=[],
        enqueue=None,
        delivery=None,
        outbox_size=None,
        wall_s=0.0,
    )
    assert f"embedding_mmd    skipped: off: {NO_EMBEDDING}" in report.summary()
    page = render_html(report, profile, window, [], {})
    assert "No embedding plot" in page and page.count("data:image/png;base64,") == 2
    assert np.isfinite([r.p_val for r in results if "skipped" not in r.extra]).all()
