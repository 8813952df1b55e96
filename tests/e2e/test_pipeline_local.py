"""The whole loop, locally: `edgeloop pipeline run --local --auto-approve` on the sample data ends with an
approved, deployed `champion` whose evidence is in MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

SMALL = [
    "-p",
    "epochs=2",
    "-p",
    "image_size=64",
    "-p",
    "architecture=resnet18",
    "-p",
    "latency_requests=40",
    # a 2-epoch model on 80 images is weak: the test checks the loop, not the model's quality
    # (and its ~10 test images are too few for the gate's evidence bar, lowered here on purpose)
    "-p",
    "min_eval_images=0",
    "-p",
    "min_accuracy=0",
    "-p",
    "min_class_recall=0",
    "-p",
    "max_ece=1",
    "-p",
    "max_latency_p95_ms=2000",
]


def _edgeloop(settings, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGELOOP_STATE_DIR": str(settings.state_dir)}
    return subprocess.run(
        [sys.executable, "-m", "edgeloop.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def mlflow_text(settings, uri: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri())
    return mlflow.artifacts.load_text(uri)


def test_local_pipeline_run_ends_with_an_approved_champion(stack_settings, sample_dir):
    from edgeloop.local.seed import seed_directory
    from edgeloop.pipelines import registry

    seed_directory(stack_settings, sample_dir, source="sample", progress=False)
    t0 = time.perf_counter()
    r = _edgeloop(stack_settings, "pipeline", "run", "--local", "--auto-approve", "--json", *SMALL)
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    outcome = json.loads(r.stdout)
    print(f"\nlocal pipeline run: {seconds:.1f} s wall ({outcome['seconds']} s in the runner)")
    assert outcome["succeeded"] and outcome["gate_passed"] and outcome["decision"] == "approved"
    assert outcome["deployed_to"].startswith("gitops:")

    version = outcome["version"]
    assert registry.champion_version(stack_settings) == version
    tags = registry.version_tags(stack_settings, version)
    assert tags[registry.APPROVAL] == "approved" and tags[registry.APPROVAL_MODE] == "auto"
    assert tags[registry.APPROVAL_BY] == "edgeloop-auto"  # the local auto-approver account, said plainly
    assert tags[registry.APPROVAL_EVIDENCE] == tags[registry.EVIDENCE_DIGEST]
    v = _edgeloop(stack_settings, "registry", "verify", stack_settings.mlflow.registered_model, "champion")
    assert v.returncode == 0 and "approved by edgeloop-auto (auto)" in v.stdout, v.stdout + v.stderr
    for key in (
        "lineage.dataset_version",
        "lineage.labels_digest",
        "lineage.pipeline_run",
        "lineage.git_commit",
        registry.MODEL_DIGEST,
        registry.STORAGE_URI,
        registry.DEPLOYED_TO,
    ):
        assert tags.get(key), key

    c = registry.client(stack_settings)
    run_id = c.get_model_version(stack_settings.mlflow.registered_model, version).run_id
    evidence = {a.path for a in c.list_artifacts(run_id, "evidence")}
    assert {
        "evidence/evaluation.json",
        "evidence/report.md",
        "evidence/confusion_matrix.json",
        "evidence/confusion_matrix.png",
        "evidence/gate.json",
    } <= evidence
    # the version is an MLflow model (the registration run's LoggedModel) with edgeloop's files in it
    model_id = c.get_model_version(stack_settings.mlflow.registered_model, version).source.split("/")[-1]
    assert c.get_logged_model(model_id).source_run_id == run_id
    model_files = {a.path for a in c.list_logged_model_artifacts(model_id)}
    assert {
        "MLmodel",
        "model.onnx",
        "model_card.json",
        "reference_profile.npz",
        "input_example.json",
    } <= model_files
    metrics = c.get_run(run_id).data.metrics
    for m in ("accuracy", "ece", "latency_p95_ms", "parity_top1_agreement", "recall.ok"):
        assert m in metrics, m
        assert {f"{m}.n", f"{m}.ci95_low", f"{m}.ci95_high"} <= set(metrics), m  # how sure each figure is
    assert tags[f"{registry.GATE_RULE_PREFIX}min_accuracy"].startswith("pass: accuracy ")
    assert "95% CI" in tags[f"{registry.GATE_RULE_PREFIX}min_accuracy"]
    card = json.loads(
        mlflow_text(stack_settings, f"{c.get_logged_model(model_id).artifact_location}/model_card.json")
    )  # the card records n for its metrics, and the seed and machine of the training run
    assert card["metrics"]["val_accuracy.n"] >= 1 and "val_accuracy.ci95_low" in card["metrics"]
    assert card["lineage"]["train_seed"] == "0" and card["lineage"]["train_cpu_isa"]
    report = registry.download_evaluation(stack_settings, version)
    assert report is not None and report.latency is not None and report.parity is not None
    assert set(report.slices) == {"lighting", "camera", "source"}
    print(
        f"champion v{version}: accuracy {report.accuracy:.3f}, ECE {report.ece:.3f}, "
        f"p50/p95/p99 {report.latency.p50_ms:.1f}/{report.latency.p95_ms:.1f}/{report.latency.p99_ms:.1f} ms, "
        f"parity top-1 {report.parity.top1_agreement:.3f}, precision {report.precision}"
    )
    gitops = stack_settings.state_dir / "gitops" / "edge-cpu"
    isvc = next(gitops.glob("inferenceservice-*.yaml")).read_text()
    assert tags[registry.MODEL_DIGEST] in isvc

    _assert_one_mlflow_run_with_the_steps_nested(stack_settings, outcome, run_id)
    _assert_pyfunc_champion_predicts_like_the_server(stack_settings, sample_dir, version)


def _assert_one_mlflow_run_with_the_steps_nested(settings, outcome: dict, registration_run: str) -> None:
    """The pipeline run is one MLflow run; each step's run is nested under it (a cached step's run stays
    with the pipeline run that computed it and is named on this one); the training run has the dataset
    as its input."""
    from mlflow import MlflowClient

    from edgeloop.components.tracking import PARENT_TAG, PIPELINE_RUN_TAG, REUSED_PREFIX, STEP_TAG
    from edgeloop.pipelines import registry

    c = MlflowClient(settings.mlflow_tracking_uri())
    parent_id = outcome["tasks"]["snapshot-labels"]["outputs"]["mlflow_run_id"]
    parent = c.get_run(parent_id)
    tags = c.get_model_version(settings.mlflow.registered_model, outcome["version"]).tags
    assert parent.data.tags[STEP_TAG] == "pipeline"
    this_run = tags.get(
        registry.LAST_PIPELINE_RUN, tags["lineage.pipeline_run"]
    )  # the version's or a re-run's
    assert parent.data.tags[PIPELINE_RUN_TAG] == parent.info.run_name == this_run
    assert parent.info.status == "FINISHED"
    children = c.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'", max_results=100
    )
    steps = {r.data.tags[STEP_TAG]: r for r in children}
    assert {"snapshot-labels", "staging-evaluation", "await-approval", "deploy-model"} <= set(steps), sorted(
        steps
    )
    assert steps["await-approval"].data.tags["edgeloop.decision"] == "approved"
    # a step whose result an earlier pipeline run made (KFP cache hit, model already registered) is named
    reused = {
        k.removeprefix(REUSED_PREFIX): v for k, v in parent.data.tags.items() if k.startswith(REUSED_PREFIX)
    }
    for step in ("build-dataset", "train-model", "register-model"):
        assert (step in steps) != (step in reused), step
    register = steps["register-model"].info.run_id if "register-model" in steps else reused["register-model"]
    assert register == registration_run
    train = steps["train-model"] if "train-model" in steps else c.get_run(reused["train-model"])
    (dataset_input,) = train.inputs.dataset_inputs
    assert dataset_input.dataset.digest == tags["lineage.dataset_version"]
    assert "val_accuracy" in train.data.metrics


def _assert_pyfunc_champion_predicts_like_the_server(settings, sample_dir, version: str) -> None:
    """``mlflow.pyfunc.load_model("models:/NAME@champion")`` on the trained champion, fed with the shared
    preprocessing's tensor, gives the labels the edgeloop model server gives for the same images."""
    import numpy as np
    from PIL import Image

    from edgeloop.core.model_loader import fetch_verified
    from edgeloop.serving.launcher import running_server
    from edgeloop.testing.models import pyfunc_predict

    name = settings.mlflow.registered_model
    uri = f"models:/{name}@champion"
    card = fetch_verified(uri, settings).card
    paths = sorted(sample_dir.rglob("*.png"))[::4][:24]
    images = [Image.open(p).convert("RGB") for p in paths]
    pyfunc_labels, probabilities = pyfunc_predict(uri, card, images)
    with running_server([uri], settings=settings) as srv, srv.rest_client(name) as client:
        served = client.infer_images([p.read_bytes() for p in paths])
    assert served.model_version == version
    assert pyfunc_labels == served.labels
    np.testing.assert_allclose(probabilities, served.probabilities, atol=1e-4)


def test_a_failing_step_names_the_step_and_the_cause(stack_settings):
    # locally the step is retried once after 5 s (the cluster's backoff is 30 + 60 + 120 s)
    r = _edgeloop(
        stack_settings, "pipeline", "run", "--local", "--json", "-p", "project=no-such-project", timeout=600
    )
    assert r.returncode == 1
    outcome = json.loads(r.stdout)
    assert outcome["failed_step"] == "snapshot-labels"
    assert "no-such-project" in outcome["cause"] or "project" in outcome["cause"].lower()
