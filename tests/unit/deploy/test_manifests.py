"""Every kustomize entry point renders, and every object validates against its schema."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from edgeloop.deploy.errors import ManifestValidationError
from edgeloop.deploy.render import kustomize_build
from edgeloop.deploy.validate import find_problems, validate_objects

from .conftest import REPO_ROOT, needs_kubectl

OVERLAYS = ["edge-cpu", "edge-gpu", "staging", "keda"]


def _one(objs, kind, name=None):
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def test_the_four_overlays_exist(rendered_overlays):
    assert set(OVERLAYS) <= set(rendered_overlays)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_objects_validate(overlay, rendered_overlays, schemas_dir):
    objs = rendered_overlays[overlay]
    assert find_problems(objs, schemas_dir=schemas_dir) == []
    kinds = {o["kind"] for o in objs}
    assert {
        "Namespace",
        "ServingRuntime",
        "InferenceService",
        "NetworkPolicy",
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "PrometheusRule",
        "ServiceMonitor",
        "CronJob",
        "TrainingRuntime",
    } <= kinds


@needs_kubectl
def test_gitops_entry_point_validates(schemas_dir):
    objs = kustomize_build(REPO_ROOT / "manifests" / "gitops")
    assert {o["kind"] for o in objs} == {"GitRepository", "Kustomization"}
    assert find_problems(objs, schemas_dir=schemas_dir) == []
    flux = _one(objs, "Kustomization")
    assert flux["spec"]["path"] == "./manifests/releases/edge-cpu" and flux["spec"]["prune"] is True


def test_example_trainjob_validates_and_matches_renderer(schemas_dir):
    from edgeloop.deploy.render import render_train_job

    example = yaml.safe_load((REPO_ROOT / "manifests" / "examples" / "trainjob.yaml").read_text())
    validate_objects([example], schemas_dir=schemas_dir)
    assert example == render_train_job(
        "edgeloop-train-example",
        [
            "--data",
            "/tmp/edgeloop/dataset",
            "--out",
            "/tmp/edgeloop/out",
            "--epochs",
            "10",
            "--batch-size",
            "64",
            "--workers",
            "2",
        ],
        nproc_per_node=2,
        gpus_per_node=2,
        cpu="8",
        memory="32Gi",
    )


def test_autoscaling_per_overlay(rendered_overlays):
    cpu = rendered_overlays["edge-cpu"]
    hpa = _one(cpu, "HorizontalPodAutoscaler")
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Resource", "Pods"}
    assert hpa["spec"]["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    assert (
        _one(cpu, "InferenceService")["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"]
        == "external"
    )

    keda = rendered_overlays["keda"]
    assert not [o for o in keda if o["kind"] == "HorizontalPodAutoscaler"]
    so = _one(keda, "ScaledObject")
    assert so["spec"]["triggers"][0]["type"] == "prometheus"
    assert (
        so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleUp"][
            "stabilizationWindowSeconds"
        ]
        == 0
    )

    staging = rendered_overlays["staging"]
    isvc = _one(staging, "InferenceService")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
    assert not [o for o in staging if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    assert {o["metadata"].get("namespace") for o in staging if o["kind"] != "Namespace"} == {
        "edgeloop-staging"
    }


def test_edge_gpu_requests_a_gpu_and_prefers_tensorrt(rendered_overlays):
    objs = rendered_overlays["edge-gpu"]
    pred = _one(objs, "InferenceService")["spec"]["predictor"]
    assert pred["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in pred["tolerations"])
    env = {e["name"]: e.get("value") for e in pred["model"]["env"]}
    assert env["EDGELOOP_PROVIDERS"].split(",")[0] == "TensorrtExecutionProvider"
    image = _one(objs, "ServingRuntime")["spec"]["containers"][0]["image"]
    assert image.rpartition(":")[0].endswith("/edgeloop-serving-gpu")  # serving/Dockerfile, ORT with CUDA
    mounts = {m["mountPath"] for m in pred["model"]["volumeMounts"]}
    assert "/tmp" in mounts  # the read-only root filesystem still has a writable /tmp


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_posture(overlay, rendered_overlays):
    objs = rendered_overlays[overlay]
    ns = _one(objs, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    deny = _one(objs, "NetworkPolicy", "default-deny-all")
    assert deny["spec"]["podSelector"] == {} and set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert not [o for o in objs if o["kind"] == "Secret"], "secret values never live in manifests"
    role = _one(objs, "Role")
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in role["rules"])
    assert not any("secrets" in r["resources"] for r in role["rules"])
    text = yaml.safe_dump_all(objs)
    for secret in (
        "edgeloop-blob",
        "edgeloop-mlflow-trainer",
        "edgeloop-mlflow-monitor",
        "edgeloop-labelstudio",
    ):
        assert f"name: {secret}" in text


def test_each_role_has_its_own_mlflow_account_and_trusted_keys_are_configured(rendered_overlays):
    objs = rendered_overlays["edge-cpu"]
    text = {o["kind"]: yaml.safe_dump(o) for o in objs if o["kind"] in ("CronJob", "TrainingRuntime")}
    assert "edgeloop-mlflow-monitor" in text["CronJob"] and "edgeloop-mlflow-trainer" not in text["CronJob"]
    assert "edgeloop-mlflow-trainer" in text["TrainingRuntime"] and "-monitor" not in text["TrainingRuntime"]
    assert "name: edgeloop-mlflow," not in yaml.safe_dump_all(objs)  # no MLflow identity shared by roles
    trust = _one(objs, "ConfigMap", "edgeloop-trusted-approvers")
    assert json.loads(trust["data"]["trusted-keys.json"]) == {}  # nobody is trusted until configured


# -- validation must fail on broken manifests -------------------------------------------


def test_broken_manifests_fail_with_every_problem_listed(rendered_overlays, schemas_dir):
    objs = copy.deepcopy(rendered_overlays["edge-cpu"])
    isvc = _one(objs, "InferenceService")
    isvc["spec"]["predictor"]["model"]["storageUrl"] = isvc["spec"]["predictor"]["model"].pop(
        "storageUri"
    )  # typo
    isvc["spec"]["predictor"]["minReplicas"] = "one"  # wrong type
    hpa = _one(objs, "HorizontalPodAutoscaler")
    hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] = "70%"  # must be an integer
    del _one(objs, "ServingRuntime")["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"]
    _one(objs, "NetworkPolicy", "default-deny-all")["spec"]["podSelektor"] = {}  # typo, strict core schema
    _one(objs, "PrometheusRule")["spec"]["groups"][0]["rules"][0].pop("expr")
    objs.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "leak", "namespace": "edgeloop"},
            "stringData": {"key": "hunter2"},
        }
    )

    with pytest.raises(ManifestValidationError) as err:
        validate_objects(objs, schemas_dir=schemas_dir)
    msgs = [str(p) for p in err.value.problems]
    text = "\n".join(msgs)
    assert "storageUrl" in text
    assert any(
        p.kind == "InferenceService" and p.path == "spec.predictor.minReplicas" for p in err.value.problems
    )
    assert any(p.kind == "HorizontalPodAutoscaler" and "metrics" in p.path for p in err.value.problems)
    assert any(
        p.kind == "ServingRuntime" and "allowPrivilegeEscalation" in p.message for p in err.value.problems
    )
    assert any(p.kind == "NetworkPolicy" and "podSelektor" in p.message for p in err.value.problems)
    assert any(p.kind == "PrometheusRule" and "expr" in p.message for p in err.value.problems)
    assert any(p.kind == "Secret" for p in err.value.problems)
    assert f"{len(msgs)} problem(s)" in str(err.value)


def test_broken_crds_fail(schemas_dir):
    bad = [
        {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": {"name": "x", "namespace": "n"},
            "spec": {"scaleTargetRef": {"name": "x-predictor"}},
        },  # triggers are required
        {
            "apiVersion": "trainer.kubeflow.org/v1alpha1",
            "kind": "TrainJob",
            "metadata": {"name": "t"},
            "spec": {"trainer": {"numNodes": "two"}},
        },  # runtimeRef required, numNodes an integer
        {
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": {"name": "g", "namespace": "flux-system"},
            "spec": {"interval": "1m"},
        },  # url required
        {"apiVersion": "example.com/v1", "kind": "Unknown", "metadata": {"name": "u"}},
    ]
    problems = find_problems(bad, schemas_dir=schemas_dir)
    by_kind = {p.kind for p in problems}
    assert {"ScaledObject", "TrainJob", "GitRepository", "Unknown"} <= by_kind
    assert any(p.kind == "TrainJob" and "runtimeRef" in p.message for p in problems)
    assert any(p.kind == "TrainJob" and p.path == "spec.trainer.numNodes" for p in problems)
    assert any(p.kind == "ScaledObject" and "triggers" in p.message for p in problems)
    assert any(p.kind == "ScaledObject" and "not the predictor" in p.message for p in problems)


def test_missing_schemas_dir_is_a_clear_error(tmp_path, rendered_overlays):
    from edgeloop.deploy.errors import SchemaUnavailableError

    with pytest.raises(SchemaUnavailableError, match="schemas_dir"):
        find_problems(rendered_overlays["edge-cpu"], schemas_dir=tmp_path)


def test_pytorchjob_fallback_is_validated(schemas_dir):
    pod = {
        "containers": [
            {
                "name": "pytorch",
                "image": "ghcr.io/edgeloop/edgeloop:0.1.0",
                "command": ["torchrun", "--nproc-per-node=2", "-m", "edgeloop.components.train"],
            }
        ]
    }
    job = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "t", "namespace": "edgeloop"},
        "spec": {
            "pytorchReplicaSpecs": {
                "Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": {"spec": pod}}
            }
        },
    }
    assert find_problems([job], schemas_dir=schemas_dir) == []
    job["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    assert [p.path for p in find_problems([job], schemas_dir=schemas_dir)] == [
        "spec.pytorchReplicaSpecs.Master.replicas"
    ]
