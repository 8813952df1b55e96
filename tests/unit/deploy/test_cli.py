"""`edgeloop deploy render / validate / train-job` as a user runs them."""

from __future__ import annotations

import yaml
from click.testing import CliRunner

from edgeloop.deploy.cli import deploy

from .conftest import DIGEST, STORAGE


def test_render_to_stdout_and_to_gitops_dir(rendered_overlays, tmp_path):
    r = CliRunner()
    res = r.invoke(
        deploy,
        [
            "render",
            "edgeloop-inspection",
            "7",
            "--storage-uri",
            STORAGE,
            "--digest",
            DIGEST,
            "--model-only",
            "--overlay",
            "edge-gpu",
        ],
    )
    assert res.exit_code == 0, res.output
    objs = list(yaml.safe_load_all(res.output))
    assert [o["kind"] for o in objs] == ["InferenceService", "HorizontalPodAutoscaler"]
    assert objs[0]["spec"]["predictor"]["model"]["storageUri"] == STORAGE

    out = tmp_path / "gitops"
    release = ["render", "edgeloop-inspection", "7", "--storage-uri", STORAGE, "--digest", DIGEST]
    release += ["--image-tag", "0.2.0", "-o", str(out)]
    res = r.invoke(deploy, release)  # a release is written only for a verified approval, or on purpose
    assert res.exit_code == 2 and "--verified" in res.output and not out.exists()
    res = r.invoke(deploy, [*release, "--unverified"])
    assert res.exit_code == 0, res.output
    isvc = yaml.safe_load((out / "inferenceservice-edgeloop-edgeloop-inspection.yaml").read_text())
    assert isvc["spec"]["predictor"]["model"]["runtimeVersion"] == "0.2.0"
    assert (out / "kustomization.yaml").exists()


def test_render_needs_a_digest_and_reads_it_from_the_model_card(tmp_path, rendered_overlays):
    from edgeloop.core.model_card import ModelCard

    r = CliRunner()
    res = r.invoke(deploy, ["render", "m", "1", "--storage-uri", STORAGE])
    assert res.exit_code == 2 and "--digest" in res.output

    (tmp_path / "model.onnx").write_bytes(b"onnx bytes")
    card = ModelCard(name="m", architecture="mobilenet_v3_small", labels=["ok", "defect"]).with_digests(
        tmp_path
    )
    card.save(tmp_path)
    res = r.invoke(
        deploy, ["render", "m", "1", "--storage-uri", STORAGE, "--model-dir", str(tmp_path), "--model-only"]
    )
    assert res.exit_code == 0, res.output
    isvc = next(yaml.safe_load_all(res.output))
    assert isvc["metadata"]["annotations"]["edgeloop.io/model-digest"] == card.digest()


def test_validate_command(tmp_path, rendered_overlays):
    r = CliRunner()
    res = r.invoke(deploy, ["validate", "--overlay", "edge-cpu", "--overlay", "keda"])
    assert res.exit_code == 0, res.output
    assert "overlay edge-cpu: 24 objects, OK" in res.output

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "x"},
                "spec": {"maxReplicas": "many"},
            }
        )
    )
    res = r.invoke(deploy, ["validate", str(bad)])
    assert res.exit_code == 2
    assert "maxReplicas" in res.output and "scaleTargetRef" in res.output


def test_train_job_command(rendered_overlays):
    res = CliRunner().invoke(deploy, ["train-job", "train-1", "--nproc-per-node", "2", "--", "--epochs", "3"])
    assert res.exit_code == 0, res.output
    job = yaml.safe_load(res.output)
    assert job["kind"] == "TrainJob" and job["spec"]["trainer"]["args"] == ["--epochs", "3"]
