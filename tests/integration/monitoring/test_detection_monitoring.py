"""A detector's traffic through the real model server feeds the drift scan: the payload log keeps
each image's detections, a shifted site is drift (image statistics, confidence, box counts), and the
flagged images become RectangleLabels tasks in the real Label Studio, pre-annotated with the boxes
the model answered for them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image

from edgeloop.core import labelstudio as lsx
from edgeloop.core.blob import BlobStore
from edgeloop.core.payload_log import LOG_SCORE_FLOOR, read_window
from edgeloop.local.sample_data import generate_detection_dataset
from edgeloop.monitoring.flags import OOD
from edgeloop.monitoring.profile import BOX_COUNT_LABELS, build_detection_reference_profile
from edgeloop.monitoring.scan import RELABEL_SCORE_FLOOR, ScanOptions, scan_window
from edgeloop.serving.launcher import running_server
from edgeloop.testing.models import build_detection_model_dir
from edgeloop.testing.stack import settings_on

SIZE = 96


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A seeded detector with its reference profile (200 in-distribution images) and two sets of
    served images: the same site, and a shifted one (other lighting and camera)."""
    root = tmp_path_factory.mktemp("det-mon")
    model_dir = build_detection_model_dir(root / "model", size=SIZE, name="det-mon")
    sets = {}
    for name, seed, shifted, n in (("ref", 1, False, 200), ("same", 3, False, 80), ("shifted", 2, True, 80)):
        generate_detection_dataset(root / name, images=n, seed=seed, size=SIZE, shifted=shifted)
        sets[name] = sorted((root / name).rglob("*.png"))
    profile = build_detection_reference_profile(
        model_dir, [Image.open(p).convert("RGB") for p in sets["ref"]]
    )
    return model_dir, profile, sets


def _serve(settings, model_dir, paths, name: str):
    start = datetime.now(UTC) - timedelta(seconds=5)
    with running_server(
        [model_dir], settings, extra_args=["--payload_log_rate", "1", "--model_name", name]
    ) as srv:
        client = srv.rest_client(name)
        for i in range(0, len(paths), 8):
            client.infer_images([p.read_bytes() for p in paths[i : i + 8]])
    return start, datetime.now(UTC) + timedelta(seconds=5)  # the server flushed its log when it stopped


def test_the_reference_profile_of_a_detector_watches_confidence_and_box_counts(detector):
    _, profile, _ = detector
    assert profile.task == "detection" and profile.labels == BOX_COUNT_LABELS
    assert profile.n_images == 200 and profile.has_embeddings  # image statistics stand in for them
    assert profile.embeddings.shape == (200, 6) and profile.ood_threshold > 0
    assert len(profile.confidence) == len(profile.margin) == len(profile.predicted) == 200
    assert 0.0 < profile.small_margin_threshold < 1.0 and profile.low_confidence_threshold < 0


def test_a_shifted_site_is_drift_and_its_flagged_images_become_box_tasks(stack_settings, detector, tmp_path):
    model_dir, profile, sets = detector
    name = f"det-mon-{uuid.uuid4().hex[:6]}"
    settings = settings_on(stack_settings, tmp_path / "state")
    project = f"det-relabel-{uuid.uuid4().hex[:6]}"

    start, end = _serve(settings, model_dir, sets["same"], name + "-same")
    same = scan_window(
        settings, model_dir, start, end, ScanOptions(payload_model=name + "-same", queue=False, deliver=False)
    )
    print(same.summary())
    assert same.records == 80 and not same.drift
    assert same.flagged <= 0.15 * same.records  # the calibrated false-flag rates: about 5 % each

    start, end = _serve(settings, model_dir, sets["shifted"], name)
    store = BlobStore.from_settings(settings)
    records = list(read_window(store, settings.blob.payloads_container, name, start, end))
    assert len(records) == 80  # every served image logged, with its detections
    assert all(r.detections is not None and r.probabilities == [] for r in records)
    assert all(d["score"] >= LOG_SCORE_FLOOR for r in records for d in r.detections or [])

    report = scan_window(
        settings, model_dir, start, end, ScanOptions(budget=4, payload_model=name, project_title=project)
    )
    print(report.summary())
    assert report.records == 80 and report.drift
    assert any(r.is_drift for r in report.results if r.name.startswith("image_stats"))
    # the shifted site's images lie outside the reference's image statistics: flagged, and the
    # labelers' budget goes to them
    assert report.flag_reasons.get(OOD, 0) >= 0.5 * report.records
    assert len(report.selected) == 4 and report.delivery["delivered"] == 4
    assert all(OOD in s["reason"] and s["priority"] == "drift" for s in report.selected)

    by_sha = {r.image_sha256: r for r in records}
    ls = lsx.client(settings)
    proj = lsx.find_project(ls, project)
    assert lsx.task_of(proj.label_config) == lsx.DETECTION
    tasks = lsx.tasks_by_sha(ls, proj.id)
    assert set(tasks) == {s["sha256"] for s in report.selected}
    for sha, task in tasks.items():
        assert (task.data["width"], task.data["height"]) == (SIZE, SIZE)  # the logged image's pixels
        (pred,) = ls.predictions.list(task=task.id)
        assert pred.model_version.startswith(f"{name}:")
        shown = lsx.boxes_of(pred.result)
        served = [d for d in by_sha[sha].detections or [] if d["score"] >= RELABEL_SCORE_FLOOR]
        assert [b.label for b in shown] == [d["label"] for d in served]
        for b, d in zip(shown, served, strict=True):
            assert b.x == pytest.approx(d["x"], abs=0.05) and b.w == pytest.approx(d["width"], abs=0.05)
