"""Export a trained model to one ONNX file (the serving contract) and verify parity with torch.

Contract: input ``images`` float32 [N, 3, S, S] (dynamic N); outputs ``probabilities``
[N, C] (softmax inside the graph) and ``embedding`` [N, D] (penultimate features).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeloop.components.errors import ParityError
from edgeloop.components.stats import proportion_fields
from edgeloop.core.model_card import EMBEDDING_OUTPUT, INPUT_NAME, MODEL_FILE, PROBS_OUTPUT

DEFAULT_OPSET = 17
MAX_ABS_DIFF = 1e-4
MIN_AGREEMENT = 1.0


@dataclass
class ParityReport:
    images: int
    max_abs_diff: float  # probabilities
    max_abs_diff_embedding: float
    top1_agreement: float
    onnx_accuracy: float
    torch_accuracy: float
    max_abs_diff_threshold: float
    min_agreement_threshold: float
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def card_fields(self) -> dict[str, float]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "max_abs_diff_embedding": self.max_abs_diff_embedding,
            "top1_agreement": self.top1_agreement,
            "images": float(self.images),
            "max_abs_diff_threshold": self.max_abs_diff_threshold,
            "min_agreement_threshold": self.min_agreement_threshold,
        }


def export_onnx(
    model_file: Path, out_path: Path | None = None, *, opset: int = DEFAULT_OPSET, model: Any | None = None
) -> Path:
    """``model.pt`` (from training) -> one self-contained ONNX file, checked with onnx.checker.

    ``model`` (a torch module wrapping a classifier, already loaded) overrides ``model_file``'s weights;
    tests use it to export deliberately different models.
    """
    import onnx

    from edgeloop.components.modeling import ClassifierWithEmbedding, load_model_file

    net, meta = load_model_file(Path(model_file))
    if model is not None:
        net = model
    out_path = Path(out_path) if out_path else Path(model_file).with_name(MODEL_FILE)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    size = int(meta["preprocess"]["size"])
    export_module(ClassifierWithEmbedding(net).eval(), size, out_path, opset)
    proto = onnx.load(str(out_path))
    onnx.checker.check_model(proto, full_check=True)
    meta_props = {
        "edgeloop.arch": meta["arch"],
        "edgeloop.labels": ",".join(meta["classes"]),
        "edgeloop.input_size": str(size),
        "edgeloop.dataset_version": str(meta.get("dataset_version")),
    }
    for k, v in meta_props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(out_path))
    return out_path


def export_module(wrapper: Any, size: int, out_path: Path, opset: int = DEFAULT_OPSET) -> Path:
    """A :class:`ClassifierWithEmbedding` -> ONNX with edgeloop's tensor names and a dynamic batch."""
    import torch

    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (torch.zeros(2, 3, size, size),),
            str(out_path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[PROBS_OUTPUT, EMBEDDING_OUTPUT],
            dynamic_axes={
                INPUT_NAME: {0: "batch"},
                PROBS_OUTPUT: {0: "batch"},
                EMBEDDING_OUTPUT: {0: "batch"},
            },
            do_constant_folding=True,
        )
    return out_path


def onnx_session(path: Path, provider: str = "CPUExecutionProvider", threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=[provider])


def run_onnx(session: Any, x, batch: int = 32):
    import numpy as np

    # an imported model may have no embedding output: its embeddings are then [N, 0]
    names = [PROBS_OUTPUT] + [o.name for o in session.get_outputs() if o.name == EMBEDDING_OUTPUT]
    probs, embs = [], []
    for i in range(0, len(x), batch):
        p, *e = session.run(names, {INPUT_NAME: x[i : i + batch]})
        probs.append(p)
        embs.append(e[0] if e else np.zeros((len(p), 0), np.float32))
    return np.concatenate(probs), np.concatenate(embs)


