"""The registry and the human gate against the real MLflow (basic auth) and Azurite of the test stack:
identities the server enforces, signed decisions, deploys and rollbacks that verify them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from edgeloop.pipelines import attestation, registry
from edgeloop.pipelines.evaluation import evaluate_predictions
from edgeloop.pipelines.gate import GateThresholds, evaluate_rules
from edgeloop.testing.models import build_linear_model_dir
from edgeloop.testing.waits import join

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


def _register(settings, tmp_path: Path, pred=GOOD, champion=None, seed=0, model: Path | None = None):
    model = model or build_linear_model_dir(
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


def _cli(settings, *args: str, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGELOOP_STATE_DIR": str(settings.state_dir), **env}
    for leaked in (
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    ):  # each command is its own identity
        env.pop(leaked, None)
    return subprocess.run(
        [sys.executable, "-m", "edgeloop.cli", *args], env=env, capture_output=True, text=True, timeout=180
    )


def _approver(settings):
    return settings.as_mlflow_role("approver")


def _wait_in_thread(settings, version: str, timeout_s: float):
    box: dict = {}

    def run() -> None:
        box["decision"] = registry.wait_for_decision(settings, version, timeout_s, poll_s=0.3)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def _waiting_for_decision(settings, version: str) -> str:
    return f"registry.wait_for_decision to see the decision on {settings.mlflow.registered_model} v{version}"


def test_register_wait_and_approve_from_another_process(settings, tmp_path):
    reg, rep = _register(settings, tmp_path)
    assert reg.gate_passed and reg.storage_uri.startswith("az://models/")
    c = registry.client(settings)
    name = settings.mlflow.registered_model
    assert c.get_model_version_by_alias(name, registry.CANDIDATE).version == reg.version
    tags = registry.version_tags(settings, reg.version)
    assert tags[registry.APPROVAL] == "pending" and tags["lineage.git_commit"] == "abc123"
    assert tags[registry.EVIDENCE_DIGEST] == rep.digest()
    arts = {a.path for a in c.list_artifacts(reg.run_id, "evidence")}
    assert {
        "evidence/evaluation.json",
        "evidence/report.md",
        "evidence/confusion_matrix.json",
        "evidence/gate.json",
        "evidence/confusion_matrix.png",
    } <= arts
    assert c.get_run(reg.run_id).data.metrics["accuracy"] == 1.0
    _assert_an_mlflow_model_with_signature_and_example(settings, reg)

    t, box = _wait_in_thread(settings, reg.version, timeout_s=120)
    r = _cli(settings, "approve", name, reg.version, "--note", "looks good", "--evidence", rep.digest())
    assert r.returncode == 0, r.stderr
    join(t, 130, _waiting_for_decision(settings, reg.version))
    d = box["decision"]
    # the approver is the account MLflow authenticated, not a name anyone typed
    assert d.decision == "approved" and d.by == "edgeloop-approver" and d.mode == "human"
    assert d.evidence_digest == rep.digest() and d.note == "looks good"
    tags = registry.version_tags(settings, reg.version)
    assert tags[registry.APPROVAL_BY] == "edgeloop-approver" and tags[registry.APPROVAL_RUN] == d.run_id
    r2 = _cli(settings, "reject", name, reg.version)
    assert r2.returncode == 2 and "already approved by edgeloop-approver" in r2.stderr

    v = _cli(settings, "registry", "verify", name, reg.version)
    assert v.returncode == 0, v.stdout + v.stderr
    assert "VERIFIED" in v.stdout and "approved by edgeloop-approver (human)" in v.stdout
    h = _cli(settings, "registry", "history", name, "--json")
    (entry,) = json.loads(h.stdout)
    assert entry["approver"] == "edgeloop-approver" and entry["evidence_digest"] == rep.digest()
    assert entry["signature"].startswith("valid")

    # an approved champion loads in plain MLflow and predicts what edgeloop's server predicts
    registry.promote_champion(settings, reg.version, deployed_to="test: edgeloop serve")
    _assert_pyfunc_predicts_like_the_server(settings, reg.version)


def _assert_an_mlflow_model_with_signature_and_example(settings, reg) -> None:
    """The version is an MLflow ONNX model: signature (NCHW float32 at the card's size; probabilities and
    embedding), input example and edgeloop's files in the same LoggedModel, visible through the client."""
    import mlflow

    c = registry.client(settings)
    name = settings.mlflow.registered_model
    mv = c.get_model_version(name, reg.version)
    model_id = mv.source.removeprefix("models:/")  # the version's source is the LoggedModel
    assert model_id.startswith("m-")
    logged = c.get_logged_model(model_id)
    assert logged.source_run_id == reg.run_id and logged.tags[registry.MODEL_DIGEST] == reg.model_digest
    info = mlflow.models.get_model_info(f"models:/{name}/{reg.version}")
    assert set(info.flavors) == {"onnx", "python_function"}
    size = 32  # build_linear_model_dir's card
    (inp,) = info.signature.inputs.inputs
    assert (inp.name, inp.type, inp.shape) == ("images", np.dtype("float32"), (-1, 3, size, size))
    outs = {o.name: o.shape for o in info.signature.outputs.inputs}
    assert outs == {"probabilities": (-1, 4), "embedding": (-1, 3)}
    assert info.saved_input_example_info and info.saved_input_example_info["artifact_path"]
    files = {a.path for a in c.list_logged_model_artifacts(model_id)}
    assert {"MLmodel", "model.onnx", "model_card.json", "input_example.json", "requirements.txt"} <= files


