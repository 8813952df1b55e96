"""The ML backend on the real stack: `edgeloop labeling backend serve --connect` joins the Label Studio
project, and a task a labeler imports (no prediction of its own) shows the champion's prediction when
it is opened; seeded tasks get theirs through "retrieve predictions"; wrong credentials are refused."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgeloop.core import labelstudio as lsx
from edgeloop.core.errors import EdgeloopError
from edgeloop.core.model_card import sha256_file
from edgeloop.labeling.backend import connect, request_predictions, running_backend
from edgeloop.local.sample_data import generate_dataset
from edgeloop.monitoring.model import ModelRunner
from edgeloop.testing.models import build_tiny_model_dir
from edgeloop.testing.waits import read_line, wait_until


def _expected(model_dir: Path, image: Path) -> str:
    runner = ModelRunner(model_dir)
    return runner.card.labels[int(np.argmax(runner.run([image]).probabilities[0]))]


def _wait_connected(ls, project_id: int, ls_url: str, timeout_s: float = 60) -> list:
    return wait_until(
        lambda: list(ls.ml.list(project=project_id)),
        timeout_s,
        f"the ML backend to appear in project {project_id} of Label Studio at {ls_url}",
        step_s=0.5,
    )


@contextlib.contextmanager
def _backend(stack_settings, model: Path, title: str) -> Iterator[str]:
    """`edgeloop labeling backend serve --model-dir MODEL --connect` for project ``title``; yields its URL."""
    env = {
        **os.environ,
        "EDGELOOP_STATE_DIR": str(stack_settings.state_dir),
        "EDGELOOP_LABELSTUDIO__PROJECT_TITLE": title,
    }
    cmd = ["labeling", "backend", "serve", "--model-dir", str(model), "--connect"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeloop.cli", *cmd],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        url = read_line(proc.stdout, 120, "the URL `edgeloop labeling backend serve` prints first").strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.poll() is not None else url
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(20)


def test_imported_and_seeded_tasks_arrive_pre_annotated(stack_settings, blob_store, tmp_path):
    from edgeloop.local.seed import seed_directory

    title = f"mlb-{uuid.uuid4().hex[:8]}"
    settings = stack_settings.model_copy(
        update={"labelstudio": stack_settings.labelstudio.model_copy(update={"project_title": title})}
    )
    model = build_tiny_model_dir(tmp_path / "model", seed=3, version="7")
    images = tmp_path / "images"
    generate_dataset(images, per_class=1, seed=5, size=64)
    seeded = seed_directory(settings, images, source="mlb", progress=False)  # labeled tasks, no predictions
    assert seeded.tasks_created == 4

    with _backend(stack_settings, model, title) as url:
        ls = lsx.client(settings)
        project = lsx.find_project(ls, title)
        (backend,) = _wait_connected(ls, project.id, settings.labelstudio_url())
        assert backend.url == url and backend.auth_method == "BASIC_AUTH"
        assert ls.ml.get(backend.id).readable_state == "Connected"

        # a labeler imports a task through Label Studio's API: only an image link, no prediction
        new_image = tmp_path / "new.png"
        from PIL import Image

        Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(new_image)
        uri = f"az://{settings.blob.images_container}/imported/{uuid.uuid4().hex}.png"
        blob_store.upload(uri, new_image.read_bytes())
        (task_id,) = lsx.import_tasks(ls, project.id, [{"image": blob_store.sas_url(uri, hours=1)}])
        assert not list(ls.predictions.list(task=task_id))

        ls.tasks.get(str(task_id))  # what the labeling page does when the task is opened
        (pred,) = ls.predictions.list(task=task_id)
        assert pred.model_version == "inspection:7"
        assert pred.result[0]["value"]["choices"] == [_expected(model, new_image)]
        assert pred.result[0]["from_name"] == lsx.FROM_NAME and 0 < pred.score <= 1

        # the seeded tasks: Label Studio's "retrieve predictions" over the whole project
        assert request_predictions(settings) == 5
        by_sha = lsx.tasks_by_sha(ls, project.id)
        for row in _meta(images):
            task = by_sha[sha256_file(images / row["file"])]
            (p,) = ls.predictions.list(task=task.id)
            assert p.result[0]["value"]["choices"] == [_expected(model, images / row["file"])]
        # asking again creates nothing new: Label Studio skips tasks with this model version's prediction
        request_predictions(settings)
        assert len(list(ls.predictions.list(project=project.id))) == 5


def _meta(directory: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (directory / "metadata.jsonl").read_text().splitlines() if line]


def test_wrong_credentials_are_refused_when_connecting(stack_settings, tmp_path):
    title = f"mlb-auth-{uuid.uuid4().hex[:8]}"
    ls = lsx.client(stack_settings)
    lsx.ensure_project(ls, title, ["ok", "scratch", "dent", "stain"])
    model = build_tiny_model_dir(tmp_path / "model")
    with running_backend(stack_settings, model, ("edgeloop-ml", "right-password")) as backend:
        with pytest.raises(EdgeloopError, match="authentication parameters"):
            connect(stack_settings, backend.url, title, credentials=("edgeloop-ml", "wrong-password"))
        c = connect(stack_settings, backend.url, title, credentials=("edgeloop-ml", "right-password"))
        assert c.state == "Connected" and c.model_version == "inspection:None" and c.created
        again = connect(stack_settings, backend.url, title, credentials=("edgeloop-ml", "right-password"))
        assert again.backend_id == c.backend_id and not again.created  # reconnecting updates, no duplicate


def test_a_detector_backend_pre_annotates_a_box_project_with_its_boxes(stack_settings, tmp_path):
    """The same backend serving a detector joins a RectangleLabels project; "retrieve predictions"
    gives every task the detector's boxes (in the image's pixels, each region with its score)."""
    from edgeloop.components.detection_runtime import DetectorRunner
    from edgeloop.labeling.backend import BOX_SCORE_FLOOR
    from edgeloop.local.sample_data import generate_detection_dataset
    from edgeloop.local.seed import seed_directory
    from edgeloop.testing.models import build_detection_model_dir

    title = f"mlb-det-{uuid.uuid4().hex[:8]}"
    settings = stack_settings.model_copy(
        update={"labelstudio": stack_settings.labelstudio.model_copy(update={"project_title": title})}
    )
    model = build_detection_model_dir(tmp_path / "model", size=96, seed=3, version="2")
    images = tmp_path / "images"
    generate_detection_dataset(images, images=4, seed=5, size=96)
    seeded = seed_directory(settings, images, source="mlb-det", project_title=title, progress=False)
    assert seeded.task == lsx.DETECTION and seeded.tasks_created == 4

    with _backend(stack_settings, model, title):
        ls = lsx.client(settings)
        project = lsx.find_project(ls, title)
        _wait_connected(ls, project.id, settings.labelstudio_url())
        assert request_predictions(settings) == 4
        runner = DetectorRunner.from_dir(model)
        from PIL import Image

        for task in lsx.tasks_by_sha(ls, project.id).values():
            (pred,) = ls.predictions.list(task=task.id)
            assert pred.model_version == "inspection:2"
            image = np.asarray(Image.open(images / task.data["source_file"]).convert("RGB"))
            want = runner.detect([image], BOX_SCORE_FLOOR)[0]
            assert want, "the seeded detector should find boxes"
            shown = lsx.boxes_of(pred.result)
            assert [b.label for b in shown] == [d.box.label for d in want]
            for b, d, region in zip(shown, want, pred.result, strict=True):
                assert b.x == pytest.approx(d.box.x, abs=0.05) and b.h == pytest.approx(d.box.h, abs=0.05)
                assert region["type"] == "rectanglelabels" and region["score"] == pytest.approx(d.score)
