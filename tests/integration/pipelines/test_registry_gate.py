"""The registry and the human gate against the real MLflow (and Azurite) of the test stack."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from edgeloop.pipelines import registry
from edgeloop.pipelines.evaluation import evaluate_predictions
from edgeloop.pipelines.gate import GateThresholds, evaluate_rules
from edgeloop.testing.models import build_linear_model_dir

LABELS = ["ok", "scratch", "dent", "stain"]


def _report(pred: list[int], seed: int = 0):
    y = [0, 1, 2, 3] * 60  # 240 images: enough evidence for the gate (GATE.min_eval_images)
    probs = np.full((len(y), 4), 0.05)
    probs[np.arange(len(y)), pred] = 0.85
    return evaluate_predictions(
        LABELS,
        y,
        probs,
        metas=[{"lighting": "dim", "camera": "cam-a"}] * len(y),
        latencies_ms=[3.0 + seed] * len(y),
        reference_probs=probs,
    )


GOOD = [0, 1, 2, 3] * 60
WORSE = [0, 1, 2, 0] * 60  # every stain predicted as ok


@pytest.fixture()
def settings(stack_settings):
    """The test stack, with a registered model name of its own per test."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    return stack_settings.model_copy(
        update={
            "mlflow": stack_settings.mlflow.model_copy(
                update={"registered_model": name, "experiment": "pipeline-tests"}
            )
        }
    )


def _register(settings, tmp_path: Path, pred=GOOD, champion=None, seed=0):
    model = build_linear_model_dir(
        tmp_path / f"model-{uuid.uuid4().hex[:6]}", seed=seed, name=settings.mlflow.registered_model
    )
    rep = _report(pred, seed)
    decision = evaluate_rules(rep, champion, GateThresholds(min_class_recall=0.0))
    return registry.register_candidate(
        settings,
        model,
        rep,
        decision,
        report_markdown="# report\n",
        lineage={"dataset_version": "ds-1", "pipeline_run": "test-run", "git_commit": "abc123"},
    ), rep


