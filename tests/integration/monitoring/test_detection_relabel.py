"""A detector's flagged images go to the real Label Studio as RectangleLabels tasks pre-annotated with
the model's boxes; what labelers make of them (a moved box, the boxes accepted, "no defects") comes
back in the next label import; a second delivery makes no duplicates."""

from __future__ import annotations

import pytest

from edgeloop.components.labels import import_labels, read_manifest
from edgeloop.core import labelstudio as lsx
from edgeloop.core.blob import BlobStore
from edgeloop.core.boxes import Box
from edgeloop.core.model_card import sha256_bytes
from edgeloop.local.sample_data import generate_detection_dataset, read_coco_boxes
from edgeloop.monitoring.relabel import RelabelItem, RelabelQueue
from edgeloop.testing.stack import settings_on

PROJECT = "edgeloop-detection-relabel-it"
SIZE = 96


@pytest.fixture(scope="module")
def flagged(stack_settings, tmp_path_factory):
    """Three images with defects, uploaded like the payload log does, and the model's boxes for each
    (the true boxes moved by 3 px, as a model's would be)."""
    out = tmp_path_factory.mktemp("det-relabel")
    generate_detection_dataset(out, images=12, seed=21, size=SIZE)
    truth = read_coco_boxes(out)
    store = BlobStore.from_settings(stack_settings)
    store.ensure_container(stack_settings.blob.payloads_container)
    items, boxes_by_sha = [], {}
    for file, (w, h, boxes) in sorted(truth.items()):
        if not boxes or len(items) == 3:
            continue
        data = (out / file).read_bytes()
        sha = sha256_bytes(data)
        uri = store.upload(f"az://{stack_settings.blob.payloads_container}/images/{sha}.png", data)
        dets = [
            {"label": b.label, "score": 0.6, "x": b.x + 3, "y": b.y, "width": b.w, "height": b.h}
            for b in boxes
        ]
        items.append(
            RelabelItem(
                sha256=sha,
                blob_uri=str(uri),
                image_url="",
                predicted_label=f"{len(dets)} defects",
                score=0.6,
                model_version="inspection-detector:3",
                flag_reason="low_confidence",
                flag_score=0.6,
                labels=["scratch", "dent", "stain"],
                detections=dets,
                width=w,
                height=h,
            )
        )
        boxes_by_sha[sha] = boxes
    return items, boxes_by_sha


def test_flagged_detections_become_box_tasks_and_corrections_come_back(stack_settings, flagged, tmp_path):
    items, truth = flagged
    settings = settings_on(stack_settings, tmp_path / "state")
    queue = RelabelQueue.for_settings(settings)
    assert queue.enqueue(PROJECT, items).enqueued == 3
    report = queue.deliver(settings, PROJECT)
    assert (report.delivered, report.pending, report.failed) == (3, 0, 0), report

    ls = lsx.client(settings)
    project = lsx.find_project(ls, PROJECT)
    assert lsx.task_of(project.label_config) == lsx.DETECTION
    tasks = lsx.tasks_by_sha(ls, project.id)
    assert set(tasks) == set(truth)
    for item in items:
        task = tasks[item.sha256]
        assert (task.data["width"], task.data["height"]) == (item.width, item.height)
        assert "Flagged for relabeling: low_confidence" in task.data[lsx.NOTE]
        (pred,) = task.predictions
        shown = lsx.boxes_of(pred["result"] if isinstance(pred, dict) else pred.result)
        want = [Box(d["label"], d["x"], d["y"], d["width"], d["height"]) for d in item.detections]
        assert [b.label for b in shown] == [b.label for b in want]
        for got, exp in zip(shown, want, strict=True):
            assert got.x == pytest.approx(exp.x, abs=0.01) and got.w == pytest.approx(exp.w, abs=0.01)

    moved, accepted, cleared = (tasks[i.sha256] for i in items)
    w, h = items[0].width, items[0].height
    lsx.annotate(ls, moved.id, lsx.rectangle_result(truth[items[0].sha256], w, h), project.id)  # boxes fixed
    lsx.annotate(
        ls,
        accepted.id,
        lsx.rectangle_result(
            [Box(d["label"], d["x"], d["y"], d["width"], d["height"]) for d in items[1].detections], w, h
        ),
        project.id,
    )  # the model's boxes, as they were
    lsx.annotate(ls, cleared.id, [], project.id)  # no defect after all

    imported = import_labels(settings, PROJECT, tmp_path / "manifest.jsonl")
    assert imported.task == lsx.DETECTION and imported.labeled_images == 3 and not imported.invalid_tasks
    rows = {r.sha256: r for r in read_manifest(tmp_path / "manifest.jsonl")}
    got = rows[items[0].sha256].box_list()
    assert [b.label for b in got] == [b.label for b in truth[items[0].sha256]]
    for g, t in zip(got, truth[items[0].sha256], strict=True):
        assert g.x == pytest.approx(t.x, abs=0.05)  # the labeler's box, not the model's (3 px off)
    assert rows[items[1].sha256].box_list()[0].x == pytest.approx(items[1].detections[0]["x"], abs=0.05)
    assert rows[items[2].sha256].boxes == []
    assert rows[items[0].sha256].metadata.get("source") == "relabel"

    again = queue.deliver(settings, PROJECT)
    assert again.delivered == 0 and len(lsx.tasks_by_sha(ls, project.id)) == 3
    assert queue.enqueue(PROJECT, items).already_delivered == 3