def check_parity(
    model_file: Path,
    onnx_path: Path,
    dataset_dir: Path,
    *,
    split: str = "val",
    max_abs_diff: float = MAX_ABS_DIFF,
    min_agreement: float = MIN_AGREEMENT,
    provider: str = "CPUExecutionProvider",
    limit: int | None = None,
    raise_on_failure: bool = True,
) -> ParityReport:
    """Run torch and ONNX Runtime on the same preprocessed images of ``split``; compare.

    Raises :class:`ParityError` (with the report) when the max absolute probability difference
    exceeds ``max_abs_diff`` or top-1 agreement is below ``min_agreement``.
    """
    import numpy as np
    import torch

    from edgeloop.components.modeling import ClassifierWithEmbedding, load_model_file, load_split
    from edgeloop.core.preprocessing import Preprocess, PreprocessConfig

    net, meta = load_model_file(Path(model_file))
    pre = Preprocess(PreprocessConfig(**meta["preprocess"]))
    ds = load_split(Path(dataset_dir), split, meta["classes"], pre, limit=limit)
    if len(ds) == 0:
        raise ParityError(f"the dataset has no '{split}' images to check parity on")
    x = ds.array()
    targets = np.asarray(ds.targets)
    wrapper = ClassifierWithEmbedding(net).eval()
    with torch.no_grad():
        tp, te = [], []
        for i in range(0, len(x), 32):
            p, e = wrapper(torch.from_numpy(x[i : i + 32]))
            tp.append(p.numpy())
            te.append(e.numpy())
    t_probs, t_emb = np.concatenate(tp), np.concatenate(te)
    o_probs, o_emb = run_onnx(onnx_session(onnx_path, provider), x)
    report = ParityReport(
        images=len(x),
        max_abs_diff=float(np.abs(t_probs - o_probs).max()),
        max_abs_diff_embedding=float(np.abs(t_emb - o_emb).max()),
        top1_agreement=float((t_probs.argmax(1) == o_probs.argmax(1)).mean()),
        onnx_accuracy=float((o_probs.argmax(1) == targets).mean()),
        torch_accuracy=float((t_probs.argmax(1) == targets).mean()),
        max_abs_diff_threshold=max_abs_diff,
        min_agreement_threshold=min_agreement,
        passed=True,
    )
    problems = []
    if not report.max_abs_diff <= max_abs_diff:  # also catches NaN
        problems.append(f"max |p_torch - p_onnx| = {report.max_abs_diff:.3g} > {max_abs_diff:g}")
    if report.top1_agreement < min_agreement:
        problems.append(f"top-1 agreement {report.top1_agreement:.4f} < {min_agreement:g}")
    if problems:
        report.passed = False
        if raise_on_failure:
            raise ParityError(
                f"ONNX export {onnx_path} differs from the torch model on {report.images} "
                f"{split} images: {'; '.join(problems)}. Do not ship it: re-export "
                "(check opset and unsupported ops) or investigate the model.",
                report.as_dict(),
            )
    return report


def export_and_verify(
    model_file: Path,
    out_path: Path,
    dataset_dir: Path,
    *,
    opset: int = DEFAULT_OPSET,
    max_abs_diff: float = MAX_ABS_DIFF,
    min_agreement: float = MIN_AGREEMENT,
) -> tuple[Path, ParityReport, float]:
    """Export, then check parity on the validation split: (onnx path, parity report, export seconds)."""
    t0 = time.perf_counter()
    path = export_onnx(model_file, out_path, opset=opset)
    seconds = time.perf_counter() - t0
    return (
        path,
        check_parity(model_file, path, dataset_dir, max_abs_diff=max_abs_diff, min_agreement=min_agreement),
        round(seconds, 3),
    )


def _task_of(model_file: Path) -> str:
    import torch

    return str(torch.load(model_file, map_location="cpu", weights_only=True).get("task", "classification"))


def training_lineage(meta: dict[str, Any]) -> dict[str, str]:
    """What a trained model records about how it was made: the seed and the machine it trained on
    (CPU model, SIMD flags, torch's kernel level), for the model card's lineage."""
    out: dict[str, str] = {}
    seed = meta.get("seed", (meta.get("args") or {}).get("seed"))
    if seed is not None:
        out["train_seed"] = str(seed)
    for k, v in (meta.get("machine") or {}).items():
        out[f"train_{k}"] = str(v)
    return out


def export_model(
    model: Path,
    out_dir: Path,
    *,
    dataset_dir: Path,
    name: str = "edgeloop-inspection",
    opset: int = DEFAULT_OPSET,
    max_abs_diff: float = MAX_ABS_DIFF,
    min_agreement: float = MIN_AGREEMENT,
    lineage: dict[str, str] | None = None,
):
    """Training output (directory holding ``model.pt``, or the file) -> model directory with the fp32
    ``model.onnx`` and its card (metrics, parity, dataset version); a detector's ``model.pt`` is
    exported with its post-processing (:func:`~edgeloop.components.detection_export.package_detector`).
    Raises :class:`ParityError`.
    Returns the :class:`~edgeloop.core.model_card.ModelCard`."""
    from edgeloop.components.card import write_model_card
    from edgeloop.components.modeling import MODEL_FILE as MODEL_PT
    from edgeloop.core.preprocessing import PreprocessConfig

    model_file = Path(model) / MODEL_PT if Path(model).is_dir() else Path(model)
    out_dir = Path(out_dir)
    if _task_of(model_file) == "detection":
        from edgeloop.components.detection_export import package_detector

        return package_detector(model_file, dataset_dir, out_dir, name, lineage=lineage)
    path, parity, _ = export_and_verify(
        model_file,
        out_dir / MODEL_FILE,
        dataset_dir,
        opset=opset,
        max_abs_diff=max_abs_diff,
        min_agreement=min_agreement,
    )
    import torch

    meta = torch.load(model_file, map_location="cpu", weights_only=True)
    metrics = {k: float(v) for k, v in (meta.get("metrics") or {}).items() if isinstance(v, int | float)}
    metrics |= proportion_fields(
        "onnx_val_accuracy", round(parity.onnx_accuracy * parity.images), parity.images
    )
    lineage = {**training_lineage(meta), **(lineage or {})}
    return write_model_card(
        out_dir,
        name=name,
        architecture=meta["arch"],
        labels=list(meta["classes"]),
        preprocessing=PreprocessConfig(**meta["preprocess"]),
        precision="fp32",
        metrics=metrics,
        parity=parity.card_fields(),
        dataset_version=meta.get("dataset_version"),
        lineage=lineage,
    )
