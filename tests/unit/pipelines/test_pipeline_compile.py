"""The compiled pipeline: golden YAML, caching policy, no machine paths, no env-derived defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from edgeloop.pipelines.runner import COMPILED, compile_pipeline

ROOT = Path(__file__).resolve().parents[3]


def _compile(tmp_path: Path) -> str:
    return compile_pipeline(tmp_path / "p.yaml").read_text()


def test_compiled_yaml_is_checked_in_and_current(tmp_path):
    fresh = _compile(tmp_path)
    assert COMPILED.exists(), "run `make compile` and commit pipelines/compiled/training_pipeline.yaml"
    assert fresh == COMPILED.read_text(), (
        "the pipeline changed: run `make compile` and review the diff of "
        "pipelines/compiled/training_pipeline.yaml"
    )


def test_compile_is_independent_of_environment(tmp_path):
    """Compiling in a process with other EDGELOOP_* settings gives the same bytes (nothing env-derived)."""
    env = {
        **os.environ,
        "EDGELOOP_STATE_DIR": str(tmp_path / "elsewhere"),
        "EDGELOOP_MLFLOW__TRACKING_URI": "http://example.invalid:5000",
        "EDGELOOP_MLFLOW__REGISTERED_MODEL": "other-model",
    }
    out = tmp_path / "env.yaml"
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"from edgeloop.pipelines.runner import compile_pipeline; compile_pipeline(__import__('pathlib').Path({str(out)!r}))",
        ],
        check=True,
        env=env,
        cwd=ROOT,
    )
    text = out.read_text()
    assert text == COMPILED.read_text()
    for leak in (str(ROOT), str(Path.home()), "127.0.0.1", "example.invalid", "other-model"):
        assert leak not in text, f"{leak!r} is baked into the compiled pipeline"


def _spec(text: str) -> dict:
    return next(yaml.safe_load_all(text))  # the pipeline spec; the platform spec (pod labels) follows


def test_every_step_pod_carries_the_network_policy_role_label(tmp_path):
    docs = list(yaml.safe_load_all(_compile(tmp_path)))
    executors = docs[0]["deploymentSpec"]["executors"]
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(platform) == set(executors)
    assert all(e["podMetadata"]["labels"] == {"edgeloop.io/role": "pipeline"} for e in platform.values())


def _all_tasks(spec: dict) -> dict[str, dict]:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks |= comp.get("dag", {}).get("tasks", {})
    return tasks


def test_caching_policy():
    tasks = _all_tasks(_spec(COMPILED.read_text()))
    never = {
        "snapshot-labels",
        "staging-evaluation",
        "register-model",
        "await-approval",
        "prepare-image-build",
        "kaniko-build",
        "local-image-build",
        "deploy-model",
        "deploy-model-2",
    }
    cached = {"build-dataset", "train-model", "export-onnx", "select-precision"}
    for name in never:
        assert tasks[name]["cachingOptions"].get("enableCache") is not True, name
    for name in cached:
        assert tasks[name]["cachingOptions"]["enableCache"] is True, name
    # the dataset is keyed on the manifest URI (named by the labels' digest), a run-time value
    inputs = tasks["build-dataset"]["inputs"]["parameters"]["manifest_uri"]
    assert inputs["taskOutputParameter"] == {
        "outputParameterKey": "manifest_uri",
        "producerTask": "snapshot-labels",
    }


def test_gate_and_approval_guard_build_and_deploy():
    spec = _spec(COMPILED.read_text())
    root = spec["root"]["dag"]["tasks"]
    approval = root["await-approval"]["inputs"]["parameters"]
    assert approval["gate_passed"]["taskOutputParameter"]["producerTask"] == "register-model"
    approved = root["condition-1"]
    assert approved["triggerPolicy"]["condition"].endswith("== 'approved'")
    assert "await-approval" in approved["dependentTasks"]
    tasks = _all_tasks(spec)
    deploys = [n for n in tasks if n.startswith("deploy-model")]
    assert len(deploys) == 2  # one per build branch, each after its build
    assert {tuple(tasks[d]["dependentTasks"]) for d in deploys} == {("kaniko-build",), ("local-image-build",)}
    # build and deploy live only under the approved branch
    assert not {"prepare-image-build", "kaniko-build", "local-image-build", "deploy-model"} & set(root)


def test_parameters_a_ui_user_sets_and_kaniko_step():
    spec = _spec(COMPILED.read_text())
    params = spec["root"]["inputDefinitions"]["parameters"]
    for p in (
        "project",
        "architecture",
        "epochs",
        "min_accuracy",
        "max_regression",
        "min_class_recall",
        "max_latency_p95_ms",
        "approval_timeout_s",
        "target_profile",
        "auto_approve",
    ):
        assert p in params and "defaultValue" in params[p], p
    assert params["auto_approve"]["defaultValue"] is False
    execs = spec["deploymentSpec"]["executors"]
    kaniko = [e for e in execs.values() if "kaniko" in e["container"]["image"]]
    assert kaniko and "/kaniko/executor" in " ".join(kaniko[0]["container"]["args"])
