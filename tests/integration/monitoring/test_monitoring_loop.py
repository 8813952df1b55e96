"""Closing the loop: labels a person adds to relabel tasks reach the next label import, and a model
retrained with them does better on the new site's images."""

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from edgeloop.core import labelstudio as lsx
from edgeloop.core.config import load_settings
from edgeloop.monitoring.scan import ScanOptions, scan_window
from edgeloop.monitoring.simulate import replay_images

pytestmark = pytest.mark.slow


def test_relabeled_images_reach_the_label_import_and_improve_the_model(
    stack_settings, blob_store, mon_assets, tmp_path
):
    from edgeloop.components.dataset import build_dataset, load_rows
    from edgeloop.components.labels import import_labels, read_manifest
    from edgeloop.local.sample_data import CLASSES, generate_dataset
    from edgeloop.monitoring.model import ModelRunner
    from edgeloop.testing.monitoring import labeled_images, train_tiny_model

    project = f"loop-{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        state_dir=tmp_path / "state",
        blob={"connection_string": stack_settings.blob_connection_string()},
        labelstudio={
            "url": stack_settings.labelstudio_url(),
            "api_key": stack_settings.labelstudio_api_key(),
            "project_title": project,
        },
    )

    # served traffic from the new site, scanned: flagged images become relabel tasks
    model_name = f"loop-{uuid.uuid4().hex[:6]}"
    ts = datetime.now(UTC)
    recs = replay_images(
        settings, mon_assets.model_dir, mon_assets.images("shifted"), ts=ts, model_name=model_name
    )
    truth = {r.image_sha256: lbl for r, lbl in zip(recs, mon_assets.labels("shifted"), strict=True)}
    report = scan_window(
        settings,
        mon_assets.model_dir,
        ts - timedelta(minutes=5),
        ts + timedelta(minutes=5),
        ScanOptions(budget=20, payload_model=model_name),
    )
    assert report.drift and report.delivery["delivered"] == len(report.selected) > 0

    # a labeler answers every relabel task through the API
    ls = lsx.client(settings)
    proj = lsx.find_project(ls, project)
    tasks = lsx.tasks_by_sha(ls, proj.id)
    for sha, task in tasks.items():
        lsx.annotate(ls, task.id, truth[sha], proj.id)

    # the training engineer's label import sees them like any seeded image
    manifest = tmp_path / "labels.jsonl"
    imported = import_labels(settings, project, manifest)
    rows = {r.sha256: r for r in read_manifest(manifest)}
    assert set(rows) == set(tasks)
    assert imported.labeled_images == len(tasks)
    for sha, row in rows.items():
        assert row.image == f"az://payloads/images/{sha}.png"
        assert row.label == truth[sha]
        assert row.prediction and row.prediction["model_version"] == f"{model_name}:1"

    # ... and the dataset build fetches them; retraining with them helps on the new site
    info = build_dataset(
        None, manifest, tmp_path / "dataset", upload=False, log_mlflow=False, store=blob_store
    )
    assert info is not None
    new_rows = load_rows(tmp_path / "dataset")
    assert len(new_rows) == len(tasks)
    extra = [tmp_path / "dataset" / r.file for r in new_rows]
    train_paths, train_labels = labeled_images(mon_assets.dir("train"))
    retrained = train_tiny_model(
        tmp_path / "model-v2",
        train_paths + extra,
        train_labels + [r.label for r in new_rows],
        CLASSES,
        size=mon_assets.size,
        version="2",
    )

    held = tmp_path / "heldout-shifted"
    generate_dataset(held, per_class=20, seed=31, size=mon_assets.size, shifted=True)
    paths, labels = labeled_images(held)

    def accuracy(model_dir):
        out = ModelRunner(model_dir).run(paths)
        return float(np.mean(np.array(CLASSES)[out.labels_idx] == np.array(labels)))

    before, after = accuracy(mon_assets.model_dir), accuracy(retrained)
    print(
        f"accuracy on held-out shifted images: before {before:.3f}, after retraining with "
        f"{len(new_rows)} relabeled images {after:.3f}"
    )
    assert after > before
