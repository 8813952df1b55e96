"""Helpers for tests and demos: a tiny classifier with an embedding output, trained in seconds.

The real model comes from the training components; this one only needs to behave like
an exported edgeloop model (``images`` NCHW in, ``probabilities`` and ``embedding`` out,
a model card beside it) so the monitoring code can be exercised without them.
torch is imported inside the functions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeloop.core.model_card import MODEL_FILE, ModelCard
from edgeloop.core.preprocessing import Preprocess, PreprocessConfig


def labeled_images(directory: Path) -> tuple[list[Path], list[str]]:
    """``(paths, labels)`` of a dataset written by :func:`edgeloop.local.sample_data.generate_dataset`."""
    directory = Path(directory)
    rows = [
        json.loads(line) for line in (directory / "metadata.jsonl").read_text().splitlines() if line.strip()
    ]
    return [directory / r["file"] for r in rows], [r["label"] for r in rows]


def train_tiny_model(
    out_dir: Path,
    images: Sequence[Path],
    labels: Sequence[str],
    classes: Sequence[str],
    name: str = "edgeloop-inspection",
    version: str = "1",
    size: int = 64,
    epochs: int = 25,
    embedding_dim: int = 32,
    seed: int = 0,
) -> Path:
    """Train a small CNN on ``images`` and export it as an edgeloop model directory; returns ``out_dir``."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    pre = Preprocess(PreprocessConfig(size=size))
    x = torch.from_numpy(pre.batch([np.asarray(_open(p)) for p in images]))
    y = torch.tensor([list(classes).index(lbl) for lbl in labels])

    class TinyNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, embedding_dim, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.AdaptiveMaxPool2d(1),
                nn.Flatten(),
            )
            self.head = nn.Linear(embedding_dim, len(classes))

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            emb = self.features(images)
            return torch.softmax(self.head(emb), dim=1), emb

    net = TinyNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = nn.NLLLoss()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(32):
            probs, _ = net(x[idx])
            loss = loss_fn(torch.log(probs + 1e-8), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (x[:1],),
            str(out_dir / MODEL_FILE),
            input_names=["images"],
            output_names=["probabilities", "embedding"],
            dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}, "embedding": {0: "batch"}},
            dynamo=False,
        )
    with torch.no_grad():
        acc = float((net(x)[0].argmax(1) == y).float().mean())
    card = ModelCard(
        name=name,
        version=version,
        architecture="tiny-cnn",
        labels=list(classes),
        preprocessing=PreprocessConfig(size=size),
        embedding_dim=embedding_dim,
        metrics={"train_accuracy": acc},
    )
    card.with_digests(out_dir).save(out_dir)
    return out_dir


def _open(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


class MonitorAssets:
    """Seeded sample sets and a tiny model with its reference profile, built once under ``root``.

    * ``train`` (seed 7) - what the model was fitted on;
    * ``ref`` (seed 11, ``ref_per_class`` per class: 300 images by default) - held-out images the
      reference profile is built from (>= 200: a stable kNN index and MMD reference, and the
      out-of-distribution threshold cross-fitted on them);
    * ``same`` (seed 23) - in-distribution traffic;
    * ``shifted`` (seed 23, shifted variant) - traffic from a new site (darker, colour cast, blur);
    * ``fresh`` (seed 29, ``fresh_per_class``) and ``fresh_shifted`` (seed 777, shifted) - larger
      sets of images never seen in training or the reference, for the acceptance figures.
    """

    SETS = {
        "train": (7, False),
        "ref": (11, False),
        "same": (23, False),
        "shifted": (23, True),
        "fresh": (29, False),
        "fresh_shifted": (777, True),
    }

    def __init__(
        self,
        root: Path,
        per_class: int = 20,
        size: int = 64,
        ref_per_class: int = 75,
        fresh_per_class: int = 50,
    ):
        self.root = Path(root)
        self.per_class = per_class
        self.size = size
        self.ref_per_class = ref_per_class
        self.fresh_per_class = fresh_per_class

    def count(self, name: str) -> int:
        """Images per class in sample set ``name``."""
        if name == "ref":
            return self.ref_per_class
        return self.fresh_per_class if name.startswith("fresh") else self.per_class

    def dir(self, name: str) -> Path:
        return self.root / name

    def images(self, name: str) -> list[Path]:
        return labeled_images(self.dir(name))[0]

    def labels(self, name: str) -> list[str]:
        return labeled_images(self.dir(name))[1]

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    def build(self) -> MonitorAssets:
        from edgeloop.local.sample_data import CLASSES, generate_dataset
        from edgeloop.monitoring.profile import PROFILE_FILE, build_reference_profile

        for name, (seed, shifted) in self.SETS.items():
            if not (self.dir(name) / "metadata.jsonl").exists():
                generate_dataset(
                    self.dir(name), per_class=self.count(name), seed=seed, size=self.size, shifted=shifted
                )
        if not (self.model_dir / PROFILE_FILE).exists():
            paths, labels = labeled_images(self.dir("train"))
            train_tiny_model(self.model_dir, paths, labels, CLASSES, size=self.size)
            build_reference_profile(self.model_dir, self.images("ref"))
            card = ModelCard.load(self.model_dir)
            card.with_digests(self.model_dir).save(self.model_dir)
        return self
