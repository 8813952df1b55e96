"""The DDP entry point trains a detector when the dataset holds boxes: two gloo processes under
torchrun, `-m edgeloop.components.train` as for classification, model.pt and COCO metrics out."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgeloop.components.dataset import build_dataset
from edgeloop.components.labels import ManifestRow, write_manifest
from edgeloop.components.training import torchrun_prefix
from edgeloop.core.model_card import sha256_bytes
from edgeloop.local.sample_data import generate_detection_dataset

pytestmark = pytest.mark.slow


class _Store:
    def __init__(self, files):
        self.files = files

    def download(self, uri):
        return self.files[uri]


@pytest.fixture(scope="module")
def det_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("det-ddp")
    samples = generate_detection_dataset(root / "sample", images=40, seed=2, size=96)
    rows, files = [], {}
    for i, (meta, boxes) in enumerate(samples):
        data = (root / "sample" / meta.file).read_bytes()
        sha = sha256_bytes(data)
        files[f"az://images/d/{sha}.png"] = data
        rows.append(
            ManifestRow(
                f"az://images/d/{sha}.png",
                sha,
                "",
                "a",
                "t",
                i,
                i,
                1,
                1.0,
                boxes=[b.as_dict() for b in boxes],
                width=96,
                height=96,
            )
        )
    manifest = write_manifest(rows, root / "manifest.jsonl")
    build_dataset(None, manifest, root / "ds", upload=False, log_mlflow=False, store=_Store(files))
    return root / "ds"


def _torchrun(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*torchrun_prefix(2), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(det_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("det-run")
    r = _torchrun(
        "--data",
        str(det_dataset),
        "--out",
        str(out),
        "--size",
        "96",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_two_processes_train_a_detector_and_write_its_coco_metrics(det_dataset, trained):
    out = trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [0, 1]
    assert metrics["val_images"] >= 2
    assert (
        metrics["bn_layers_recalibrated"] == 0
    )  # GroupNorm: the same statistics in training and at inference
    assert 0.0 <= metrics["val_map_50.ci95_low"] <= metrics["val_map_50.ci95_high"] <= 1.0
    assert 0.0 <= metrics["val_map_50"] <= 1.0
    assert set(metrics["val_ap_50"]) == set(json.loads((det_dataset / "dataset.json").read_text())["classes"])
    meta = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert meta["task"] == "detection" and meta["arch"] == "fasterrcnn_tiny_fpn"
    assert meta["classes"] == json.loads((det_dataset / "dataset.json").read_text())["classes"]


def test_the_entry_point_lists_the_detection_flags_for_a_detection_dataset(det_dataset):
    r = subprocess.run(
        [sys.executable, "-m", "edgeloop.components.train", "--data", str(det_dataset), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "--detector" in r.stdout and "ssdlite320_mobilenet_v3_large" in r.stdout
    plain = subprocess.run(
        [sys.executable, "-m", "edgeloop.components.train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "--arch" in plain.stdout and "--detector" not in plain.stdout


def test_the_trained_detector_is_packaged_as_a_verified_onnx_model_that_classifier_serving_refuses(
    det_dataset, trained, tmp_path
):
    from edgeloop.components.detection_export import package_detector, run_detector
    from edgeloop.core.errors import InvalidModelError
    from edgeloop.core.model_card import ModelCard
    from edgeloop.core.model_loader import open_model, verify_model

    card = package_detector(trained / "model.pt", det_dataset, tmp_path / "model", "tags-detector")
    assert card.task == "detection" and card.outputs == ["boxes", "scores", "labels"]
    assert card.parity["agreement"] == 1.0 and card.metrics["val_map_50"] >= 0
    verified = verify_model(tmp_path / "model")  # every file matches its sha256 in the card
    assert ModelCard.load(tmp_path / "model").digest() == verified.card.digest()
    import onnxruntime as ort

    session = ort.InferenceSession(verified.model_bytes, providers=["CPUExecutionProvider"])
    boxes, scores, labels = run_detector(session, np.zeros((3, 96, 96), np.float32))
    assert boxes.shape[1:] == (4,) and len(scores) == len(labels)
    with pytest.raises(InvalidModelError, match="detection model"):
        open_model(tmp_path / "model")
