"""Test and benchmark helpers: small model directories exported from torchvision (no downloads).

Needs torch + torchvision (dev dependencies), imported inside the functions; the
serving image never imports this module.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from edgeloop.core.model_card import EMBEDDING_OUTPUT, INPUT_NAME, MODEL_FILE, PROBS_OUTPUT, ModelCard
from edgeloop.core.preprocessing import PreprocessConfig

LABELS = ["ok", "scratch", "dent", "stain"]


def build_model_dir(
    out: Path,
    size: int = 64,
    seed: int = 0,
    labels: list[str] | None = None,
    name: str = "inspection",
    version: str | None = None,
    architecture: str = "mobilenet_v3_small",
) -> Path:
    """Export a randomly initialised classifier to ``out/model.onnx`` with its ``model_card.json``.

    Outputs are ``probabilities`` (softmax applied) and ``embedding`` (pooled features),
    with a dynamic batch axis, like the training path's export. ``seed`` changes the
    weights, so two seeds give two distinguishable versions.
    """
    import torch
    import torchvision

    labels = labels or LABELS
    torch.manual_seed(seed)
    if architecture == "mobilenet_v3_small":
        net = torchvision.models.mobilenet_v3_small(weights=None, num_classes=len(labels))
    else:
        raise ValueError(f"unknown architecture {architecture}")

    class WithHeads(torch.nn.Module):
        def __init__(self, m: torch.nn.Module):
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            feats = torch.flatten(self.m.avgpool(self.m.features(x)), 1)  # type: ignore[operator]
            return torch.softmax(self.m.classifier(feats), dim=1), feats  # type: ignore[operator]

    model = WithHeads(net)
    _calibrate(model, size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.randn(1, 3, size, size),),
            buf,  # type: ignore[arg-type]
            dynamo=False,
            opset_version=17,
            input_names=[INPUT_NAME],
            output_names=[PROBS_OUTPUT, EMBEDDING_OUTPUT],
            dynamic_axes={INPUT_NAME: {0: "n"}, PROBS_OUTPUT: {0: "n"}, EMBEDDING_OUTPUT: {0: "n"}},
        )
    (out / MODEL_FILE).write_bytes(buf.getvalue())
    card = ModelCard(
        name=name,
        version=version,
        architecture=architecture,
        labels=labels,
        preprocessing=PreprocessConfig(size=size),
        embedding_dim=576,
    )
    card.with_digests(out).save(out)
    return out


def _calibrate(model, size: int) -> None:
    """Random init + eval-mode BatchNorm collapses activations (every input gets the same answer).
    Set BatchNorm statistics from random batches and widen the head so inputs and seeds differ."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, size, size))
        last = model.m.classifier[-1]
        last.weight.mul_(40.0)
    model.eval()


def random_frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Seeded uint8 RGB frames [n, size, size, 3] with some structure (not pure noise)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(n, 1, 1, 3), dtype=np.int32)
    yy, xx = np.mgrid[0:size, 0:size]
    grad = ((xx + yy)[None, :, :, None] * 255 // max(1, 2 * size - 2)).astype(np.int32)
    noise = rng.integers(-40, 40, size=(n, size, size, 3), dtype=np.int32)
    return np.clip(base // 2 + grad // 2 + noise, 0, 255).astype(np.uint8)


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def build_tiny_model_dir(
    out: Path,
    size: int = 64,
    seed: int = 0,
    labels: list[str] | None = None,
    name: str = "inspection",
    version: str | None = None,
) -> Path:
    """A tiny ONNX classifier built with ``onnx.helper`` (no torch, milliseconds): conv -> relu ->
    global pool -> embedding [N,8] -> linear -> softmax. Same I/O contract as the real export."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    labels = labels or LABELS
    rng = np.random.default_rng(seed)
    c = len(labels)
    w_conv = numpy_helper.from_array(rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32), "w_conv")
    w_fc = numpy_helper.from_array(rng.normal(0, 2.0, (8, c)).astype(np.float32), "w_fc")
    b_fc = numpy_helper.from_array(rng.normal(0, 0.5, (c,)).astype(np.float32), "b_fc")
    nodes = [
        helper.make_node("Conv", [INPUT_NAME, "w_conv"], ["conv"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], [EMBEDDING_OUTPUT], axis=1),
        helper.make_node("MatMul", [EMBEDDING_OUTPUT, "w_fc"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b_fc"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [PROBS_OUTPUT], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["n", 3, size, size])],
        [
            helper.make_tensor_value_info(PROBS_OUTPUT, TensorProto.FLOAT, ["n", c]),
            helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["n", 8]),
        ],
        initializer=[w_conv, w_fc, b_fc],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_FILE).write_bytes(model.SerializeToString())
    card = ModelCard(
        name=name,
        version=version,
        architecture="tiny-cnn",
        labels=labels,
        preprocessing=PreprocessConfig(size=size),
        embedding_dim=8,
    )
    card.with_digests(out).save(out)
    return out
