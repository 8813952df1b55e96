"""Bring your own model on the real stack: a raw ONNX file written with onnx.helper (not by edgeloop's
training code, no embedding output, its own tensor names) is imported, gated, approved, served from the
registry, scanned by drift monitoring (embedding detectors reported off) and batch-scored by NAME@ALIAS."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeloop.cli import cli
from edgeloop.core.blob import BlobStore, BlobUri
from edgeloop.core.model_loader import fetch_verified
from edgeloop.local.sample_data import CLASSES
from edgeloop.monitoring.profile import NO_EMBEDDING
from edgeloop.monitoring.scan import ScanOptions, scan_window
from edgeloop.pipelines import registry
from edgeloop.pipelines.cli import _for_model
from edgeloop.testing.datasets import sample_dataset_dir
from edgeloop.testing.external import write_external_onnx

launcher = pytest.importorskip("edgeloop.serving.launcher")

# a tiny vendor model on ~32 test images: the path is tested, not its quality or the evidence rule
LENIENT = ["min_accuracy=0", "min_class_recall=0", "max_ece=1", "min_eval_images=0"]
LENIENT += ["max_parity_diff=1", "min_top1_agreement=0", "max_latency_p95_ms=5000"]


def _edgeloop(settings, *args: str) -> str:
    result = CliRunner().invoke(
        cli, list(args), env={"EDGELOOP_STATE_DIR": str(settings.state_dir)}, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def _approve(settings, name: str, version: str) -> None:
    from edgeloop.cli import COMMANDS

    module, attr, _ = COMMANDS["approve"]
    command = getattr(__import__(module, fromlist=[attr]), attr)
    by = ["--by", "plant-qa"] if any(p.name == "by" for p in command.params) else []
    _edgeloop(settings, "approve", name, version, *by, "--note", "imported model reviewed")


@pytest.mark.slow
def test_imported_onnx_is_gated_approved_served_and_scanned(stack_settings, sample_dir, tmp_path):
    name = f"vendor-{uuid.uuid4().hex[:6]}"
    raw = write_external_onnx(tmp_path / "vendor.onnx", n_classes=len(CLASSES), input_name="input_1")
    dataset = sample_dataset_dir(sample_dir, tmp_path / "dataset")
    gate = [x for item in LENIENT for x in ("--gate", item)]
    out = _edgeloop(
        stack_settings,
        *("model", "import", str(raw), "--name", name, "--labels", ",".join(CLASSES)),
        *("--dataset", str(dataset), "--out", str(tmp_path / "imported"), "--latency-requests", "20"),
        *gate,
        "--json",
    )
    outcome = json.loads(out[out.index("{") :])
    reg = outcome["registered"]
    assert outcome["gate_passed"] and reg["gate_passed"] and reg["name"] == name
    assert outcome["validation"]["input"] == "input_1" and outcome["validation"]["embedding"] is None
    named = _for_model(stack_settings, name)
    version = reg["version"]
    tags = registry.version_tags(named, version)
    assert (
        tags["lineage.origin"] == "imported"
        and tags["lineage.source_sha256"] == outcome["validation"]["source_sha256"]
    )
    assert tags[registry.APPROVAL] == registry.PENDING and tags[registry.MODEL_DIGEST] == outcome["digest"]

    # the card carries the precision and latency measured here, the evidence behind the choice
    fetched = fetch_verified(f"models:/{name}/{version}", stack_settings, cache_dir=tmp_path / "cache")
    card = fetched.card
    assert card.lineage["origin"] == "imported" and card.outputs == ["probabilities"]
    assert card.metrics["latency_ms_b1"] > 0 and card.precision_evidence["measurements"]
    assert (fetched.directory / "reference_profile.npz").exists()

    with pytest.raises(registry.RegistryError):  # not approved yet: it cannot become champion
        registry.promote_champion(named, version, deployed_to="test: edgeloop serve")
    _approve(stack_settings, name, version)
    registry.promote_champion(named, version, deployed_to="test: edgeloop serve")
    assert registry.champion_version(named) == version

    pngs = [p.read_bytes() for p in sorted(sample_dir.rglob("*.png"))[:40]]
    start = datetime.now(UTC) - timedelta(seconds=5)
    with launcher.running_server(
        [f"models:/{name}@champion"], stack_settings, extra_args=["--payload_log_rate", "1"]
    ) as srv:
        client = srv.rest_client(name)
        served = [client.infer_images(pngs[i : i + 8]) for i in range(0, len(pngs), 8)]
    end = datetime.now(UTC) + timedelta(seconds=5)
    assert all(p.model_version == version for p in served)
    assert sum(len(p.labels) for p in served) == len(pngs)
    _assert_pyfunc_predicts_the_served_labels(stack_settings, name, version, card, pngs, served)

    report = scan_window(
        stack_settings,
        fetched.directory,
        start,
        end,
        ScanOptions(payload_model=name, version=version, queue=False, deliver=False, n_permutations=50),
    )
    print(report.summary())
    assert report.records == len(pngs)
    results = {r.name: r for r in report.results}
    assert results["embedding_mmd"].extra["skipped"] == f"off: {NO_EMBEDDING}"
    assert all("skipped" not in r.extra for n, r in results.items() if n != "embedding_mmd")
    assert any("detectors off" in w for w in report.warnings)
    assert "out_of_distribution" not in report.flag_reasons

    # and batch scoring by NAME@ALIAS scores with the same version
    store = BlobStore.from_settings(stack_settings)
    container = f"import-batch-{uuid.uuid4().hex[:6]}"
    store.ensure_container(container)
    for i, data in enumerate(pngs[:12]):
        store.upload(BlobUri(container, f"line-3/{i:03d}.png"), data)
    batch = json.loads(
        _edgeloop(
            stack_settings,
            *(
                "batch",
                "score",
                "--container",
                container,
                "--prefix",
                "line-3/",
                "--model",
                f"{name}@champion",
            ),
            *("--out", "scored", "--json"),
        )
    )
    assert (
        batch["model_version"] == version
        and batch["model_digest"] == outcome["digest"]
        and batch["scored"] == 12
    )
    assert Path(outcome["model_dir"]).is_dir()


def _assert_pyfunc_predicts_the_served_labels(settings, name, version, card, pngs, served) -> None:
    """The imported model took the same registration path: an MLflow ONNX model whose signature lists the
    one output it has, and whose pyfunc predicts the labels the server gave for the same images."""
    import mlflow

    from edgeloop.core.preprocessing import decode_image
    from edgeloop.testing.models import pyfunc_predict

    registry.client(_for_model(settings, name))  # points mlflow at the stack
    info = mlflow.models.get_model_info(f"models:/{name}/{version}")
    assert [o.name for o in info.signature.outputs.inputs] == ["probabilities"]
    assert info.signature.inputs.inputs[0].shape == (-1, 3, card.preprocessing.size, card.preprocessing.size)
    labels, _ = pyfunc_predict(f"models:/{name}@champion", card, [decode_image(b) for b in pngs])
    assert labels == [label for p in served for label in p.labels]
