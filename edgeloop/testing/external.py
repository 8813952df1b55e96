"""An ONNX classifier as another team would hand it over: written with ``onnx.helper`` directly, with
its own tensor names, no model card, no edgeloop export. For ``edgeloop model import`` tests.

The network: per-channel mean colour -> linear -> (softmax | logits); the pooled colour is
also exposed as a feature output when asked. Weights are seeded random unless given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def write_external_onnx(
    path: Path,
    n_classes: int = 4,
    size: int | str = 32,
    *,
    input_name: str = "pixel_values",
    output_name: str = "scores",
    feature_name: str | None = None,
    softmax: bool = True,
    batch: int | str = "batch",
    opset: int = 17,
    channels: int = 3,
    weights: np.ndarray | None = None,
    extra_outputs: Sequence[str] = (),
    seed: int = 0,
) -> Path:
    """Write a raw ``.onnx`` file (nothing else) and return its path.

    ``size`` / ``batch``: an int for a static axis, a string for a symbolic one.
    ``softmax=False`` leaves logits on ``output_name``. ``extra_outputs`` are further outputs
    (copies of the logits) an importer has to ignore.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = (weights if weights is not None else rng.normal(0, 3.0, (channels, n_classes))).astype(np.float32)
    pooled = feature_name or "pooled"
    reduce = (  # axes became an input in opset 18
        helper.make_node("ReduceMean", [input_name, "axes"], [pooled], keepdims=0)
        if opset >= 18
        else helper.make_node("ReduceMean", [input_name], [pooled], keepdims=0, axes=[2, 3])
    )
    nodes = [
        reduce,
        helper.make_node("MatMul", [pooled, "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "B"], ["logits" if softmax else output_name]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], [output_name], axis=-1))
    logits = "logits" if softmax else output_name
    nodes += [helper.make_node("Identity", [logits], [x]) for x in extra_outputs]
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, n_classes])]
    if feature_name:
        outputs.append(helper.make_tensor_value_info(feature_name, TensorProto.FLOAT, [batch, channels]))
    outputs += [
        helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, n_classes]) for x in extra_outputs
    ]
    graph = helper.make_graph(
        nodes,
        "vendor-classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, channels, size, size])],
        outputs,
        initializer=[
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(rng.normal(0, 0.1, n_classes).astype(np.float32), "B"),
        ]
        + ([numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes")] if opset >= 18 else []),
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="vendor-toolkit"
    )
    model.ir_version = 8 if opset <= 17 else 9
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path
