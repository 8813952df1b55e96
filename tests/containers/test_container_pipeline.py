"""Pipeline steps run inside the pipeline image the way a cluster runs them.

Each step runs the compiled pipeline's own container command and args (KFP's executor, the
component's source), with its settings as environment variables built from the compiled
``secretAsEnv`` entries (kfp-kubernetes ``use_secret_as_env``) and Secrets holding the local
stack's endpoints and credentials, as user 1000 with no capabilities, against the real stack on
127.0.0.1 (host network).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import yaml

from edgeloop.pipelines.runner import COMPILED
from edgeloop.testing.containers import run

pytestmark = [pytest.mark.containers, pytest.mark.integration, pytest.mark.slow]

PROJECT = "edgeloop-container-it"


def compiled() -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all(COMPILED.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def cluster_secrets(settings) -> dict[str, dict[str, str]]:
    """The edgeloop-* Secrets (manifests/README.md) an operator would create for this stack."""
    user, password = settings.mlflow_credentials()
    return {
        "edgeloop-blob": {"connection-string": settings.blob_connection_string()},
        "edgeloop-mlflow": {
            "tracking-uri": settings.mlflow_tracking_uri(),
            "username": user,
            "password": password,
        },
        "edgeloop-labelstudio": {
            "url": settings.labelstudio_url(),
            "api-key": settings.labelstudio_api_key(),
        },
    }


def secret_env(executor: dict, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """What the KFP driver puts into the step's pod: each secretAsEnv key as its env var."""
    env = {}
    for entry in executor.get("secretAsEnv", []):
        for m in entry["keyToEnv"]:
            value = secrets.get(entry["secretName"], {}).get(m["secretKey"])
            if value is None and not entry.get("optional"):
                raise AssertionError(f"Secret {entry['secretName']} has no key {m['secretKey']}")
            if value is not None:
                env[m["envVar"]] = value
    return env


def run_step(engine, image, task: str, params: dict, outputs: dict, out_dir: Path, env: dict[str, str]):
    """Run compiled task ``task`` (``exec-<task>``) in ``image``; returns its executor output."""
    spec, _ = compiled()
    container = spec["deploymentSpec"]["executors"][f"exec-{task}"]["container"]
    step_dir = out_dir / task
    step_dir.mkdir(parents=True)
    out_dir.chmod(0o755)
    step_dir.chmod(0o777)  # the step runs as user 1000
    executor_input = {
        "inputs": {"parameterValues": params},
        "outputs": {
            "artifacts": {
                name: {
                    "artifacts": [{"name": name, "type": {"schemaTitle": kind}, "uri": f"/out/{task}/{name}"}]
                }
                for name, kind in outputs.get("artifacts", {}).items()
            },
            "parameters": {p: {"outputFile": f"/out/{task}/{p}"} for p in outputs.get("parameters", ())},
            "outputFile": f"/out/{task}/executor_output.json",
        },
    }
    args = [a.replace("{{$}}", json.dumps(executor_input)) for a in container["args"]]
    opts = ["--rm", "--network", "host", "--user", "1000:1000", "--cap-drop", "ALL"]
    opts += ["--security-opt", "no-new-privileges", "-v", f"{out_dir}:/out"]
    for k, v in env.items():
        opts += ["-e", f"{k}={v}"]
    r = run(engine, "run", *opts, image, *container["command"], *args, timeout=600, check=False)
    result = json.loads((step_dir / "executor_output.json").read_text()) if r.returncode == 0 else None
    return r, result


@pytest.fixture(scope="module")
def seeded(stack_settings, sample_dir):
    from edgeloop.local.seed import seed_directory

    return seed_directory(
        stack_settings, sample_dir, source="container-it", project_title=PROJECT, progress=False
    )


