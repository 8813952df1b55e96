"""The models the serving benchmarks run: the demo's champion shape (resnet18 int8 at 128 px) and a
heavier one (resnet18 fp32 at 224 px), random weights, exported and quantized by the pipeline's own
code (``components.export``/``components.precision``), cached under the temp dir."""

from __future__ import annotations

import tempfile
from pathlib import Path

CACHE = Path(tempfile.gettempdir()) / "edgeloop-bench-models"
LABELS = ["ok", "scratch", "dent", "stain"]
MODELS = {"resnet18-int8-128": ("int8", 128), "resnet18-fp32-224": ("fp32", 224)}


def bench_model(key: str) -> Path:
    """The model directory for ``key`` (one of :data:`MODELS`), built on first use."""
    precision, size = MODELS[key]
    out = CACHE / key
    if (out / "model_card.json").exists():
        return out
    import numpy as np
    import torch

    from edgeloop.components.export import export_module
    from edgeloop.components.modeling import ClassifierWithEmbedding, build_model
    from edgeloop.components.precision import quantize_int8
    from edgeloop.core.model_card import ModelCard, Precision
    from edgeloop.core.preprocessing import PreprocessConfig

    torch.manual_seed(0)
    net = ClassifierWithEmbedding(build_model("resnet18", len(LABELS))).eval()
    out.mkdir(parents=True, exist_ok=True)
    fp32 = out / "fp32.onnx"
    export_module(net, size, fp32, opset=17)
    model = out / "model.onnx"
    if precision == "int8":
        calib = np.random.default_rng(0).normal(size=(16, 3, size, size)).astype(np.float32)
        quantize_int8(fp32, model, calib)
        fp32.unlink()
    else:
        fp32.rename(model)
    card = ModelCard(
        name=key,
        version="1",
        architecture="resnet18",
        labels=LABELS,
        preprocessing=PreprocessConfig(size=size),
        embedding_dim=net.embedding_dim,
        precision=Precision(precision),
    )
    card.with_digests(out).save(out)
    return out
