"""Detection labels through the real Label Studio and Azurite: seeded boxes become RectangleLabels
annotations, a labeler's corrected box and an image marked "no defects" come back in the next import,
and the dataset built from it holds the boxes in pixels (COCO per split)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeloop.cli import cli
from edgeloop.components.dataset import build_dataset, coco_file
from edgeloop.components.errors import LabelImportError
from edgeloop.components.labels import import_labels, read_manifest
from edgeloop.core import labelstudio as lsx
from edgeloop.core.boxes import Box
from edgeloop.local.sample_data import generate_detection_dataset, read_coco_boxes
from edgeloop.local.seed import seed_directory

PROJECT = "edgeloop-detection-it"


@pytest.fixture(scope="module")
def det_sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("det-sample")
    generate_detection_dataset(out, images=24, seed=11, size=96)
    return out


@pytest.fixture(scope="module")
def seeded(stack_settings, det_sample):
    return seed_directory(stack_settings, det_sample, source="det-it", project_title=PROJECT, progress=False)


def test_seeding_a_coco_folder_makes_a_box_project_with_every_box_and_no_duplicates(
    stack_settings, det_sample, seeded
):
    truth = read_coco_boxes(det_sample)
    assert seeded.task == lsx.DETECTION and seeded.images_found == 24 == seeded.annotations_created
    ls = lsx.client(stack_settings)
    project = lsx.find_project(ls, PROJECT)
    assert lsx.task_of(project.label_config) == lsx.DETECTION
    assert set(lsx.classes_of(project.label_config)) >= {"scratch", "dent", "stain"}
    tasks = lsx.tasks_by_sha(ls, project.id)
    by_file = {t.data["source_file"]: t for t in tasks.values()}
    for file, (w, h, boxes) in truth.items():
        task = by_file[file]
        assert (task.data["width"], task.data["height"]) == (w, h)
        assert lsx.boxes_of(task.annotations[0]["result"]) == boxes  # percent in Label Studio, pixels back
    again = seed_directory(stack_settings, det_sample, source="det-it", project_title=PROJECT, progress=False)
    assert (again.tasks_created, again.annotations_created, again.tasks_existing) == (0, 0, 24)


def test_a_corrected_box_and_a_no_defects_answer_come_back_in_the_next_import(
    stack_settings, det_sample, seeded, tmp_path
):
    ls = lsx.client(stack_settings)
    project = lsx.find_project(ls, PROJECT)
    truth = read_coco_boxes(det_sample)
    tasks = sorted(lsx.tasks_by_sha(ls, project.id).values(), key=lambda t: t.data["source_file"])
    with_box = next(t for t in tasks if truth[t.data["source_file"]][2])
    w, h, boxes = truth[with_box.data["source_file"]]
    corrected = [Box(boxes[0].label, boxes[0].x + 3, boxes[0].y, boxes[0].w, boxes[0].h), *boxes[1:]]
    lsx.annotate(ls, with_box.id, lsx.rectangle_result(corrected, w, h), project.id)  # a newer annotation
    cleared = next(t for t in tasks if t.id != with_box.id and truth[t.data["source_file"]][2])
    lsx.annotate(ls, cleared.id, [], project.id)  # the labeler says: no defect here after all

    report = import_labels(stack_settings, PROJECT, tmp_path / "manifest.jsonl")
    assert report.task == lsx.DETECTION and report.labeled_images == 24 and report.invalid_tasks == []
    rows = {r.task_id: r for r in read_manifest(tmp_path / "manifest.jsonl")}
    assert rows[with_box.id].box_list() == corrected
    assert rows[cleared.id].boxes == []
    expected = sum(len(b) for _, _, b in truth.values()) - len(truth[cleared.data["source_file"]][2])
    assert sum(report.box_counts.values()) == expected

    info = build_dataset(stack_settings, tmp_path / "manifest.jsonl", tmp_path / "ds", log_mlflow=False)
    assert info.task == lsx.DETECTION and info.images == 24
    total = 0
    for split in ("train", "val", "test"):
        doc = json.loads((tmp_path / "ds" / coco_file(split)).read_text())
        total += len(doc["annotations"])
        from edgeloop.core.blob import BlobStore

        assert BlobStore.from_settings(stack_settings).exists(f"{info.blob_uri}{coco_file(split)}")
    assert total == expected

    with pytest.raises(LabelImportError, match="label-policy latest"):
        import_labels(stack_settings, PROJECT, tmp_path / "m2.jsonl", policy="majority")


def test_a_detection_folder_is_refused_by_a_classification_project(stack_settings, det_sample, sample_dir):
    title = "edgeloop-detection-it-classes"
    seed_directory(stack_settings, sample_dir, source="det-it-c", project_title=title, progress=False)
    with pytest.raises(lsx.LabelingTaskError, match="classification project, not detection"):
        seed_directory(stack_settings, det_sample, source="det-it", project_title=title, progress=False)


def test_the_cli_generates_and_seeds_a_detection_sample(stack_settings, tmp_path):
    env = {"EDGELOOP_STATE_DIR": str(stack_settings.state_dir)}
    out = tmp_path / "gen"
    r = CliRunner().invoke(
        cli,
        ["data", "generate", "--task", "detection", "--images", "6", "--size", "64", "-o", str(out)],
        env=env,
    )
    assert r.exit_code == 0, r.output
    assert "6 images" in r.output and "defect boxes" in r.output
    r = CliRunner().invoke(
        cli, ["data", "seed", "--from", str(out), "--project", "edgeloop-detection-it-cli"], env=env
    )
    assert r.exit_code == 0, r.output
    assert "detection" in r.output and "6 labels submitted" in r.output
    r = CliRunner().invoke(cli, ["data", "seed", "--from", str(out), "--task", "classification"], env=env)
    assert r.exit_code != 0 and "annotations.json" in r.output
