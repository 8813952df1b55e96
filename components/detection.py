"""Detectors for defect boxes: torchvision models, the box dataset, one training epoch, predictions.

The model sees the pixels the shared :class:`~edgeloop.core.preprocessing.Preprocess` gives (resized
to ``size``, normalised), exactly as a classifier does: its own transform neither normalises again
(mean 0, std 1) nor resizes (``min_size = max_size = size``, where the architecture allows it).
Boxes travel in the pixels of the resized image; :func:`to_source` maps predictions back to the
source image's pixels. Class ids are 1-based (0 is torchvision's background), in the dataset's
class order.

Imports torch: load it lazily from anything a CLI or pipeline compiler imports.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeloop.components.coco_eval import Detection
from edgeloop.components.dataset import DatasetRow
from edgeloop.components.defaults import DETECTORS
from edgeloop.core.boxes import Box
from edgeloop.core.preprocessing import Preprocess, decode_image


def build_detector(arch: str, num_classes: int, size: int, bn_momentum: float | None = 0.1) -> nn.Module:
    """A torchvision detector for ``num_classes`` defect classes (plus background), random weights.

    ``bn_momentum``: mobilenet_v3's BatchNorm momentum is 0.01, too slow for a short run (see
    :func:`edgeloop.components.modeling.build_model`)."""
    from torchvision.models import detection

    if arch not in DETECTORS:
        raise ValueError(f"unknown detector {arch!r}; choose one of {', '.join(DETECTORS)}")
    identity = {"image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0]}
    common: dict[str, Any] = {"weights": None, "weights_backbone": None, "num_classes": num_classes + 1}
    if arch.startswith("fasterrcnn"):
        model = detection.fasterrcnn_mobilenet_v3_large_320_fpn(
            **common, min_size=size, max_size=size, box_detections_per_img=50, **identity
        )
    else:
        model = detection.ssdlite320_mobilenet_v3_large(**common, detections_per_img=50, **identity)
    if bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = bn_momentum
    return model


def scale_boxes(boxes: Sequence[Box], sx: float, sy: float) -> list[Box]:
    return [Box(b.label, b.x * sx, b.y * sy, b.w * sx, b.h * sy) for b in boxes]


def to_source(detections: Sequence[Detection], size: int, width: int, height: int) -> list[Detection]:
    """Detections in the ``size`` pixels the model saw -> in the source image's pixels."""
    return [Detection(scale_boxes([d.box], width / size, height / size)[0], d.score) for d in detections]


def target(boxes: Sequence[Box], classes: Sequence[str]) -> dict[str, torch.Tensor]:
    """torchvision's training target: ``boxes`` (x0, y0, x1, y1) float32 [N, 4], ``labels`` int64 [N]."""
    ids = {c: i for i, c in enumerate(classes, 1)}
    xyxy = [[b.x, b.y, b.x + b.w, b.y + b.h] for b in boxes]
    return {
        "boxes": torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor([ids[b.label] for b in boxes], dtype=torch.int64),
    }


class BoxDataset(torch.utils.data.Dataset):
    """Images of one split with their boxes, decoded and resized once (uint8, model size) and kept in
    memory; ``augment``: random horizontal and vertical flips (boxes flipped with them) and lighting."""

    def __init__(
        self,
        rows: Sequence[DatasetRow],
        directory: Path,
        classes: Sequence[str],
        preprocess: Preprocess,
        augment: bool = False,
        seed: int = 0,
    ):
        self.rows, self.classes, self.preprocess = list(rows), list(classes), preprocess
        size = preprocess.size
        self.images = [
            preprocess.resize(decode_image((Path(directory) / r.file).read_bytes())) for r in self.rows
        ]
        self.boxes = [
            scale_boxes(r.box_list(), size / (r.width or size), size / (r.height or size)) for r in self.rows
        ]
        self.augment = augment
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        hwc, boxes, size = self.images[i], self.boxes[i], self.preprocess.size
        if self.augment:
            if self.rng.random() < 0.5:
                hwc = hwc[:, ::-1]
                boxes = [Box(b.label, size - b.x - b.w, b.y, b.w, b.h) for b in boxes]
            if self.rng.random() < 0.5:
                hwc = hwc[::-1]
                boxes = [Box(b.label, b.x, size - b.y - b.h, b.w, b.h) for b in boxes]
            gain = self.rng.uniform(0.75, 1.25)
            hwc = np.clip(hwc.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        x = torch.from_numpy(self.preprocess.normalize(np.ascontiguousarray(hwc)))
        return x, target(boxes, self.classes)

    def truth(self) -> list[list[Box]]:
        """Every image's boxes in the model's pixels (unaugmented): what evaluation compares with."""
        return [list(b) for b in self.boxes]


def collate(batch: Iterable[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[list, list]:
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def train_one_epoch(
    model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, device: torch.device
) -> float:
    """One pass over ``loader``; the mean of the summed losses torchvision's detectors return."""
    model.train()
    total, steps = 0.0, 0
    for images, targets in loader:
        images = [x.to(device) for x in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        optimizer.step()
        total += float(loss.detach())  # type: ignore[union-attr]
        steps += 1
    return total / max(1, steps)


@torch.no_grad()
def predict(
    model: nn.Module, dataset: BoxDataset, device: torch.device, batch_size: int = 16
) -> list[list[Detection]]:
    """Every image's detections (model pixels), in dataset order."""
    model.eval()
    out: list[list[Detection]] = []
    for start in range(0, len(dataset), batch_size):
        xs = [dataset[i][0].to(device) for i in range(start, min(len(dataset), start + batch_size))]
        for o in model(xs):
            out.append(
                detections_of(
                    o["boxes"].cpu().numpy(),
                    o["scores"].cpu().numpy(),
                    o["labels"].cpu().numpy(),
                    dataset.classes,
                )
            )
    return out


def detections_of(
    xyxy: np.ndarray, scores: np.ndarray, labels: np.ndarray, classes: Sequence[str]
) -> list[Detection]:
    """Model outputs (x0, y0, x1, y1; score; 1-based label) -> :class:`Detection` list; what the
    exported ONNX model gives goes through here too."""
    return [
        Detection(Box(classes[int(k) - 1], float(x0), float(y0), float(x1 - x0), float(y1 - y0)), float(s))
        for (x0, y0, x1, y1), s, k in zip(xyxy, scores, labels, strict=True)
        if 1 <= int(k) <= len(classes)
    ]
