"""The compiled batch-scoring pipeline: golden YAML, shards fanned out, nothing cached, nothing machine-specific."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from edgeloop.pipelines.batch_pipeline import COMPILED, compile_batch_pipeline

ROOT = Path(__file__).resolve().parents[3]


def test_compiled_yaml_is_checked_in_and_current(tmp_path):
    fresh = compile_batch_pipeline(tmp_path / "b.yaml").read_text()
    assert (
        fresh == COMPILED.read_text()
    ), "the batch pipeline changed: run `make compile` and review the diff of pipelines/compiled/batch_pipeline.yaml"


def test_compile_is_independent_of_environment(tmp_path):
    env = {
        **os.environ,
        "EDGELOOP_STATE_DIR": str(tmp_path / "elsewhere"),
        "EDGELOOP_MLFLOW__TRACKING_URI": "http://example.invalid:5000",
    }
    out = tmp_path / "env.yaml"
    code = (
        "from pathlib import Path; from edgeloop.pipelines.batch_pipeline import compile_batch_pipeline; "
        f"compile_batch_pipeline(Path({str(out)!r}))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT, timeout=300)
    text = out.read_text()
    assert text == COMPILED.read_text()
    for leak in (str(ROOT), str(Path.home()), "127.0.0.1", "example.invalid"):
        assert leak not in text


def test_shards_fan_out_and_the_summary_collects_them():
    spec = next(yaml.safe_load_all(COMPILED.read_text()))
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"plan-batch", "for-loop-1", "summarize-batch"}
    loop = root["for-loop-1"]
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("plan-batch-Output")
    assert loop["iteratorPolicy"]["parallelismLimit"] >= 2
    summary_inputs = root["summarize-batch"]["inputs"]["parameters"]["shard_images"]
    assert summary_inputs["taskOutputParameter"]["producerTask"] == "for-loop-1"
    tasks = dict(root) | spec["components"]["comp-for-loop-1"]["dag"]["tasks"]
    # a re-run resumes from the shard markers in blob storage; a KFP cache hit would skip the writes
    assert all(not t.get("cachingOptions", {}).get("enableCache", False) for t in tasks.values())
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {
        "container",
        "prefix",
        "model",
        "out",
        "shard_size",
        "config_file",
    }


def test_every_step_runs_under_the_cluster_policy():
    docs = list(yaml.safe_load_all(COMPILED.read_text()))
    executors = docs[0]["deploymentSpec"]["executors"]
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(platform) == set(executors) and len(executors) == 3
    for e in platform.values():
        assert e["podMetadata"]["labels"] == {"edgeloop.io/role": "pipeline"}  # the NetworkPolicy's selector
        assert e["securityContext"]["runAsNonRoot"] is True
        assert {s["secretName"] for s in e["secretAsEnv"]} >= {"edgeloop-blob", "edgeloop-mlflow"}
    for e in executors.values():
        assert "pip install" not in " ".join(e["container"]["command"])  # the image holds everything
