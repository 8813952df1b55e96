"""Model directories for tests and benchmarks, each with the same I/O contract as the training
path's export (``images`` -> ``probabilities`` + ``embedding``) and a model card with digests.

* :func:`build_model_dir` - a torch model exported to ONNX (needs torch + torchvision);
* :func:`build_tiny_model_dir` - a tiny CNN written with ``onnx.helper`` (no torch, milliseconds);
* :func:`build_linear_model_dir` - mean colour -> linear -> softmax (no torch; weights can be set);
* :func:`build_detection_model_dir` - a detector with boxes, scores and labels out (needs torch).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.core.model_card import (
    EMBEDDING_OUTPUT,
    INPUT_NAME,
    MODEL_CARD_FILE,
    MODEL_FILE,
    PROBS_OUTPUT,
    ModelCard,
)
from edgeloop.core.preprocessing import Preprocess, PreprocessConfig

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
    """Export a randomly initialised torch classifier to ``out/model.onnx`` with its ``model_card.json``.

    ``architecture``: ``mobilenet_v3_small`` (torchvision, realistic compute for benchmarks) or
    ``tiny`` (two convolutions).

    Outputs are ``probabilities`` (softmax applied) and ``embedding`` (pooled features),
    with a dynamic batch axis, like the training path's export. ``seed`` changes the
    weights, so two seeds give two distinguishable versions.
    """
    import torch
    import torchvision

    labels = labels or LABELS
    torch.manual_seed(seed)
    nn = torch.nn
    if architecture == "mobilenet_v3_small":
        net = torchvision.models.mobilenet_v3_small(weights=None, num_classes=len(labels))
        features: torch.nn.Module = nn.Sequential(net.features, net.avgpool, nn.Flatten())
        head: torch.nn.Module = net.classifier
        dim = 576
    elif architecture == "tiny":
        features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        head, dim = nn.Linear(16, len(labels)), 16
    else:
        raise ValueError(f"unknown architecture {architecture!r}: mobilenet_v3_small or tiny")

    class WithHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features, self.head = features, head

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            feats = self.features(x)
            return torch.softmax(self.head(feats), dim=1), feats

    model = WithHeads()
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
        embedding_dim=dim,
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
        last: Any = model.head[-1] if isinstance(model.head, torch.nn.Sequential) else model.head
        last.weight.mul_(40.0)
    model.eval()


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
    from onnx import helper, numpy_helper

    labels = labels or LABELS
    rng = np.random.default_rng(seed)
    c = len(labels)
    nodes = [
        helper.make_node("Conv", [INPUT_NAME, "w_conv"], ["conv"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], [EMBEDDING_OUTPUT], axis=1),
        helper.make_node("MatMul", [EMBEDDING_OUTPUT, "w_fc"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b_fc"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [PROBS_OUTPUT], axis=1),
    ]
    initializers = [
        numpy_helper.from_array(rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32), "w_conv"),
        numpy_helper.from_array(rng.normal(0, 2.0, (8, c)).astype(np.float32), "w_fc"),
        numpy_helper.from_array(rng.normal(0, 0.5, (c,)).astype(np.float32), "b_fc"),
    ]
    card = ModelCard(
        name=name,
        version=version,
        architecture="tiny-cnn",
        labels=labels,
        preprocessing=PreprocessConfig(size=size),
        embedding_dim=8,
    )
    return _write_onnx_model_dir(Path(out), nodes, initializers, card, opset=17)


def build_linear_model_dir(
    out_dir: Path,
    labels: Sequence[str] = ("ok", "scratch", "dent", "stain"),
    size: int = 32,
    seed: int = 0,
    name: str = "edgeloop-inspection",
    weights: np.ndarray | None = None,
) -> Path:
    """``model.onnx`` (images[N,3,S,S] -> mean colour -> linear -> softmax; embedding = mean colour) + card."""
    from onnx import helper, numpy_helper

    k = len(labels)
    rng = np.random.default_rng(seed)
    w = (weights if weights is not None else rng.normal(0, 1, (3, k))).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", [INPUT_NAME, "axes"], ["pooled4"], keepdims=0),
        helper.make_node("Identity", ["pooled4"], [EMBEDDING_OUTPUT]),
        helper.make_node("MatMul", ["pooled4", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [PROBS_OUTPUT], axis=1),
    ]
    initializers = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(np.zeros(k, dtype=np.float32), "B"),
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
    ]
    card = ModelCard(
        name=name,
        architecture="tiny-linear",
        labels=list(labels),
        preprocessing=PreprocessConfig(size=size),
        embedding_dim=3,
    )
    return _write_onnx_model_dir(Path(out_dir), nodes, initializers, card, opset=18)


def _write_onnx_model_dir(
    out: Path, nodes: list[Any], initializers: list[Any], card: ModelCard, opset: int
) -> Path:
    """Check the graph (``images`` [n,3,S,S] -> probabilities, embedding), write it and its card with digests."""
    import onnx
    from onnx import TensorProto, helper

    size, k = card.preprocessing.size, len(card.labels)
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["n", 3, size, size])],
        [
            helper.make_tensor_value_info(PROBS_OUTPUT, TensorProto.FLOAT, ["n", k]),
            helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["n", card.embedding_dim]),
        ],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 17 else 9
    onnx.checker.check_model(model)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_FILE).write_bytes(model.SerializeToString())
    card.with_digests(out).save(out)
    return out


def pyfunc_predict(model_uri: str, card: ModelCard, images: Sequence[Any]) -> tuple[list[str], np.ndarray]:
    """``mlflow.pyfunc.load_model(model_uri)`` fed with the shared preprocessing's tensor of ``images`` (PIL
    or uint8 HWC): (top-1 labels, probabilities), to hold against what the model server answers."""
    import mlflow.pyfunc

    from edgeloop.core.preprocessing import Preprocess

    x = Preprocess(card.preprocessing).batch(list(images))
    probs = np.asarray(mlflow.pyfunc.load_model(model_uri).predict({card.input_name: x})[PROBS_OUTPUT])
    return [card.labels[i] for i in probs.argmax(axis=1)], probs


def build_detection_model_dir(
    out: Path, size: int = 96, seed: int = 0, name: str = "inspection", version: str | None = None
) -> Path:
    """A defect detector (fasterrcnn_tiny_fpn, seeded random weights) exported with its
    post-processing in the graph, and its card: the I/O contract of ``edgeloop`` detection models
    (``images`` [1,3,S,S] -> ``boxes``, ``scores``, ``labels``). Random weights detect nothing real;
    the first class's logit is raised so that the graph answers boxes of it with scores above 0.5.
    Needs torch + torchvision."""
    import torch

    from edgeloop.components.detection import build_detector
    from edgeloop.components.detection_export import detector_card, export_detector, write_card
    from edgeloop.local.sample_data import DEFECT_CLASSES

    torch.manual_seed(seed)
    model = build_detector("fasterrcnn_tiny_fpn", len(DEFECT_CLASSES), size).eval()
    with torch.no_grad():
        cls_score = model.roi_heads.box_predictor.cls_score  # type: ignore[union-attr]
        assert isinstance(cls_score, torch.nn.Linear)
        cls_score.weight *= 30.0
        cls_score.bias[1:] += 2.0
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    export_detector(model, size, out / MODEL_FILE)
    card = detector_card(name, "fasterrcnn_tiny_fpn", DEFECT_CLASSES, PreprocessConfig(size=size))
    write_card(card.model_copy(update={"version": version}), out)
    return out


def reference_detections(
    model_dir: Path, frames: Sequence[np.ndarray], threshold: float = 0.5
) -> list[list[tuple[Any, ...]]]:
    """What a detection model's graph finds on each uint8 HWC frame (resized by the card's
    preprocessing, as the server and the stream resize), in the frame's own pixels:
    per frame, (label, score, x, y, width, height) at or above ``threshold``. Needs onnxruntime."""
    import onnxruntime as ort

    card = ModelCard.model_validate_json((Path(model_dir) / MODEL_CARD_FILE).read_text())
    session = ort.InferenceSession(str(Path(model_dir) / MODEL_FILE), providers=["CPUExecutionProvider"])
    pre = Preprocess(card.preprocessing)
    size = pre.size
    out = []
    for f in frames:
        h, w = f.shape[:2]
        boxes, scores, labels = session.run(None, {card.input_name: pre.batch([pre.resize(f)])})
        keep = scores >= threshold
        b = boxes[keep] * np.array([w / size, h / size, w / size, h / size], dtype=np.float32)
        out.append(
            [
                (card.labels[k - 1], float(s), x0, y0, x1 - x0, y1 - y0)
                for (x0, y0, x1, y1), s, k in zip(b, scores[keep], labels[keep], strict=True)
            ]
        )
    return out


def as_tuples(per_image: Sequence[Sequence[dict[str, Any]]]) -> list[list[tuple[Any, ...]]]:
    """Detections as dicts (the server's, the stream's) -> the tuples of :func:`reference_detections`."""
    return [
        [(d["label"], d["score"], d["x"], d["y"], d["width"], d["height"]) for d in img] for img in per_image
    ]


def assert_same_detections(
    got: Sequence[Sequence[tuple[Any, ...]]], want: Sequence[Sequence[tuple[Any, ...]]]
) -> None:
    """Same detections per image, in order, with scores and coordinates within 0.02 (rounding)."""
    assert [len(g) for g in got] == [len(w) for w in want], (got, want)
    for g_img, w_img in zip(got, want, strict=True):
        for g, w in zip(g_img, w_img, strict=True):
            assert g[0] == w[0], (g, w)
            np.testing.assert_allclose(g[1:], w[1:], atol=0.02)
