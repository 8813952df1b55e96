"""Run an exported model directory (``model.onnx`` + ``model_card.json``) for monitoring.

Used to build the reference profile and to embed served images whose payload record
carries no embedding. Preprocessing comes from the model card, the same definition
as training and serving.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from edgeloop.core.model_card import EMBEDDING_OUTPUT, MODEL_FILE, PROBS_OUTPUT
from edgeloop.core.preprocessing import Preprocess

if TYPE_CHECKING:
    import onnxruntime as ort

ImageLike = Image.Image | np.ndarray | str | Path


def to_rgb_array(image: ImageLike) -> np.ndarray:
    """Any image (path, PIL, uint8 HWC array) -> uint8 HWC RGB array."""
    if isinstance(image, str | Path):
        with Image.open(image) as im:
            return np.asarray(im.convert("RGB"))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return arr.astype(np.uint8, copy=False)


@dataclass
class Outputs:
    probabilities: np.ndarray  # [N, C]
    embeddings: np.ndarray  # [N, D]

    @property
    def labels_idx(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


class ModelRunner:
    """An ONNX Runtime session over a model directory, with the card's preprocessing.

    Opened by :func:`edgeloop.core.model_loader.open_model`: a model that fails the integrity
    rule (files changed after export, no digest for ``model.onnx``) raises
    :class:`~edgeloop.core.errors.IntegrityError` instead of being scanned with.
    """

    def __init__(self, model_dir: Path | str, threads: int = 1):
        from edgeloop.core.model_loader import OrtSettings, open_model

        self.model_dir = Path(model_dir)
        model = open_model(
            self.model_dir, OrtSettings(providers=["cpu"], intra_op_threads=threads, inter_op_threads=1)
        )
        self.card = model.card
        self.preprocess = Preprocess(self.card.preprocessing)
        self.session: ort.InferenceSession = model.session
        names = [o.name for o in self.session.get_outputs()]
        if PROBS_OUTPUT not in names:
            raise ValueError(
                f"{self.model_dir / MODEL_FILE} has no '{PROBS_OUTPUT}' output (outputs: {names}); "
                "export or import the model with edgeloop (it names the outputs)"
            )
        # A model without an embedding output (an imported one) is still monitored: image statistics,
        # confidence and predictions; its embeddings are empty ([N, 0]) and the embedding detectors are off.
        self.has_embedding = EMBEDDING_OUTPUT in names
        self._outputs = [PROBS_OUTPUT, EMBEDDING_OUTPUT] if self.has_embedding else [PROBS_OUTPUT]

    def run(self, images: Sequence[ImageLike] | Iterable[ImageLike], batch_size: int = 32) -> Outputs:
        probs: list[np.ndarray] = []
        embs: list[np.ndarray] = []
        batch: list[np.ndarray] = []

        def flush() -> None:
            if not batch:
                return
            x = self.preprocess.batch(batch)
            out = self.session.run(self._outputs, {self.card.input_name: x})
            probs.append(np.asarray(out[0], dtype=np.float32))
            e = out[1] if self.has_embedding else np.zeros((len(batch), 0))
            embs.append(np.asarray(e, dtype=np.float32).reshape(len(batch), -1))
            batch.clear()

        for img in images:
            batch.append(to_rgb_array(img))
            if len(batch) >= batch_size:
                flush()
        flush()
        if not probs:
            d = (self.card.embedding_dim or 0) if self.has_embedding else 0
            return Outputs(np.zeros((0, len(self.card.labels)), np.float32), np.zeros((0, d), np.float32))
        return Outputs(np.concatenate(probs), np.concatenate(embs))

    def predict_one(self, image: ImageLike) -> dict[str, Any]:
        out = self.run([image])
        p = out.probabilities[0]
        i = int(p.argmax())
        return {
            "label": self.card.labels[i],
            "score": float(p[i]),
            "probabilities": p.tolist(),
            "embedding": out.embeddings[0].tolist(),
        }
