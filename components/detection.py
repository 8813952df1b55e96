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


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.GroupNorm(8, cout),
        nn.ReLU(inplace=True),
    )


class TinyBackbone(nn.Module):
    """Nine 3x3 convolutions with GroupNorm (the same statistics in training and at inference, whatever
    the batch) to strides 8 and 16, and a feature pyramid over both: a few hundred thousand weights
    that train from random in minutes on a CPU."""

    def __init__(self, width: int = 32, out_channels: int = 64):
        from torchvision.ops import FeaturePyramidNetwork

        super().__init__()
        w = width
        self.stride4 = nn.Sequential(_conv(3, w // 2, 2), _conv(w // 2, w, 2), _conv(w, w))
        self.stride8 = nn.Sequential(_conv(w, 2 * w, 2), _conv(2 * w, 2 * w), _conv(2 * w, 2 * w))
        self.stride16 = nn.Sequential(
            _conv(2 * w, 3 * w, 2), _conv(3 * w, 3 * w), _conv(3 * w, 3 * w, dilation=2)
        )
        self.fpn = FeaturePyramidNetwork([2 * w, 3 * w], out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from collections import OrderedDict

        c8 = self.stride8(self.stride4(x))
        return self.fpn(OrderedDict([("0", c8), ("1", self.stride16(c8))]))  # type: ignore[no-any-return]


def _tiny_fasterrcnn(num_classes: int, size: int, **identity: Any) -> nn.Module:
    """torchvision's Faster R-CNN on :class:`TinyBackbone`: anchors of 12-80 px from 1:4 to 4:1 (a
    scratch is long and thin), fewer proposals and sampled RoIs than the stock 800 px settings."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    backbone = TinyBackbone()
    return FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=AnchorGenerator(
            sizes=((12, 24), (40, 80)), aspect_ratios=((0.25, 0.5, 1.0, 2.0, 4.0),) * 2
        ),
        box_roi_pool=MultiScaleRoIAlign(featmap_names=["0", "1"], output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(backbone.out_channels * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, num_classes + 1),
        min_size=size,
        max_size=size,
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100,
        box_batch_size_per_image=128,
        box_detections_per_img=50,
        **identity,
    )


def build_detector(arch: str, num_classes: int, size: int, bn_momentum: float | None = 0.1) -> nn.Module:
    """A detector for ``num_classes`` defect classes (plus background), random weights.

    ``bn_momentum``: mobilenet_v3's BatchNorm momentum is 0.01, too slow for a short run (see
    :func:`edgeloop.components.modeling.build_model`); the tiny backbone has no BatchNorm."""
    from torchvision.models import detection

    if arch not in DETECTORS:
        raise ValueError(f"unknown detector {arch!r}; choose one of {', '.join(DETECTORS)}")
    identity = {"image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0]}
    common: dict[str, Any] = {"weights": None, "weights_backbone": None, "num_classes": num_classes + 1}
    if arch == "fasterrcnn_tiny_fpn":
        return _tiny_fasterrcnn(num_classes, size, **identity)
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
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> float:
    """One pass over ``loader`` (``scheduler`` stepped after every batch); the mean of the summed
    losses torchvision's detectors return."""
    model.train()
    total, steps = 0.0, 0
    for images, targets in loader:
        images = [x.to(device) for x in images]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
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
