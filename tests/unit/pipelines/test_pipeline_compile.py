"""The compiled pipeline: golden YAML, caching policy, no machine paths, no env-derived defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
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
        timeout=300,
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
        "buildah-build",
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
    assert {tuple(tasks[d]["dependentTasks"]) for d in deploys} == {
        ("buildah-build",),
        ("local-image-build",),
    }
    # build and deploy live only under the approved branch
    assert not {"prepare-image-build", "buildah-build", "local-image-build", "deploy-model"} & set(root)


def test_parameters_a_ui_user_sets_and_the_non_root_buildah_step():
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
    assert params["image_builder"]["defaultValue"] == "buildah"
    execs = spec["deploymentSpec"]["executors"]
    builder = execs["exec-buildah-build"]["container"]
    assert builder["image"].startswith("ghcr.io/edgeloop/edgeloop-builder")
    script = builder["args"][0]
    # rootless (no daemon, no root), and a tag is reused only when its image carries this content hash
    assert "buildah build --isolation chroot" in script and "io.edgeloop.content-hash=$2" in script
    assert not any("kaniko" in e["container"]["image"] for e in execs.values())


# -- what a cluster reads: secrets, service account, Pod Security, resources, retries, deadlines ----------------
def _platform(text: str) -> dict:
    return list(yaml.safe_load_all(text))[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _env_from_secrets(executor: dict) -> dict[str, tuple[str, str, bool]]:
    return {
        m["envVar"]: (s["secretName"], m["secretKey"], s["optional"])
        for s in executor.get("secretAsEnv", [])
        for m in s["keyToEnv"]
    }


def test_steps_get_their_settings_from_the_manifests_secrets():
    """The same Secret keys the drift CronJob reads (manifests/base/monitoring/drift-cronjob.yaml)."""
    platform = _platform(COMPILED.read_text())
    cron = ROOT / "manifests" / "base" / "monitoring" / "drift-cronjob.yaml"
    container = yaml.safe_load(cron.read_text())["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    cron_env = {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container["env"]
        if "valueFrom" in e
    }
    snapshot = _env_from_secrets(platform["exec-snapshot-labels"])
    # labels are read: every secret, the same keys; MLflow's is the pipeline's own account, not the monitor's
    assert {k: v[1] for k, v in snapshot.items()} == {k: v[1] for k, v in cron_env.items()}
    mlflow_vars = {k for k in cron_env if k.startswith("MLFLOW_") or k.startswith("EDGELOOP_MLFLOW")}
    assert {snapshot[k][0] for k in mlflow_vars} == {"edgeloop-mlflow"}
    assert {cron_env[k][0] for k in mlflow_vars} == {"edgeloop-mlflow-monitor"}
    assert all(snapshot[k][:2] == cron_env[k] for k in cron_env if k not in mlflow_vars)
    assert (
        snapshot["MLFLOW_TRACKING_PASSWORD"][2] is True
        and snapshot["EDGELOOP_BLOB__CONNECTION_STRING"][2] is False
    )
    for name in ("exec-build-dataset", "exec-train-model", "exec-register-model", "exec-deploy-model"):
        env = _env_from_secrets(platform[name])
        assert env["EDGELOOP_MLFLOW__TRACKING_URI"] == ("edgeloop-mlflow", "tracking-uri", False), name
        assert env["EDGELOOP_BLOB__CONNECTION_STRING"][:2] == ("edgeloop-blob", "connection-string"), name
        assert (
            "EDGELOOP_LABELSTUDIO__API_KEY" not in env
        ), f"{name}: Label Studio's key only where labels are read"
    builder = platform["exec-buildah-build"]
    assert not builder.get("secretAsEnv")  # the builder sees registry credentials only
    assert builder["secretAsVolume"][0]["secretName"] == "edgeloop-registry"


def test_steps_that_check_signed_decisions_get_the_trusted_approvers_keys():
    """Trusted keys are configured (the ConfigMap), never discovered; the other steps do not see them."""
    platform = _platform(COMPILED.read_text())
    cm = ROOT / "manifests" / "base" / "platform" / "trusted-approvers.yaml"
    key = next(iter(yaml.safe_load(cm.read_text())["data"]))

    def keys_env(executor: dict) -> list[tuple[str, str, str]]:
        return [
            (c["configMapName"], m["configMapKey"], m["envVar"])
            for c in executor.get("configMapAsEnv", [])
            for m in c["keyToEnv"]
        ]

    checking = {"exec-register-model", "exec-await-approval", "exec-deploy-model"}
    for name, executor in platform.items():
        expected = [("edgeloop-trusted-approvers", key, "EDGELOOP_APPROVALS__TRUSTED_KEYS")]
        assert keys_env(executor) == (expected if name.rstrip("-0123456789") in checking else []), name


def test_every_step_runs_non_root_with_requests_and_limits():
    spec = _spec(COMPILED.read_text())
    platform = _platform(COMPILED.read_text())
    for name, executor in spec["deploymentSpec"]["executors"].items():
        ctx = platform[name]["securityContext"]
        assert ctx["runAsNonRoot"] is True and int(ctx["runAsUser"]) > 0, name
        res = executor["container"]["resources"]
        for key in ("cpuRequest", "cpuLimit", "memoryRequest", "memoryLimit"):
            assert res.get(key), f"{name} has no {key}"
        assert float(res["cpuRequest"]) <= float(res["cpuLimit"]), name
        assert float(res["memoryRequest"]) <= float(res["memoryLimit"]), name


def test_idempotent_steps_retry_with_backoff_and_the_approval_wait_has_a_deadline():
    tasks = _all_tasks(_spec(COMPILED.read_text()))
    for name in (
        "snapshot-labels",
        "build-dataset",
        "train-model",
        "export-onnx",
        "staging-evaluation",
        "deploy-model",
    ):
        policy = tasks[name]["retryPolicy"]
        assert policy["maxRetryCount"] >= 2 and policy["backoffFactor"] > 1, name
        assert policy["backoffDuration"] and policy["backoffMaxDuration"], name
    # registering twice would create two versions; the approval wait ends by its own timeout
    assert "retryPolicy" not in tasks["register-model"] and "retryPolicy" not in tasks["await-approval"]
    deadline = int(_platform(COMPILED.read_text())["exec-await-approval"]["activeDeadlineSeconds"])
    default_wait = _spec(COMPILED.read_text())["root"]["inputDefinitions"]["parameters"]["approval_timeout_s"]
    assert default_wait["defaultValue"] < deadline <= 8 * 24 * 3600


def test_images_are_pinned_by_digest_for_a_cluster(tmp_path):
    import json

    names = (("edgeloop-pipeline", "a"), ("edgeloop-training", "c"), ("edgeloop-builder", "b"))
    index = {n: {"digest": "sha256:" + c * 64} for n, c in names}
    (tmp_path / "index.json").write_text(json.dumps(index))
    text = compile_pipeline(tmp_path / "pinned.yaml", images=tmp_path / "index.json").read_text()
    images = {e["container"]["image"] for e in _spec(text)["deploymentSpec"]["executors"].values()}
    assert images == {
        "ghcr.io/edgeloop/edgeloop-pipeline@sha256:" + "a" * 64,
        "ghcr.io/edgeloop/edgeloop-training@sha256:" + "c" * 64,
        "ghcr.io/edgeloop/edgeloop-builder@sha256:" + "b" * 64,
    }
    del index["edgeloop-builder"]
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(Exception, match="edgeloop-builder.*make images"):
        compile_pipeline(tmp_path / "p2.yaml", images=tmp_path / "index.json")


def test_every_pipeline_image_has_a_dockerfile_in_the_repository():
    from edgeloop.pipelines.image_build import IMAGES

    images = {
        e["container"]["image"] for e in _spec(COMPILED.read_text())["deploymentSpec"]["executors"].values()
    }
    for ref in images:
        name = ref.rpartition(":")[0].rpartition("/")[2]
        assert name in IMAGES, ref
        assert (ROOT / IMAGES[name].dockerfile.replace("edgeloop/", "", 1)).is_file(), ref


def test_the_pods_of_every_step_meet_the_namespace_pod_security_and_validate():
    """Each step as the Pod a cluster runs: schema-valid (vendored core schemas) and Pod Security
    "restricted" like everything else in the edgeloop namespace (manifests/base/platform). The one
    rule of edgeloop's own they miss: a read-only root filesystem, which kfp-kubernetes cannot set."""
    from edgeloop.deploy.validate import find_problems
    from edgeloop.pipelines.cluster import executor_pods

    pods = executor_pods(COMPILED.read_text())
    assert {p["metadata"]["name"] for p in pods} >= {"train-model", "buildah-build", "await-approval"}
    assert {p.message for p in find_problems(pods)} == {"readOnlyRootFilesystem must be true"}
    pods[0]["spec"]["containers"][0]["securityContext"].pop("runAsNonRoot")
    assert any("runAsNonRoot" in p.message for p in find_problems(pods))  # the check is live
    ns = yaml.safe_load((ROOT / "manifests" / "base" / "platform" / "namespace.yaml").read_text())
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    sa = [
        d
        for d in yaml.safe_load_all((ROOT / "manifests/base/platform/serviceaccounts.yaml").read_text())
        if d
    ]
    assert "edgeloop-pipeline" in {d["metadata"]["name"] for d in sa if d["kind"] == "ServiceAccount"}


def test_a_local_run_retries_once_quickly_instead_of_the_cluster_backoff():
    """kfp.local honours retry policies: a step failing for a reason must not wait 30 + 60 + 120 s here."""
    from google.protobuf import json_format

    from edgeloop.pipelines.runner import local_pipeline

    spec = json_format.MessageToDict(local_pipeline().pipeline_spec)
    policy = _all_tasks(spec)["snapshot-labels"]["retryPolicy"]
    assert policy["maxRetryCount"] == 1
    assert policy["backoffDuration"] == "5s"
    cluster = _all_tasks(_spec(COMPILED.read_text()))["snapshot-labels"]["retryPolicy"]
    assert cluster["maxRetryCount"] == 3  # the cluster's policy is untouched
