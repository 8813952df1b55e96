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
    model_files = {a.path for a in c.list_artifacts(run_id, "model")}
    assert {"model/model.onnx", "model/model_card.json", "model/reference_profile.npz"} <= model_files
    metrics = c.get_run(run_id).data.metrics
    for m in ("accuracy", "ece", "latency_p95_ms", "parity_top1_agreement", "recall.ok"):
        assert m in metrics, m
        assert {f"{m}.n", f"{m}.ci95_low", f"{m}.ci95_high"} <= set(metrics), m  # how sure each figure is
    assert tags[f"{registry.GATE_RULE_PREFIX}min_accuracy"].startswith("pass: accuracy ")
    assert "95% CI" in tags[f"{registry.GATE_RULE_PREFIX}min_accuracy"]
    card = json.loads(
        mlflow_text(stack_settings, f"runs:/{run_id}/model/model_card.json")
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


def test_a_failing_step_names_the_step_and_the_cause(stack_settings):
    r = _edgeloop(
        stack_settings, "pipeline", "run", "--local", "--json", "-p", "project=no-such-project", timeout=300
    )
    assert r.returncode == 1
    outcome = json.loads(r.stdout)
    assert outcome["failed_step"] == "snapshot-labels"
    assert "no-such-project" in outcome["cause"] or "project" in outcome["cause"].lower()
