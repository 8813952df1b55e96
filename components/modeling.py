"""Models, the trained-model file, and the data pipeline shared by training, export and evaluation.

Imports torch: load this module lazily (inside functions) from anything a CLI or
pipeline compiler imports.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from edgeloop.components.dataset import DatasetRow
from edgeloop.components.defaults import ARCHS
from edgeloop.core.preprocessing import Preprocess, PreprocessConfig, decode_image

MODEL_FILE = "model.pt"


def build_model(arch: str, num_classes: int, bn_momentum: float | None = 0.1) -> nn.Module:
    """A torchvision classifier with random weights (never downloads anything).

    ``bn_momentum`` overrides BatchNorm momentum: mobilenet_v3 ships 0.01, which after a
    short run leaves running statistics far from the data (eval-mode outputs collapse).
    """
    import torchvision

    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = bn_momentum
    return model


def load_initial_weights(model: nn.Module, path: Path) -> list[str]:
    """Initialise from a local checkpoint (our model.pt/checkpoint.pt or a bare state dict).

    Tensors whose shape differs (a classifier head for other classes) are skipped; returns their names.
    """
    import argparse
    from pathlib import PosixPath

    with torch.serialization.safe_globals([argparse.Namespace, PosixPath]):  # checkpoint.pt's args
        obj = torch.load(path, map_location="cpu", weights_only=True)
    state = obj
    if isinstance(obj, dict) and not _is_state(obj):
        state = obj.get("state_dict") or obj.get("model") or {}
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(usable))
    model.load_state_dict(usable, strict=False)
    return skipped


def _is_state(obj: dict) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    name, last = "", None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name, last = n, m
    if last is None:
        raise ValueError("the model has no Linear classifier layer to split off")
    return name, last


class ClassifierWithEmbedding(nn.Module):
    """``images -> (probabilities, embedding)``: the serving contract.

    The embedding is the input of the final Linear layer (penultimate features); the
    probabilities are the softmax of its output, computed inside the graph.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        body = copy.deepcopy(model)
        name, last = _last_linear(body)
        parent = body.get_submodule(name.rpartition(".")[0]) if "." in name else body
        setattr(parent, name.rpartition(".")[2], nn.Identity())
        self.body = body
        self.head = copy.deepcopy(last)
        self.embedding_dim = last.in_features

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.body(images)
        logits = self.head(embedding)
        return torch.softmax(logits, dim=1), embedding


def save_model_file(
    path: Path,
    model: nn.Module,
    arch: str,
    classes: Sequence[str],
    preprocess: PreprocessConfig,
    **extra: Any,
) -> Path:
    module = getattr(model, "module", model)  # unwrap DistributedDataParallel
    torch.save(
        {
            "arch": arch,
            "classes": list(classes),
            "preprocess": preprocess.model_dump(),
            "state_dict": module.state_dict(),
            **extra,
        },
        path,
    )
    return Path(path)


def load_model_file(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """A trained model in eval mode, plus its metadata (arch, classes, preprocess, metrics...)."""
    meta = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(meta["arch"], len(meta["classes"]), bn_momentum=None)
    model.load_state_dict(meta["state_dict"])
    model.eval()
    return model, {k: v for k, v in meta.items() if k != "state_dict"}


# -- data ---------------------------------------------------------------------------------------------


def augmenter():
    """Augmentations applied to the PIL image (already at model size) before the shared Preprocess."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomApply([v2.RandomRotation(10, fill=(28, 30, 33))], p=0.5),
            v2.ColorJitter(brightness=0.25, contrast=0.2, saturation=0.2, hue=0.02),
        ]
    )


class ImageDataset(torch.utils.data.Dataset):
    """Images of one split, decoded and resized once (uint8, model size) and kept in memory."""

    def __init__(
        self,
        rows: Sequence[DatasetRow],
        directory: Path,
        classes: Sequence[str],
        preprocess: Preprocess,
        augment: bool = False,
    ):
        self.rows = list(rows)
        self.preprocess = preprocess
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        self.targets = [self.class_to_idx[r.label] for r in self.rows]
        self.images = [
            preprocess.resize(decode_image((Path(directory) / r.file).read_bytes())) for r in self.rows
        ]
        self.augment = augmenter() if augment else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        hwc = self.images[i]
        if self.augment is not None:
            hwc = np.asarray(self.augment(Image.fromarray(hwc)), dtype=np.uint8)
        return torch.from_numpy(self.preprocess.normalize(hwc)), self.targets[i]

    def array(self) -> np.ndarray:
        """All images, preprocessed exactly like serving does: float32 NCHW."""
        if not self.images:
            return np.zeros((0, 3, self.preprocess.size, self.preprocess.size), np.float32)
        return np.stack([self.preprocess.normalize(x) for x in self.images])


def load_split(
    directory: Path,
    split: str,
    classes: Sequence[str],
    preprocess: Preprocess,
    augment: bool = False,
    limit: int | None = None,
) -> ImageDataset:
    from edgeloop.components.dataset import load_rows

    rows = load_rows(directory, split)
    if limit is not None:
        rows = rows[:limit]
    return ImageDataset(rows, directory, classes, preprocess, augment)
