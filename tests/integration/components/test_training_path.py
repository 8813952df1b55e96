"""The training path on the real local stack: Label Studio -> blob dataset -> DDP (2 processes) -> ONNX ->
precision -> model card -> MLflow. Small sizes: this checks the plumbing, not the accuracy."""

from __future__ import annotations

import json

import pytest

from edgeloop.components.dataset import build_dataset, load_rows
from edgeloop.components.labels import import_labels
from edgeloop.components.path import run_training_path
from edgeloop.components.training import TrainConfig
from edgeloop.core import labelstudio as lsx
from edgeloop.core.model_card import MODEL_FILE, ModelCard, sha256_bytes

PROJECT = "edgeloop-training-path-it"


@pytest.fixture(scope="module")
def seeded(stack_settings, sample_dir, blob_store):
    """The sample in its own project, plus one labeled task whose image is corrupt."""
    from edgeloop.local.seed import seed_directory

    seed_directory(stack_settings, sample_dir, source="training-it", project_title=PROJECT, progress=False)
    corrupt = b"\x89PNG\r\n\x1a\n" + b"\x00not-an-image" * 40
    sha = sha256_bytes(corrupt)
    uri = f"az://{stack_settings.blob.images_container}/training-it/{sha}.png"
    blob_store.upload(uri, corrupt)
    ls = lsx.client(stack_settings)
    project = lsx.find_project(ls, PROJECT)
    if sha not in lsx.tasks_by_sha(ls, project.id):
        lsx.import_tasks(ls, project.id, [{"image": blob_store.sas_url(uri), "blob_uri": uri, "sha256": sha}])
        task = lsx.tasks_by_sha(ls, project.id)[sha]
        lsx.annotate(ls, task.id, "ok", project.id)
    return uri


@pytest.mark.slow
def test_full_training_path_on_the_real_stack(stack_settings, seeded, blob_store, tmp_path):
    import mlflow

    config = TrainConfig(arch="mobilenet_v3_small", size=48, epochs=2, batch_size=16, min_epochs=1)
    res = run_training_path(
        stack_settings,
        tmp_path / "run",
        project=PROJECT,
        config=config,
        nproc_per_node=2,
        progress=False,
        log=lambda m: None,
    )

    # the corrupt image was reported and left out, the rest made it
    assert [e["image"] for e in res.dataset["excluded"]] == [seeded]
    assert res.dataset["images"] == res.import_report["labeled_images"] - 1 >= 96
    # parity and the model directory the serving side loads
    assert res.parity["top1_agreement"] == 1.0 and res.parity["max_abs_diff"] <= 1e-4
    card = ModelCard.load(tmp_path / "run" / "model")
    card.verify(tmp_path / "run" / "model")
    assert set(card.files) == {MODEL_FILE}
    assert card.dataset_version == res.dataset_version and card.labels == ["dent", "ok", "scratch", "stain"]
    assert card.precision.value == res.precision and card.precision_evidence["measurements"]
    assert card.lineage["mlflow_run_id"] == res.run_id and card.lineage["git_commit"]
    # MLflow: params, per-epoch metrics, dataset, lineage and the model directory as artifacts
    mlflow.set_tracking_uri(stack_settings.mlflow_tracking_uri())
    run = mlflow.get_run(res.run_id)
    assert run.data.tags["dataset_version"] == res.dataset_version
    assert run.data.params["arch"] == "mobilenet_v3_small" and run.data.params["world_size"] == "2"
    assert "git_commit" in run.data.tags and "val_accuracy" in run.data.metrics
    history = mlflow.MlflowClient().get_metric_history(res.run_id, "val_accuracy")
    assert len(history) >= 2
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(res.run_id, "model")}
    assert artifacts == {"model/model.onnx", "model/model_card.json"}
    assert [i.dataset.digest for i in run.inputs.dataset_inputs] == [res.dataset_version]
    # the dataset index is stored in blob storage under its version
    assert blob_store.exists(
        f"az://{stack_settings.blob.datasets_container}/{res.dataset_version}/index.jsonl"
    )


@pytest.mark.slow
def test_unchanged_labels_same_version_new_labels_only_add_rows(stack_settings, seeded, tmp_path):
    from edgeloop.local.sample_data import generate_dataset
    from edgeloop.local.seed import seed_directory

    def build(name):
        import_labels(stack_settings, PROJECT, tmp_path / f"{name}.jsonl")
        return build_dataset(
            stack_settings, tmp_path / f"{name}.jsonl", tmp_path / name, upload=False, log_mlflow=False
        )

    a, b = build("a"), build("b")
    assert a.version == b.version
    assert (tmp_path / "a" / "index.jsonl").read_bytes() == (tmp_path / "b" / "index.jsonl").read_bytes()

    import time

    generate_dataset(tmp_path / "extra", per_class=2, seed=int(time.time()) % 1_000_000, size=128)
    seed_directory(
        stack_settings, tmp_path / "extra", source="training-it-extra", project_title=PROJECT, progress=False
    )
    c = build("c")
    assert c.version != a.version and c.images == a.images + 8
    before = {(r.sha256, r.split, r.label) for r in load_rows(tmp_path / "a")}
    after = {(r.sha256, r.split, r.label) for r in load_rows(tmp_path / "c")}
    assert before < after
    assert json.loads((tmp_path / "c" / "dataset.json").read_text())["version"] == c.version
