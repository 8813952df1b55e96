"""Test helpers: a tiny, valid edgeloop model directory built with onnx.helper (no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def make_tiny_model(
    out_dir: Path,
    labels: Sequence[str] = ("ok", "scratch", "dent", "stain"),
    size: int = 32,
    seed: int = 0,
    name: str = "edgeloop-inspection",
    weights: np.ndarray | None = None,
) -> Path:
    """``model.onnx`` (images[N,3,S,S] -> mean colour -> linear -> softmax; embedding = mean colour) + card."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeloop.core.model_card import EMBEDDING_OUTPUT, INPUT_NAME, MODEL_FILE, PROBS_OUTPUT, ModelCard
    from edgeloop.core.preprocessing import PreprocessConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k = len(labels)
    rng = np.random.default_rng(seed)
    w = (weights if weights is not None else rng.normal(0, 1, (3, k))).astype(np.float32)
    b = np.zeros(k, dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["images", "axes"], ["pooled4"], keepdims=0),
        helper.make_node("Identity", ["pooled4"], [EMBEDDING_OUTPUT]),
        helper.make_node("MatMul", ["pooled4", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [PROBS_OUTPUT], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, size, size])],
        [
            helper.make_tensor_value_info(PROBS_OUTPUT, TensorProto.FLOAT, ["N", k]),
            helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["N", 3]),
        ],
        initializer=[
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(b, "B"),
            numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(out_dir / MODEL_FILE))
    card = ModelCard(
        name=name,
        architecture="tiny-linear",
        labels=list(labels),
        preprocessing=PreprocessConfig(size=size),
        embedding_dim=3,
    )
    card.with_digests(out_dir).save(out_dir)
    return out_dir
