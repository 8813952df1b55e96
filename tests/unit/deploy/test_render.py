"""Rendering an InferenceService for a model version, the GitOps directory, the TrainJob."""

from __future__ import annotations

import copy

import pytest

from edgeloop.deploy.errors import ManifestValidationError, RenderError
from edgeloop.deploy.render import (
    GENERATED_HEADER,
    is_template,
    isvc_name,
    kustomize_build,
    render_inference_service,
    render_release,
    render_train_job,
    write_gitops,
)
from edgeloop.deploy.validate import find_problems, validate_objects

from .conftest import DIGEST, STORAGE, needs_kubectl


@pytest.mark.parametrize("overlay", ["edge-cpu", "edge-gpu", "staging", "keda"])
def test_rendered_isvc_carries_digest_and_storage_and_validates(overlay, rendered_overlays, schemas_dir):
    before = copy.deepcopy(rendered_overlays[overlay])
    objs = render_inference_service(
        "edgeloop-inspection",
        "7",
        STORAGE,
        f"sha256:{DIGEST}",
        overlay=overlay,
        overlay_objects=rendered_overlays[overlay],
    )
    assert rendered_overlays[overlay] == before, "the templates must not be modified"
    isvc = objs[0]
    assert isvc["kind"] == "InferenceService" and isvc["metadata"]["name"] == "edgeloop-inspection"
    assert isvc["metadata"]["annotations"]["edgeloop.io/model-digest"] == DIGEST
    assert isvc["metadata"]["annotations"]["edgeloop.io/model-version"] == "7"
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == STORAGE
    env = {e["name"]: e.get("value") for e in isvc["spec"]["predictor"]["model"]["env"]}
    assert env["EDGELOOP_MODEL_DIGEST"] == DIGEST
    assert not any(is_template(o) for o in objs)
    validate_objects(objs, schemas_dir=schemas_dir)

    scalers = objs[1:]
    if overlay == "staging":  # KServe manages the HPA itself
        assert scalers == []
    else:
        (scaler,) = scalers
        assert scaler["spec"]["scaleTargetRef"]["name"] == "edgeloop-inspection-predictor"
    if overlay == "keda":
        queries = [t["metadata"]["query"] for t in scalers[0]["spec"]["triggers"]]
        assert len(queries) == 2 and "edgeloop-model" not in str(queries)
        assert all('model="edgeloop-inspection"' in q and 'namespace="edgeloop"' in q for q in queries)


def test_overrides_and_replica_bounds(rendered_overlays, schemas_dir):
    objs = render_inference_service(
        "Edgeloop_Inspection",
        "12",
        STORAGE,
        DIGEST,
        image="registry.local/serving@sha256:" + "0" * 64,
        image_tag=None,
        min_replicas=3,
        max_replicas=9,
        overlay_objects=rendered_overlays["edge-cpu"],
    )
    isvc, hpa = objs
    assert isvc["metadata"]["name"] == "edgeloop-inspection"
    assert isvc["metadata"]["annotations"]["edgeloop.io/registered-model"] == "Edgeloop_Inspection"
    assert isvc["spec"]["predictor"]["model"]["image"].startswith("registry.local/serving@")
    assert (isvc["spec"]["predictor"]["minReplicas"], isvc["spec"]["predictor"]["maxReplicas"]) == (3, 9)
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)
    validate_objects(objs, schemas_dir=schemas_dir)


def test_bad_inputs_are_refused(rendered_overlays):
    objs = rendered_overlays["edge-cpu"]
    with pytest.raises(RenderError, match="sha256"):
        render_inference_service("m", "1", STORAGE, "not-a-digest", overlay_objects=objs)
    with pytest.raises(RenderError, match="URI"):
        render_inference_service("m", "1", "models/m/1", DIGEST, overlay_objects=objs)
    with pytest.raises(RenderError, match="minReplicas"):
        render_inference_service(
            "m", "1", STORAGE, DIGEST, min_replicas=5, max_replicas=2, overlay_objects=objs
        )
    with pytest.raises(RenderError, match="unknown overlay"):
        render_inference_service("m", "1", STORAGE, DIGEST, overlay="nope")


def test_isvc_names_are_dns_labels():
    assert isvc_name("Edgeloop_Inspection") == "edgeloop-inspection"
    assert isvc_name("7-segment/v2") == "m-7-segment-v2"
    assert len(isvc_name("x" * 200)) <= 45