def _assert_pyfunc_predicts_like_the_server(settings, version: str) -> None:
    """``mlflow.pyfunc.load_model("models:/NAME@champion")`` fed with the shared preprocessing's tensor
    gives the labels (and probabilities) the edgeloop model server gives for the same images."""
    from edgeloop.core.model_card import ModelCard
    from edgeloop.core.model_loader import fetch_verified
    from edgeloop.serving.launcher import running_server
    from edgeloop.testing.media import random_frames
    from edgeloop.testing.models import pyfunc_predict

    name = settings.mlflow.registered_model
    uri = f"models:/{name}@champion"
    card: ModelCard = fetch_verified(uri, settings).card
    frames = random_frames(12, 48, seed=5)
    pyfunc_labels, probabilities = pyfunc_predict(uri, card, frames)
    with running_server([uri], settings=settings) as srv, srv.grpc_client(name) as g:
        served = g.infer_frames(frames)
    assert served.model_version == version
    assert pyfunc_labels == served.labels
    np.testing.assert_allclose(probabilities, served.probabilities, atol=1e-5)


def test_reject_from_another_process_and_timeout(settings, tmp_path):
    name = settings.mlflow.registered_model
    reg, _ = _register(settings, tmp_path)
    t, box = _wait_in_thread(settings, reg.version, timeout_s=120)
    r = _cli(settings, "reject", name, reg.version, "--note", "stains look off")
    assert r.returncode == 0, r.stderr
    join(t, 130, _waiting_for_decision(settings, reg.version))
    assert box["decision"].decision == "rejected" and box["decision"].by == "edgeloop-approver"
    tags = registry.version_tags(settings, reg.version)
    assert tags[registry.REJECTED] == "true" and "stains look off" in tags[registry.REJECTED_REASONS]
    assert registry._alias_version(registry.client(settings), name, registry.CANDIDATE) is None
    v = _cli(settings, "registry", "verify", name, reg.version)
    assert v.returncode == 1 and "rejected by edgeloop-approver" in v.stdout

    reg2, _ = _register(settings, tmp_path, seed=1)
    d = registry.wait_for_decision(settings, reg2.version, timeout_s=1.0, poll_s=0.2)
    assert d.decision == "rejected" and d.mode == "timeout"
    tags = registry.version_tags(settings, reg2.version)
    assert (
        tags[registry.APPROVAL_MODE] == "timeout" and "no decision within 1 s" in tags[registry.APPROVAL_NOTE]
    )
    history = registry.history(settings)
    assert [(e.version, e.decision, e.mode) for e in history] == [
        (reg.version, "rejected", "human"),
        (reg2.version, "rejected", "timeout"),
    ]


