"""ONNX export of a detector with its post-processing in the graph, and the parity check against torch.

The graph takes one preprocessed image, float32 ``images`` [1, 3, S, S] (the shared Preprocess), and
gives ``boxes`` float32 [N, 4] (x0, y0, x1, y1 in the model's pixels), ``scores`` float32 [N] and
``labels`` int64 [N] (1-based classes), N varying per image: torchvision's own box decoding and NMS
are part of the graph, so a server runs nothing but ONNX Runtime. The model is refused
(:class:`~edgeloop.components.errors.ParityError`) unless ONNX Runtime gives the same detections
above the operating threshold as torch on the validation images, boxes within ``box_tol`` pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeloop.components.errors import ParityError
from edgeloop.core.model_card import DETECTION_OUTPUTS as OUTPUTS
from edgeloop.core.model_card import INPUT_NAME as INPUT


class _OneImage(nn.Module):
    """torchvision's list-of-images detector as a tensor-in, tensors-out module."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model([x[0]])[0]
        return out["boxes"], out["scores"], out["labels"]


def export_detector(model: nn.Module, size: int, out_path: Path, opset: int = 17) -> Path:
    import warnings

    wrapper = _OneImage(model.eval()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on torchvision's data-dependent shapes
        torch.onnx.export(
            wrapper,
            (torch.zeros(1, 3, size, size),),
            str(out_path),
            dynamo=False,  # the dynamo exporter does not take torchvision's detection ops here
            opset_version=opset,
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            dynamic_axes={name: {0: "detections"} for name in OUTPUTS},
        )
    return Path(out_path)


def run_detector(session: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One preprocessed image (float32 CHW) through the ONNX graph: boxes, scores, labels."""
    boxes, scores, labels = session.run(list(OUTPUTS), {INPUT: x[None].astype(np.float32, copy=False)})
    return boxes, scores, labels


@dataclass
class DetectionParity:
    images: int
    matching_images: int  # same detections above the threshold: count, labels, boxes within box_tol
    max_box_diff: float  # pixels, over the detections both give above the threshold
    max_score_diff: float
    score_threshold: float
    box_tol: float
    mismatches: list[dict[str, Any]] = field(default_factory=list)  # the first few, for the report

    @property
    def agreement(self) -> float:
        return self.matching_images / self.images if self.images else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "agreement": self.agreement}


def check_detection_parity(
    model: nn.Module,
    session: Any,
    images: list[torch.Tensor],
    score_threshold: float = 0.5,
    box_tol: float = 1.0,
    min_agreement: float = 1.0,
) -> DetectionParity:
    """Torch vs ONNX Runtime on ``images`` (preprocessed CHW tensors); raises ParityError below
    ``min_agreement``."""
    model.eval()
    report = DetectionParity(len(images), 0, 0.0, 0.0, score_threshold, box_tol)
    for i, x in enumerate(images):
        with torch.no_grad():
            t = model([x])[0]
        keep = t["scores"].numpy() >= score_threshold
        tb, ts, tl = t["boxes"].numpy()[keep], t["scores"].numpy()[keep], t["labels"].numpy()[keep]
        ob, os_, ol = run_detector(session, x.numpy())
        okeep = os_ >= score_threshold
        ob, os_, ol = ob[okeep], os_[okeep], ol[okeep]
        same = len(tb) == len(ob) and bool(np.array_equal(tl, ol))
        if same and len(tb):
            box_diff, score_diff = float(np.abs(tb - ob).max()), float(np.abs(ts - os_).max())
            report.max_box_diff = max(report.max_box_diff, box_diff)
            report.max_score_diff = max(report.max_score_diff, score_diff)
            same = box_diff <= box_tol
        if same:
            report.matching_images += 1
        elif len(report.mismatches) < 5:
            report.mismatches.append({"image": i, "torch": int(len(tb)), "onnx": int(len(ob))})
    if report.agreement < min_agreement:
        raise ParityError(
            f"the ONNX detector disagrees with torch on {report.images - report.matching_images} of "
            f"{report.images} images (detections above {score_threshold}, boxes within {box_tol} px; "
            f"first: {report.mismatches[:3]}): not shipped",
            report.as_dict(),
        )
    return report


def package_detector(
    model_file: Path,
    dataset_dir: Path,
    out_dir: Path,
    name: str,
    score_threshold: float = 0.5,
    box_tol: float = 1.0,
    lineage: dict[str, str] | None = None,
) -> Any:
    """``model.pt`` of a detection run -> ``out_dir`` with ``model.onnx`` and its card (task detection,
    outputs boxes/scores/labels, the run's metrics, the parity on the validation images, every file's
    sha256); raises ParityError when the graph is not faithful."""
    import onnxruntime as ort

    from edgeloop.components.dataset import load_rows
    from edgeloop.components.detection import BoxDataset, build_detector
    from edgeloop.core.model_card import DETECTION, MODEL_FILE
    from edgeloop.core.preprocessing import Preprocess, PreprocessConfig

    meta = torch.load(model_file, map_location="cpu", weights_only=True)
    if meta.get("task") != DETECTION:
        raise ValueError(f"{model_file} is not a detection model (task {meta.get('task')!r})")
    preprocess = PreprocessConfig(**meta["preprocess"])
    model = build_detector(meta["arch"], len(meta["classes"]), preprocess.size, bn_momentum=None)
    model.load_state_dict(meta["state_dict"])
    model.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = export_detector(model, preprocess.size, out_dir / MODEL_FILE)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    val = BoxDataset(load_rows(dataset_dir, "val"), dataset_dir, meta["classes"], Preprocess(preprocess))
    parity = check_detection_parity(
        model, session, [val[i][0] for i in range(len(val))], score_threshold, box_tol
    )
    parity_record = {
        "agreement": parity.agreement,
        "max_box_diff": parity.max_box_diff,
        "max_score_diff": parity.max_score_diff,
        "images": float(parity.images),
        "score_threshold": score_threshold,
    }
    card = detector_card(
        name,
        meta["arch"],
        meta["classes"],
        preprocess,
        meta.get("metrics"),
        parity_record,
        meta.get("dataset_version"),
    )
    from edgeloop.components.export import training_lineage

    card = card.model_copy(update={"lineage": {**training_lineage(meta), **(lineage or {})}})
    return write_card(card, out_dir)


def detector_card(
    name: str,
    arch: str,
    classes: Sequence[str],
    preprocess: Any,
    metrics: dict[str, float] | None = None,
    parity: dict[str, float] | None = None,
    dataset_version: str | None = None,
) -> Any:
    """The model card of an exported detector (task detection, outputs boxes / scores / labels)."""
    from edgeloop.core.model_card import DETECTION, DETECTION_OUTPUTS, ModelCard

    return ModelCard(
        name=name,
        task=DETECTION,
        architecture=arch,
        labels=list(classes),
        preprocessing=preprocess,
        input_name=INPUT,
        outputs=list(DETECTION_OUTPUTS),
        # an interval over one image is not a number: left out, not written as null
        metrics={k: float(v) for k, v in (metrics or {}).items() if np.isfinite(v)},
        parity=parity or {},
        dataset_version=dataset_version,
    )


def write_card(card: Any, out_dir: Path) -> Any:
    """``card`` with the sha256 of every file in ``out_dir``, saved there."""
    card = card.with_digests(out_dir)
    card.save(out_dir)
    return card