def test_tampered_release_fails_validation(rendered_overlays, schemas_dir):
    objs = render_inference_service(
        "edgeloop-inspection", "7", STORAGE, DIGEST, overlay_objects=rendered_overlays["edge-cpu"]
    )
    isvc = objs[0]
    isvc["metadata"]["annotations"]["edgeloop.io/model-digest"] = "abc"
    objs[1]["spec"]["maxReplicas"] = 40
    problems = find_problems(objs, schemas_dir=schemas_dir)
    assert any("digest" in p.path for p in problems)
    assert any("EDGELOOP_MODEL_DIGEST" in p.message for p in problems)
    assert any(p.kind == "HorizontalPodAutoscaler" and "replica bounds" in p.message for p in problems)


@needs_kubectl
def test_release_to_gitops_dir_roundtrips_through_kustomize(tmp_path, schemas_dir):
    objs = render_release("edgeloop-inspection", "7", STORAGE, DIGEST, overlay="keda")
    assert not any(is_template(o) for o in objs)
    out = tmp_path / "releases" / "keda"
    out.mkdir(parents=True)
    (out / "notes.yaml").write_text("# kept: not written by edgeloop\n")
    (out / "stale.yaml").write_text(GENERATED_HEADER + "kind: Stale\n")
    paths = write_gitops(objs, out)
    assert paths[-1].name == "kustomization.yaml" and len(paths) == len(objs) + 1
    assert (out / "notes.yaml").exists() and not (out / "stale.yaml").exists()
    back = kustomize_build(out)
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, back)) == sorted(map(key, objs))
    validate_objects(back, schemas_dir=schemas_dir)
    isvc = next(o for o in back if o["kind"] == "InferenceService")
    assert isvc["metadata"]["annotations"]["edgeloop.io/model-digest"] == DIGEST


def test_train_job_schema_and_shape(schemas_dir):
    cpu = render_train_job("train-7", ["--epochs", 3, "--lr", "0.01"], nproc_per_node=2)
    validate_objects([cpu], schemas_dir=schemas_dir)
    t = cpu["spec"]["trainer"]
    assert t["command"] == ["torchrun", "--nproc-per-node=2", "-m", "edgeloop.components.train"]
    assert t["args"] == ["--epochs", "3", "--lr", "0.01"] and t["numProcPerNode"] == 2
    assert cpu["spec"]["runtimeRef"]["name"] == "edgeloop-torch-ddp"
    assert "podSpecOverrides" not in cpu["spec"]

    gpu = render_train_job("train-8", [], num_nodes=2, nproc_per_node=4, gpus_per_node=4)
    validate_objects([gpu], schemas_dir=schemas_dir)
    assert gpu["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    assert gpu["spec"]["podSpecOverrides"][0]["tolerations"][0]["key"] == "nvidia.com/gpu"
    with pytest.raises(RenderError):
        render_train_job("train-9", [], nproc_per_node=4, gpus_per_node=2)
    with pytest.raises(RenderError):
        render_train_job("Train_9", [])


def test_train_job_runtime_exists_in_every_overlay(rendered_overlays):
    job = render_train_job("train-7", [])
    for objs in rendered_overlays.values():
        runtimes = [o for o in objs if o["kind"] == job["spec"]["runtimeRef"]["kind"]]
        assert [r["metadata"]["name"] for r in runtimes] == [job["spec"]["runtimeRef"]["name"]]
        node = runtimes[0]["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
        assert node["metadata"]["labels"]["edgeloop.io/role"] == "trainer"  # the NetworkPolicy selects on it


def test_validation_error_message_lists_everything(schemas_dir):
    bad = render_train_job("t", [])
    bad["spec"]["trainer"]["numNodes"] = "two"
    bad["spec"]["runtimeRef"].pop("name")
    with pytest.raises(ManifestValidationError) as err:
        validate_objects([bad], schemas_dir=schemas_dir)
    assert len(err.value.problems) >= 2
    assert all(str(p) in str(err.value) for p in err.value.problems)


@needs_kubectl
def test_release_into_another_namespace(schemas_dir):
    objs = render_release(
        "edgeloop-inspection", "7", STORAGE, DIGEST, overlay="keda", namespace="vision-prod"
    )
    validate_objects(objs, schemas_dir=schemas_dir)
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == {"vision-prod"}
    assert next(o for o in objs if o["kind"] == "Namespace")["metadata"]["name"] == "vision-prod"
    binding = next(o for o in objs if o["kind"] == "RoleBinding")
    assert binding["subjects"][0]["namespace"] == "vision-prod"
    so = next(o for o in objs if o["kind"] == "ScaledObject")
    assert all('namespace="vision-prod"' in t["metadata"]["query"] for t in so["spec"]["triggers"])
    with pytest.raises(RenderError):
        render_inference_service("m", "1", STORAGE, DIGEST, namespace="Bad_NS", overlay_objects=objs)