def test_anonymous_clients_get_401_and_the_pipeline_cannot_approve_403(settings, tmp_path):
    import urllib.error
    import urllib.request

    uri = settings.mlflow_tracking_uri()
    req = urllib.request.Request(
        f"{uri}/api/2.0/mlflow/experiments/create",
        data=b'{"name": "anonymous"}',
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 401

    reg, _ = _register(settings, tmp_path)
    name = settings.mlflow.registered_model
    # even holding an approver's signing key, the pipeline's account cannot file a decision: MLflow says 403
    stolen = settings.model_copy(
        update={
            "approvals": settings.approvals.model_copy(update={"signing_key": _key_of(settings, "approver")})
        }
    )
    with pytest.raises(registry.RegistryError, match=r"403.*edgeloop-pipeline may not write"):
        registry.record_decision(stolen, reg.version, "approved")
    user, password = settings.mlflow_credentials("pipeline")
    r = _cli(
        settings,
        "approve",
        name,
        reg.version,
        EDGELOOP_MLFLOW__USERNAME=user,
        EDGELOOP_MLFLOW__PASSWORD=password,
        EDGELOOP_APPROVALS__SIGNING_KEY=str(_key_of(settings, "approver")),
    )
    assert r.returncode == 2 and "403" in r.stderr, r.stderr
    assert registry.decision_records(settings, reg.version) == []
    assert not registry.verify_version(settings, reg.version).ok


def _key_of(settings, role: str) -> Path:
    from edgeloop.core.config import MLFLOW_USERS

    return attestation.local_keys_dir(settings) / f"{MLFLOW_USERS[role]}.pem"


def test_hand_set_tags_and_untrusted_signatures_approve_nothing(settings, tmp_path):
    from edgeloop.pipelines.deploy import DeployFailed, deploy_version

    name = settings.mlflow.registered_model
    reg, _ = _register(settings, tmp_path)
    c = registry.client(settings)
    c.set_model_version_tag(name, reg.version, "approval.by", "dana")
    c.set_model_version_tag(name, reg.version, "approval", "approved")  # what a reviewer could do in the UI
    v = registry.verify_version(settings, reg.version)
    assert not v.ok and "approval=approved is not a decision" in v.checks[0].detail
    with pytest.raises(DeployFailed, match="no valid approval"):
        deploy_version(
            settings, reg.version, deploy_target="gitops", gitops_dir=tmp_path / "g", validate=False
        )
    assert not (tmp_path / "g").exists() and registry.champion_version(settings) is None

    # an approver account signing with a key nobody trusted files a record that counts for nothing
    rogue = tmp_path / "rogue.pem"
    attestation.generate_key(rogue)
    untrusted = _approver(settings).model_copy(
        update={"approvals": settings.approvals.model_copy(update={"signing_key": rogue})}
    )
    registry.record_decision(untrusted, reg.version, "approved")
    (record,) = registry.decision_records(settings, reg.version)
    assert not record.valid and "not by 'edgeloop-approver''s trusted key" in record.signature
    assert not registry.verify_version(settings, reg.version).ok
    d = registry.wait_for_decision(settings, reg.version, timeout_s=1.0, poll_s=0.2)
    assert d.decision == "rejected" and d.mode == "timeout"
    assert registry.history(settings)[0].signature.startswith("INVALID")


def test_a_card_or_file_changed_after_approval_fails_verify_and_deploy(settings, tmp_path):
    import mlflow

    from edgeloop.core.blob import BlobStore, BlobUri
    from edgeloop.core.errors import IntegrityError
    from edgeloop.core.model_card import ModelCard
    from edgeloop.core.model_loader import fetch_verified
    from edgeloop.pipelines.deploy import DeployFailed, deploy_version

    name = settings.mlflow.registered_model
    model = build_linear_model_dir(tmp_path / "m", name=name)
    reg, _ = _register(settings, tmp_path, model=model)
    registry.record_decision(_approver(settings), reg.version, "approved", note="ok")
    assert registry.verify_version(settings, reg.version).ok

    # the deployable copy: model.onnx rewritten in blob storage after the approval
    store = BlobStore.from_settings(settings)
    u = BlobUri.parse(reg.storage_uri)
    onnx = BlobUri(u.container, f"{u.path}/model.onnx")
    original = (model / "model.onnx").read_bytes()
    tampered = tmp_path / "model.onnx"
    tampered.write_bytes(original + b"\0")
    store.upload_file(onnx, tampered)
    v = registry.verify_version(settings, reg.version)
    failed = {c.name for c in v.checks if not c.ok}
    assert failed == {"deployable copy"}, v.checks
    with pytest.raises(DeployFailed, match="deployable copy"):
        deploy_version(
            settings, reg.version, deploy_target="gitops", gitops_dir=tmp_path / "g", validate=False
        )
    (tmp_path / "orig.onnx").write_bytes(original)
    store.upload_file(onnx, tmp_path / "orig.onnx")
    assert registry.verify_version(settings, reg.version).ok

    # the MLflow copy: a card whose labels were swapped (its file digests still match the file), written
    # into the version's MLflow model: verify, the loader (models:/NAME/V and NAME@ALIAS) and deploy refuse it
    card = ModelCard.load(model)
    edited = tmp_path / "edited"
    edited.mkdir()
    card.model_copy(update={"labels": list(reversed(card.labels))}).save(edited)
    c = registry.client(settings)
    model_id = c.get_model_version(name, reg.version).source.removeprefix("models:/")
    c.log_model_artifacts(model_id, str(edited))
    v = registry.verify_version(settings, reg.version)
    assert {c.name for c in v.checks if not c.ok} == {"model files in MLflow"}
    r = _cli(settings, "registry", "verify", name, reg.version)
    assert r.returncode == 1 and "[FAIL] model files in MLflow" in r.stdout
    c.set_registered_model_alias(name, "under-test", reg.version)
    for uri in (f"models:/{name}/{reg.version}", f"models:/{name}@under-test"):
        with pytest.raises(IntegrityError, match="deployment pins"):
            fetch_verified(uri, settings)
    with pytest.raises(DeployFailed, match="model files in MLflow"):
        deploy_version(
            settings, reg.version, deploy_target="gitops", gitops_dir=tmp_path / "g", validate=False
        )

    # the card restored, but MLmodel pointed at another file: MLflow would load what nobody verified
    (edited / "model_card.json").write_bytes((model / "model_card.json").read_bytes())
    c.log_model_artifacts(model_id, str(edited))
    assert registry.verify_version(settings, reg.version).ok
    mlmodel = tmp_path / "mlmodel" / "MLmodel"
    mlmodel.parent.mkdir()
    location = c.get_logged_model(model_id).artifact_location
    mlflow.artifacts.download_artifacts(f"{location}/MLmodel", dst_path=str(mlmodel.parent))
    mlmodel.write_text(mlmodel.read_text().replace("data: model.onnx", "data: other.onnx"))
    c.log_model_artifacts(model_id, str(mlmodel.parent))
    with pytest.raises(IntegrityError, match="MLmodel makes MLflow load"):
        fetch_verified(f"models:/{name}@under-test", settings)
    assert not registry.verify_version(settings, reg.version).ok


@pytest.mark.slow
def test_deploy_verifies_and_rollback_refuses_unapproved_targets(settings, tmp_path):
    from edgeloop.pipelines.deploy import deploy_version, rollback_and_deploy

    name = settings.mlflow.registered_model
    gitops = tmp_path / "gitops"
    v1, champion_report = _register(settings, tmp_path)
    d1 = registry.wait_for_decision(settings, v1.version, 10, auto_approve=True, run_name="test")
    assert d1.by == "edgeloop-auto" and d1.mode == "auto"
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
        registry.record_decision(_approver(settings), worse.version, "approved")
    with pytest.raises(registry.UnverifiedVersion, match="not promoted to champion"):
        registry.promote_champion(settings, worse.version, "nowhere")

    v3, _ = _register(settings, tmp_path, seed=3)
    registry.record_decision(_approver(settings), v3.version, "approved")
    res3 = deploy_version(settings, v3.version, deploy_target="gitops", gitops_dir=gitops, validate=False)
    assert res3.previous_champion == v1.version and registry.champion_version(settings) == v3.version
    assert v3.model_digest in next(gitops.glob("inferenceservice-*.yaml")).read_text()

    pending, _ = _register(settings, tmp_path, seed=4)  # never approved
    for target, why in ((worse.version, "rejected"), (pending.version, "no signed approval")):
        with pytest.raises(registry.UnverifiedVersion, match=why):
            rollback_and_deploy(settings, deploy_target="gitops", gitops_dir=gitops, to=target)
        r = _cli(settings, "rollback", name, "--to", target, "--no-deploy")
        assert r.returncode == 2 and why in r.stderr
    assert registry.champion_version(settings) == v3.version
    assert v3.model_digest in next(gitops.glob("inferenceservice-*.yaml")).read_text()

    old, new, _ = rollback_and_deploy(settings, deploy_target="gitops", gitops_dir=gitops)
    assert (old, new) == (v3.version, v1.version) and registry.champion_version(settings) == v1.version
    assert v1.model_digest in next(gitops.glob("inferenceservice-*.yaml")).read_text()


def test_registering_the_same_model_again_links_to_its_version(settings, tmp_path):
    name = settings.mlflow.registered_model
    model = build_linear_model_dir(tmp_path / "m", name=name)
    first, _ = _register(settings, tmp_path, model=model)
    registry.wait_for_decision(settings, first.version, 10, auto_approve=True)
    again, _ = _register(settings, tmp_path, model=model)  # a re-run over unchanged labels
    assert again.reused and again.version == first.version and again.model_digest == first.model_digest
    versions = registry.client(settings).search_model_versions(f"name = '{name}'")
    assert [mv.version for mv in versions] == [first.version]
    # the re-run's approval step finds the decision already made, and files no second one
    d = registry.wait_for_decision(settings, again.version, 1.0, auto_approve=True)
    assert d.decision == "approved" and d.mode == "auto"
    assert len(registry.decision_records(settings, first.version)) == 1


def test_auto_approval_needs_the_local_stack(settings, tmp_path):
    from pydantic import SecretStr

    reg, _ = _register(settings, tmp_path)
    user, password = settings.mlflow_credentials()
    own_server = settings.mlflow.model_copy(
        update={
            "tracking_uri": settings.mlflow_tracking_uri(),
            "username": user,
            "password": SecretStr(password),
        }
    )
    remote = settings.model_copy(update={"mlflow": own_server})
    with pytest.raises(registry.RegistryError, match="only with the local runner"):
        registry.wait_for_decision(remote, reg.version, 1.0, auto_approve=True)
    assert registry.decision_records(settings, reg.version) == []