def _cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGELOOP_STATE_DIR": str(settings.state_dir)}
    return subprocess.run(
        [sys.executable, "-m", "edgeloop.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _wait_in_thread(settings, version: str, timeout_s: float):
    box: dict = {}

    def run() -> None:
        box["decision"] = registry.wait_for_decision(settings, version, timeout_s, poll_s=0.3)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def test_register_wait_and_approve_from_another_process(settings, tmp_path):
    reg, rep = _register(settings, tmp_path)
    assert reg.gate_passed and reg.storage_uri.startswith("az://models/")
    c = registry.client(settings)
    name = settings.mlflow.registered_model
    assert c.get_model_version_by_alias(name, registry.CANDIDATE).version == reg.version
    tags = registry.version_tags(settings, reg.version)
    assert tags[registry.APPROVAL] == "pending" and tags["lineage.git_commit"] == "abc123"
    assert tags[registry.EVIDENCE_DIGEST] == rep.digest()
    # evidence is in the run
    arts = {a.path for a in c.list_artifacts(reg.run_id, "evidence")}
    assert {
        "evidence/evaluation.json",
        "evidence/report.md",
        "evidence/confusion_matrix.json",
        "evidence/gate.json",
        "evidence/confusion_matrix.png",
    } <= arts
    assert c.get_run(reg.run_id).data.metrics["accuracy"] == 1.0

    t, box = _wait_in_thread(settings, reg.version, timeout_s=90)
    r = _cli(settings, "approve", name, reg.version, "--by", "alice", "--note", "looks good")
    assert r.returncode == 0, r.stderr
    t.join(100)
    d = box["decision"]
    assert d.decision == "approved" and d.by == "alice" and d.mode == "human"
    assert d.evidence_digest == rep.digest()
    tags = registry.version_tags(settings, reg.version)
    assert tags[registry.APPROVAL_NOTE] == "looks good" and tags[registry.APPROVAL_AT]
    # a second decision on the same version is refused
    r2 = _cli(settings, "reject", name, reg.version, "--by", "bob")
    assert r2.returncode == 2 and "already approved by alice" in r2.stderr


def test_reject_from_another_process_and_timeout(settings, tmp_path):
    name = settings.mlflow.registered_model
    reg, _ = _register(settings, tmp_path)
    t, box = _wait_in_thread(settings, reg.version, timeout_s=90)
    r = _cli(settings, "reject", name, reg.version, "--by", "carol", "--note", "stains look off")
    assert r.returncode == 0, r.stderr
    t.join(100)
    assert box["decision"].decision == "rejected" and box["decision"].by == "carol"
    tags = registry.version_tags(settings, reg.version)
    assert tags[registry.REJECTED] == "true" and "stains look off" in tags[registry.REJECTED_REASONS]
    assert registry._alias_version(registry.client(settings), name, registry.CANDIDATE) is None

    reg2, _ = _register(settings, tmp_path, seed=1)
    d = registry.wait_for_decision(settings, reg2.version, timeout_s=1.0, poll_s=0.2)
    assert d.decision == "rejected" and d.mode == "timeout"
    tags = registry.version_tags(settings, reg2.version)
    assert (
        tags[registry.APPROVAL_MODE] == "timeout" and "no decision within 1 s" in tags[registry.APPROVAL_NOTE]
    )


def test_approval_by_mlflow_ui_tag_is_recorded(settings, tmp_path):
    name = settings.mlflow.registered_model
    reg, rep = _register(settings, tmp_path)
    c = registry.client(settings)
    c.set_model_version_tag(name, reg.version, "approval.by", "dana")
    c.set_model_version_tag(name, reg.version, "approval", "approved")  # what a reviewer does in the UI
    d = registry.wait_for_decision(settings, reg.version, timeout_s=30, poll_s=0.2)
    assert (
        d.decision == "approved"
        and d.by == "dana"
        and d.mode == "mlflow-ui"
        and d.evidence_digest == rep.digest()
    )
    assert registry.version_tags(settings, reg.version)[registry.APPROVAL_AT]


def test_worse_than_champion_is_rejected_then_deploy_and_rollback(settings, tmp_path):
    from edgeloop.pipelines.deploy import deploy_version, rollback_and_deploy

    name = settings.mlflow.registered_model
    gitops = tmp_path / "gitops"
    v1, champion_report = _register(settings, tmp_path)
    registry.wait_for_decision(settings, v1.version, 10, auto_approve=True, run_name="test")
    res = deploy_version(settings, v1.version, deploy_target="gitops", gitops_dir=gitops, validate=False)
    assert res.target == f"gitops:{gitops}" and res.previous_champion is None
    isvc = next(gitops.glob("inferenceservice-*.yaml")).read_text()
    assert v1.model_digest in isvc and "models/" in isvc
    assert registry.champion_version(settings) == v1.version
    assert registry.version_tags(settings, v1.version)[registry.APPROVAL_MODE] == "auto"

    worse, _ = _register(settings, tmp_path, pred=WORSE, champion=champion_report, seed=2)
    assert not worse.gate_passed
    assert any("no_regression_vs_champion" in r and "recall[stain]" in r for r in worse.reasons)
    tags = registry.version_tags(settings, worse.version)
    assert tags[registry.REJECTED] == "true" and "recall[stain]" in tags[registry.REJECTED_REASONS]
    assert registry._alias_version(registry.client(settings), name, registry.CANDIDATE) is None
    with pytest.raises(registry.RegistryError, match="did not pass the automatic gate"):
        registry.record_decision(settings, worse.version, "approved", by="eve")
    with pytest.raises(registry.RegistryError, match="not approved"):
        registry.promote_champion(settings, worse.version, "nowhere")

    v3, _ = _register(settings, tmp_path, seed=3)
    registry.record_decision(settings, v3.version, "approved", by="frank")
    res3 = deploy_version(settings, v3.version, deploy_target="gitops", gitops_dir=gitops, validate=False)
    assert res3.previous_champion == v1.version and registry.champion_version(settings) == v3.version
    old, new, where = rollback_and_deploy(settings, deploy_target="gitops", gitops_dir=gitops)
    assert (old, new) == (v3.version, v1.version) and registry.champion_version(settings) == v1.version
    assert v1.model_digest in next(gitops.glob("inferenceservice-*.yaml")).read_text()
