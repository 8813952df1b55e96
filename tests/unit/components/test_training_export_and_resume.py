"""ONNX export contract and parity (a broken export is caught), and resuming training from a checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeloop.components.errors import ParityError
from edgeloop.components.export import check_parity, export_model, export_onnx
from edgeloop.core.model_card import MODEL_FILE, ModelCard

pytestmark = pytest.mark.slow  # trains a (tiny) model


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """Two epochs of mobilenet_v3_small at 32 px, in-process (no torchrun), stopped after one and resumed."""
    from edgeloop.components import train

    out = tmp_path_factory.mktemp("train")
    base = [
        "--data",
        str(tiny_dataset),
        "--out",
        str(out),
        "--arch",
        "mobilenet_v3_small",
        "--size",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--no-progress",
        "--min-epochs",
        "1",
    ]
    first = train.main(train.get_args_parser().parse_args([*base, "--stop-after", "1"]))
    second = train.main(train.get_args_parser().parse_args([*base, "--resume", str(out / "checkpoint.pt")]))
    return out, first, second


def test_resume_continues_from_the_checkpoint(trained):
    import torch

    out, first, second = trained
    assert not first["finished"] and first["epochs_run"] == 1
    assert [h["epoch"] for h in first["history"]] == [0]
    assert second["finished"] and second["epochs_run"] == 1  # only epoch 1 ran in the second invocation
    assert [h["epoch"] for h in second["history"]] == [0, 1]
    assert second["history"][0] == first["history"][0]  # history carried over from the checkpoint
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 1 and {"model", "optimizer", "lr_scheduler", "args"} <= set(ckpt)
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["val_accuracy"] <= 1.0 and metrics["bn_layers_recalibrated"] > 0


def test_export_follows_the_serving_contract_and_matches_torch(trained, tiny_dataset, tmp_path):
    import onnxruntime as ort

    out, *_ = trained
    card = export_model(out, tmp_path / "m", dataset_dir=tiny_dataset)
    sess = ort.InferenceSession(str(tmp_path / "m" / MODEL_FILE), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["images"]
    assert [o.name for o in sess.get_outputs()] == ["probabilities", "embedding"]
    probs, emb = sess.run(
        None, {"images": np.random.default_rng(0).standard_normal((3, 3, 32, 32), np.float32)}
    )
    assert probs.shape == (3, 4) and np.allclose(probs.sum(1), 1.0, atol=1e-5)  # softmax in the graph
    assert emb.shape == (3, card.embedding_dim)
    assert card.parity["top1_agreement"] == 1.0 and card.parity["max_abs_diff"] <= 1e-4
    loaded = ModelCard.load(tmp_path / "m")
    loaded.verify(tmp_path / "m")
    assert loaded.labels == ["dent", "ok", "scratch", "stain"] and loaded.preprocessing.size == 32


def test_a_broken_export_is_caught(trained, tiny_dataset, tmp_path):
    import torch

    from edgeloop.components.modeling import load_model_file

    out, *_ = trained
    net, _ = load_model_file(out / "model.pt")
    with torch.no_grad():  # a silently wrong export: the classifier's weights differ from the trained ones
        last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.add_(torch.randn_like(last.weight))
    bad = export_onnx(out / "model.pt", tmp_path / "bad.onnx", model=net)
    with pytest.raises(ParityError) as err:
        check_parity(out / "model.pt", bad, tiny_dataset)
    assert err.value.report["max_abs_diff"] > 1e-4
    report = check_parity(out / "model.pt", bad, tiny_dataset, raise_on_failure=False)
    assert not report.passed


def test_the_card_records_n_for_every_metric_and_the_training_machine(trained, tiny_dataset, tmp_path):
    from edgeloop.components.stats import is_evidence_field

    out, *_ = trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == 0 and metrics["machine"]["cpu_flags"]  # what makes the run reproducible
    card = export_model(out, tmp_path / "m", dataset_dir=tiny_dataset)
    figures = [k for k in card.metrics if not is_evidence_field(k)]
    assert {"val_accuracy", "test_accuracy", "onnx_val_accuracy"} <= set(figures)
    for k in figures:
        assert f"{k}.n" in card.metrics, k
    n_val = sum(
        1 for line in (tiny_dataset / "index.jsonl").read_text().splitlines() if '"split": "val"' in line
    )
    assert card.metrics["val_accuracy.n"] == n_val
    assert (
        card.metrics["val_accuracy.ci95_low"]
        <= card.metrics["val_accuracy"]
        <= card.metrics["val_accuracy.ci95_high"]
    )
    assert card.lineage["train_seed"] == "0"
    assert card.lineage["train_cpu_isa"] and card.lineage["train_torch_cpu_capability"]


def test_same_seed_same_weights(tiny_dataset, tmp_path):
    """Seeded weights, augmentations, sampler and loaders, deterministic algorithms: two runs with one
    seed on one machine give the same model, bit for bit; another seed gives another model."""
    import torch

    from edgeloop.components import train

    def run(name: str, seed: int) -> dict:
        out = tmp_path / name
        args = [
            "--data",
            str(tiny_dataset),
            "--out",
            str(out),
            "--arch",
            "mobilenet_v3_small",
            "--size",
            "32",
        ]
        args += [
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--no-progress",
            "--min-epochs",
            "1",
            "--seed",
            str(seed),
        ]
        train.main(train.get_args_parser().parse_args(args))
        return torch.load(out / "model.pt", map_location="cpu", weights_only=True)["state_dict"]

    a, b, c = run("a", 7), run("b", 7), run("c", 8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
