"""Detection labels without a server: seeded samples with exact boxes, Label Studio's percent regions
to pixels and back, the import's choices for boxes, and the detection dataset's version and COCO files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeloop.components.dataset import build_dataset, coco_file, load_rows
from edgeloop.components.errors import LabelImportError
from edgeloop.components.labels import ManifestRow, resolve_export, write_manifest
from edgeloop.core import labelstudio as lsx
from edgeloop.core.boxes import Box
from edgeloop.local.sample_data import (
    COCO_FILE,
    DEFECT_CLASSES,
    generate_detection_dataset,
    read_coco_boxes,
    render_inspection,
)


def test_inspection_samples_are_seeded_and_every_box_lies_on_the_image():
    counts = []
    for seed in range(40):
        img, boxes = render_inspection(seed, size=96)
        again, same = render_inspection(seed, size=96)
        assert np.array_equal(np.asarray(img), np.asarray(again)) and boxes == same
        assert img.size == (96, 96)
        for b in boxes:
            assert b.label in DEFECT_CLASSES
            assert b.x >= 0 and b.y >= 0 and b.x + b.w <= 96 and b.y + b.h <= 96 and b.w > 1 and b.h > 1
        counts.append(len(boxes))
    assert set(counts) >= {0, 1, 2}  # images without defects and with several


def test_every_defect_lies_in_its_box_and_nothing_outside_the_boxes_changes():
    """Against the same tag without defects: each box holds changed pixels, no pixel changes outside
    the boxes (beyond a 2-pixel margin for the lens blur)."""
    checked = 0
    for seed in range(25):
        img, boxes = render_inspection(seed, size=128, shifted=seed % 3 == 0)
        clean, none = render_inspection(seed, size=128, shifted=seed % 3 == 0, defects=False)
        assert none == []
        diff = np.abs(np.asarray(img, np.int16) - np.asarray(clean, np.int16)).max(axis=2) > 12
        covered = np.zeros_like(diff)
        for b in boxes:
            x0, y0 = max(0, int(b.x) - 2), max(0, int(b.y) - 2)
            x1, y1 = int(np.ceil(b.x + b.w)) + 2, int(np.ceil(b.y + b.h)) + 2
            assert diff[int(b.y) : int(b.y + b.h) + 1, int(b.x) : int(b.x + b.w) + 1].sum() >= 4, (seed, b)
            covered[y0:y1, x0:x1] = True
            checked += 1
        assert not (diff & ~covered).any(), seed
    assert checked >= 20


def test_generated_folder_holds_coco_boxes_that_read_back(tmp_path):
    samples = generate_detection_dataset(tmp_path, images=12, seed=3, size=96)
    doc = json.loads((tmp_path / COCO_FILE).read_text())
    assert [c["name"] for c in doc["categories"]] == list(DEFECT_CLASSES)
    assert len(doc["images"]) == 12 and len(doc["annotations"]) == sum(len(b) for _, b in samples)
    back = read_coco_boxes(tmp_path)
    for meta, boxes in samples:
        assert (tmp_path / meta.file).exists()
        assert back[meta.file] == (96, 96, boxes)
    again = tmp_path / "again"
    generate_detection_dataset(again, images=12, seed=3, size=96)
    assert (again / COCO_FILE).read_bytes() == (tmp_path / COCO_FILE).read_bytes()


def test_label_config_says_its_task_type_and_classes():
    det = lsx.label_config(["scratch", "dent"], lsx.DETECTION)
    assert lsx.task_of(det) == lsx.DETECTION and lsx.classes_of(det) == ["scratch", "dent"]
    cls = lsx.label_config(["ok", "dent"])
    assert lsx.task_of(cls) == lsx.CLASSIFICATION and lsx.classes_of(cls) == ["ok", "dent"]
    with pytest.raises(lsx.LabelingTaskError, match="classification, detection"):
        lsx.label_config(["a"], "segmentation")


def test_boxes_go_to_label_studio_percent_and_come_back_in_pixels():
    boxes = [Box("scratch", 10.5, 20.25, 30.0, 4.5), Box("stain", 0.0, 60.0, 40.0, 36.0)]
    result = lsx.rectangle_result(boxes, 160, 96)
    assert result[0]["value"]["x"] == pytest.approx(100 * 10.5 / 160)
    assert result[1]["value"]["height"] == pytest.approx(100 * 36 / 96)
    assert lsx.boxes_of(result) == boxes
    # without original_width/height the task's size is used; without either, an error that names the fix
    bare = [{k: v for k, v in r.items() if not k.startswith("original_")} for r in result]
    assert lsx.boxes_of(bare, 160, 96) == boxes
    with pytest.raises(lsx.LabelingTaskError, match="no image size"):
        lsx.boxes_of(bare)


def test_boxes_are_clipped_to_the_image_and_rotated_ones_refused():
    r = lsx.rectangle_result([Box("dent", -8.0, 90.0, 20.0, 20.0)], 100, 100)
    assert lsx.boxes_of(r) == [Box("dent", 0.0, 90.0, 12.0, 10.0)]
    r[0]["value"]["rotation"] = 30
    with pytest.raises(lsx.LabelingTaskError, match="rotated"):
        lsx.boxes_of(r)


def _task(tid, annotations, w=100, h=80):
    sha = f"{tid:064x}"
    return {
        "id": tid,
        "annotations": annotations,
        "predictions": [],
        "data": {"blob_uri": f"az://images/d/{sha}.png", "sha256": sha, "width": w, "height": h},
    }


def _ann(aid, boxes, when, cancelled=False):
    return {
        "id": aid,
        "result": lsx.rectangle_result(boxes, 100, 80),
        "was_cancelled": cancelled,
        "completed_by": 1,
        "created_at": when,
        "updated_at": when,
    }


def test_detection_import_takes_the_latest_boxes_counts_empty_images_and_reports_unusable_ones():
    first = [Box("dent", 10, 10, 20, 20)]
    corrected = [Box("dent", 12, 11, 18, 19), Box("scratch", 50, 40, 30, 5)]
    rotated = _ann(5, [Box("stain", 5, 5, 10, 10)], "2026-01-01")
    rotated["result"][0]["value"]["rotation"] = 45
    tasks = [
        _task(1, [_ann(1, first, "2026-01-01"), _ann(2, corrected, "2026-01-02")]),
        _task(2, [_ann(3, [], "2026-01-01")]),  # submitted without boxes: no defects
        _task(3, [_ann(4, first, "2026-01-01", cancelled=True)]),  # skipped: unlabeled
        _task(4, [rotated]),
        _task(5, []),
    ]
    rows, report = resolve_export(tasks, detection=True)
    assert [r.task_id for r in rows] == [1, 2]
    assert rows[0].box_list() == corrected and (rows[0].width, rows[0].height) == (100, 80)
    assert rows[1].boxes == [] and rows[1].label == ""
    assert report.box_counts == {"dent": 1, "scratch": 1} and report.images_without_defects == 1
    assert report.unlabeled_tasks == 2 and report.cancelled_annotations == 1
    assert [t["task_id"] for t in report.invalid_tasks] == [4] and "rotated" in report.invalid_tasks[0][
        "reason"
    ]
    with pytest.raises(LabelImportError, match="label-policy latest"):
        resolve_export(tasks, "majority", detection=True)


class _Store:
    def __init__(self, files):
        self.files = files

    def download(self, uri):
        return self.files[uri]


def _detection_manifest(tmp_path, samples, root, move_first=0.0):
    rows, files = [], {}
    for i, (meta, boxes) in enumerate(samples):
        data = (root / meta.file).read_bytes()
        from edgeloop.core.model_card import sha256_bytes

        sha = sha256_bytes(data)
        uri = f"az://images/d/{sha}.png"
        files[uri] = data
        if i == 0 and boxes:
            boxes = [Box(boxes[0].label, boxes[0].x + move_first, *boxes[0].as_coco()[1:]), *boxes[1:]]
        rows.append(
            ManifestRow(
                uri, sha, "", "a", "t", i, i, 1, 1.0, boxes=[b.as_dict() for b in boxes], width=96, height=96
            )
        )
    path = write_manifest(rows, tmp_path / f"manifest-{move_first}.jsonl")
    return path, _Store(files)


def test_detection_dataset_writes_coco_per_split_and_its_version_follows_the_boxes(tmp_path):
    root = tmp_path / "sample"
    samples = generate_detection_dataset(root, images=30, seed=1, size=96)
    samples.sort(key=lambda s: -len(s[1]))  # the first one has a box to move
    manifest, store = _detection_manifest(tmp_path, samples, root)
    kw = dict(upload=False, log_mlflow=False, store=store)
    info = build_dataset(None, manifest, tmp_path / "ds", **kw)
    assert info.task == lsx.DETECTION and info.images == 30
    assert info.classes == sorted({b.label for _, bs in samples for b in bs})
    total = sum(len(b) for _, b in samples)
    assert sum(n for split in info.counts.values() for n in split.values()) == total
    coco_boxes = 0
    for split in ("train", "val", "test"):
        doc = json.loads((tmp_path / "ds" / coco_file(split)).read_text())
        rows = load_rows(tmp_path / "ds", split)
        assert len(doc["images"]) == len(rows) == info.images_per_split[split]
        coco_boxes += len(doc["annotations"])
    assert coco_boxes == total
    assert build_dataset(None, manifest, tmp_path / "ds2", **kw).version == info.version
    moved, store = _detection_manifest(tmp_path, samples, root, move_first=2.0)
    assert build_dataset(None, moved, tmp_path / "ds3", **kw).version != info.version