def test_label_snapshot_and_dataset_build_run_in_the_pipeline_image_with_settings_from_secrets(
    engine, images, stack_settings, seeded, blob_store, tmp_path
):
    image = images("edgeloop-pipeline")
    spec, platform = compiled()
    secrets = cluster_secrets(stack_settings)
    defaults = spec["root"]["inputDefinitions"]["parameters"]

    r, snap = run_step(
        engine,
        image,
        "snapshot-labels",
        {"project": PROJECT, "label_policy": defaults["label_policy"]["defaultValue"], "config_file": ""},
        {"parameters": ("manifest_uri", "labels_digest", "labeled_images")},
        tmp_path,
        secret_env(platform["exec-snapshot-labels"], secrets),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    values = snap["parameterValues"]
    assert values["labeled_images"] == seeded.images_found - seeded.unlabeled_tasks > 0
    assert blob_store.exists(values["manifest_uri"])  # written to the stack's Azurite from the container

    params = {
        "manifest_uri": values["manifest_uri"],
        "split_fractions": defaults["split_fractions"]["defaultValue"],
        "config_file": "",
    }
    outputs = {"artifacts": {"dataset": "system.Dataset"}, "parameters": ("Output",)}
    r, built = run_step(
        engine,
        image,
        "build-dataset",
        params,
        outputs,
        tmp_path,
        secret_env(platform["exec-build-dataset"], secrets),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    meta = built["artifacts"]["dataset"]["artifacts"][0]["metadata"]
    assert meta["images"] == values["labeled_images"]
    assert sum(n for split in meta["counts"].values() for n in split.values()) == meta["images"]
    assert built["parameterValues"]["Output"] == meta["version"]
    files = [p for p in (tmp_path / "build-dataset" / "dataset").rglob("*") if p.is_file()]
    assert len(files) >= meta["images"]  # the images themselves, fetched and verified in the container

    # the same step without the Secrets: a clear error, nothing written
    r, _ = run_step(engine, image, "build-dataset", params, outputs, tmp_path / "no-secrets", {})
    assert r.returncode != 0 and "stack" in r.stderr.lower()


def test_kfp_docker_runner_runs_a_step_in_the_pipeline_image_through_the_engine_api(
    engine, images, stack_settings, seeded, tmp_path, monkeypatch
):
    """What `edgeloop pipeline run --local --containers` does for every step: kfp's DockerRunner on
    docker, or on podman's Docker-compatible API, with the settings as the environment, its containers
    under the watch that ends a run kfp can no longer finish."""
    from kfp import local

    from edgeloop.pipelines import container_watch, image_build, steps
    from edgeloop.pipelines.runner import container_env

    image_build.tag_image(engine, images("edgeloop-pipeline"), steps.PIPELINE_IMAGE)
    root = tmp_path / "kfp"
    root.mkdir()
    root.chmod(0o777)  # the step runs as user 1000
    with container_watch.watched_engine(engine, stall_s=90) as api:
        monkeypatch.setenv("DOCKER_HOST", api.host)
        local.init(
            runner=local.DockerRunner(
                network_mode="host",
                user="1000:1000",
                environment=container_env(stack_settings),
                cap_drop=["ALL"],
                labels=api.labels,
            ),
            pipeline_root=str(root),
            enable_caching=False,
            raise_on_error=True,
        )
        task = steps.snapshot_labels(project=PROJECT, label_policy="latest", config_file="")
    assert task.outputs["labeled_images"] == seeded.images_found - seeded.unlabeled_tasks > 0


def test_the_watch_names_the_step_container_a_stalled_run_waits_on_and_stops_the_engine_api(engine, images):
    """A labelled container seen running, then gone: after stall_s the watch gives the reason (the
    container's name) and closes the engine API, so a client blocked on it gets an error, not a hang."""
    import docker

    from edgeloop.pipelines import container_watch

    name = f"edgeloop-watch-{uuid.uuid4().hex[:8]}"
    image = images("edgeloop-pipeline")
    with (
        pytest.raises(container_watch.StalledRunError) as err,
        container_watch.watched_engine(engine, stall_s=3, poll_s=0.5) as api,
    ):
        label = next(f"{k}={v}" for k, v in api.labels.items())
        run(engine, "run", "-d", "--rm", "--name", name, "--label", label, image, "sleep", "2")
        client = docker.DockerClient(base_url=api.host, timeout=60)
        deadline = time.monotonic() + 120
        while api.watch.reason is None:
            assert time.monotonic() < deadline, "the watch gave no reason within 120 s of the container's end"
            time.sleep(0.5)
        with pytest.raises(Exception):  # noqa: B017 - any client error: the API is closed
            client.ping()
    assert name in str(err.value) and "re-run" in str(err.value)
    assert api.watch.seen[name].state == "removed"
