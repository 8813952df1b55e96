"""Batch scoring on the real stack: every image exactly once, a killed run resumed, the KFP pipeline locally."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from edgeloop.components.batch_score import BatchError, BatchPlan, read_results, run_batch
from edgeloop.core.blob import BlobStore, BlobUri
from edgeloop.monitoring.profile import build_reference_profile
from edgeloop.testing.models import build_linear_model_dir
from edgeloop.testing.waits import wait_until

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def images(stack_settings, sample_dir):
    """The sample images under day1/ of a fresh container, plus a corrupt image and a text file."""
    store = BlobStore.from_settings(stack_settings)
    container = f"batch-{uuid.uuid4().hex[:8]}"
    store.ensure_container(container)
    names = []
    for p in sorted(sample_dir.rglob("*.png")):
        name = f"day1/{p.relative_to(sample_dir).as_posix()}"
        store.upload(BlobUri(container, name), p.read_bytes())
        names.append(name)
    store.upload(BlobUri(container, "day1/broken.png"), b"\x89PNG not really")
    store.upload(BlobUri(container, "day1/notes.txt"), b"shift notes")
    return container, sorted([*names, "day1/broken.png"])


@pytest.fixture(scope="module")
def model_uri(stack_settings, sample_dir, tmp_path_factory):
    """A small model with its reference profile, in blob storage (az://)."""
    from edgeloop.core.model_card import ModelCard

    d = build_linear_model_dir(tmp_path_factory.mktemp("batch-model") / "m", size=32, name="batch-model")
    build_reference_profile(d, sorted(sample_dir.rglob("*.png"))[:60])
    ModelCard.load(d).with_digests(d).save(d)
    store = BlobStore.from_settings(stack_settings)
    prefix = f"batch-test/{uuid.uuid4().hex[:8]}"
    store.ensure_container(stack_settings.blob.models_container)
    for f in d.iterdir():
        store.upload_file(BlobUri(stack_settings.blob.models_container, f"{prefix}/{f.name}"), f)
    return f"az://{stack_settings.blob.models_container}/{prefix}"


def _exactly_once(store, container, out, expected):
    plan = BatchPlan.from_json(store.download(BlobUri(container, f"{out}/manifest.json")).decode())
    rows = read_results(store, plan)
    blobs = [r["blob"] for r in rows]
    assert sorted(blobs) == expected  # every image, once
    return rows


def test_every_image_scored_exactly_once_with_a_summary(stack_settings, images, model_uri):
    container, expected = images
    out = f"results/{uuid.uuid4().hex[:6]}"
    summary = run_batch(stack_settings, container, "day1/", model_uri, out, shard_size=32)
    store = BlobStore.from_settings(stack_settings)
    rows = _exactly_once(store, container, out, expected)
    ok = [r for r in rows if r.get("label")]
    assert len(ok) == len(expected) - 1 and summary.scored == len(ok) and summary.failed == 1
    bad = next(r for r in rows if r["blob"] == "day1/broken.png")
    assert "could not decode" in bad["error"]  # not scored, but reported
    r = ok[0]
    assert (
        set(r["probabilities"]) == {"ok", "scratch", "dent", "stain"}
        and r["model_digest"] == summary.model_digest
    )
    assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
    assert sum(summary.counts.values()) == len(ok) and sum(summary.confidence_histogram["counts"]) == len(ok)
    assert summary.skipped_blobs == 1 and summary.shards == 4
    # the drift report ran the monitoring detectors against the model's reference profile
    assert summary.drift is not None and {d["name"] for d in summary.drift_results} >= {
        "confidence_psi",
        "image_stats_ks",
        "prediction_chi2",
    }
    stored = json.loads(store.download(BlobUri(container, f"{out}/summary.json")))
    assert stored["scored"] == summary.scored

    # the same command again: nothing rescored, nothing duplicated
    again = run_batch(stack_settings, container, "day1/", model_uri, out, shard_size=32)
    assert again.shards_skipped == 4 and again.scored == summary.scored
    _exactly_once(store, container, out, expected)
    # a different shard size at the same --out is another run: refused, not mixed
    with pytest.raises(BatchError, match="choose another --out"):
        run_batch(stack_settings, container, "day1/", model_uri, out, shard_size=8)


def test_a_killed_run_resumes_without_duplicates(stack_settings, images, model_uri):
    container, expected = images
    out = f"killed/{uuid.uuid4().hex[:6]}"
    store = BlobStore.from_settings(stack_settings)
    cmd = [
        sys.executable,
        "-m",
        "edgeloop.cli",
        "batch",
        "score",
        "--container",
        container,
        "--prefix",
        "day1/",
    ]
    cmd += ["--model", model_uri, "--out", out, "--shard-size", "4", "--json"]
    env = {**os.environ, "EDGELOOP_STATE_DIR": str(stack_settings.state_dir)}
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def shards_done() -> int:
        return sum(n.endswith(".done") for n in store.list(container, f"{out}/shards/"))

    try:
        wait_until(
            lambda: proc.poll() is not None or shards_done() >= 3,
            120,
            f"`edgeloop batch score` to finish 3 shards under az://{container}/{out}/shards/",
            step_s=0.02,
        )
        assert (
            proc.poll() is None
        ), f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    finally:
        proc.kill()
        proc.wait(30)
    finished_before = {n for n in store.list(container, f"{out}/shards/") if n.endswith(".done")}
    shards = -(-len(expected) // 4)
    assert 3 <= len(finished_before) < shards

    rerun = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)
    assert summary["shards"] == shards and summary["shards_skipped"] >= len(finished_before)
    rows = _exactly_once(store, container, out, expected)
    assert summary["images"] == len(rows) == len(expected)


@pytest.mark.slow
def test_the_batch_pipeline_runs_with_the_local_kfp_runner(stack_settings, images, model_uri, tmp_path):
    from edgeloop.pipelines.batch_pipeline import run_batch_pipeline_local

    container, expected = images
    out = f"az://{container}/kfp/{uuid.uuid4().hex[:6]}"
    params = {"container": container, "prefix": "day1/", "model": model_uri, "out": out, "shard_size": 40}
    summary = run_batch_pipeline_local(stack_settings, params, pipeline_root=tmp_path / "root")
    assert summary["images"] == len(expected) and summary["shards"] == 3
    store = BlobStore.from_settings(stack_settings)
    _exactly_once(store, container, out.split("/", 3)[3], expected)
    # the summary step's metrics are in KFP's executor output
    metrics = [json.loads(p.read_text()) for p in (tmp_path / "root").rglob("executor_output.json")]
    assert any("images" in str(m) for m in metrics)
