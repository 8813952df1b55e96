"""The model card: what a served model is, how to feed it, and how to verify its files.

Written by the training path next to ``model.onnx`` as ``model_card.json``,
logged to MLflow with the model, read by :mod:`edgeloop.core.model_loader` before
anything opens the model.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from edgeloop.core.errors import IntegrityError as IntegrityError  # raised by verify(); kept importable here
from edgeloop.core.preprocessing import PreprocessConfig

MODEL_CARD_FILE = "model_card.json"
MODEL_FILE = "model.onnx"
INPUT_NAME = "images"
PROBS_OUTPUT = "probabilities"
EMBEDDING_OUTPUT = "embedding"
#: What a detection model's graph gives: boxes [N, 4] (x0, y0, x1, y1, model pixels), scores [N], labels [N].
DETECTION_OUTPUTS = ("boxes", "scores", "labels")
CLASSIFICATION, DETECTION = "classification", "detection"


class Precision(str, Enum):
    FP32 = "fp32"
    INT8 = "int8"


class ModelCard(BaseModel):
    name: str
    version: str | None = None
    task: str = CLASSIFICATION  # or DETECTION (labels are then the box classes, 1-based in the graph)
    architecture: str
    labels: list[str]
    preprocessing: PreprocessConfig = Field(default_factory=PreprocessConfig)
    input_name: str = INPUT_NAME
    outputs: list[str] = Field(default_factory=lambda: [PROBS_OUTPUT, EMBEDDING_OUTPUT])
    embedding_dim: int | None = None
    precision: Precision = Precision.FP32
    execution_provider: str = "CPUExecutionProvider"
    metrics: dict[str, float] = Field(default_factory=dict)
    parity: dict[str, float] = Field(default_factory=dict)
    precision_evidence: dict[str, Any] = Field(default_factory=dict)
    dataset_version: str | None = None
    lineage: dict[str, str] = Field(default_factory=dict)
    # top-1 agreement of the stream's FFmpeg-side resize with this preprocessing on the staging
    # images, and whether the stream may use it (edgeloop.stream.resize); None: not measured
    stream_resize: dict[str, Any] | None = None
    files: dict[str, str] = Field(default_factory=dict, description="relative path -> sha256")
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())

    def save(self, directory: Path) -> Path:
        path = Path(directory) / MODEL_CARD_FILE
        path.write_text(self.model_dump_json(indent=2))
        return path

    @classmethod
    def load(cls, directory: Path) -> ModelCard:
        path = Path(directory) / MODEL_CARD_FILE
        if not path.exists():
            raise FileNotFoundError(f"no {MODEL_CARD_FILE} in {directory}: a model directory needs its card")
        return cls.model_validate_json(path.read_text())

    def with_digests(self, directory: Path) -> ModelCard:
        """Return a copy whose ``files`` holds the sha256 of every file in ``directory`` but the card."""
        directory = Path(directory)
        files = {
            str(p.relative_to(directory)): sha256_file(p)
            for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != MODEL_CARD_FILE
        }
        return self.model_copy(update={"files": files})

    def verify(self, directory: Path) -> None:
        """Raise :class:`IntegrityError` unless ``directory`` passes the integrity rule of
        :func:`edgeloop.core.model_loader.check_integrity` (the one rule every consumer applies)."""
        from edgeloop.core.model_loader import check_integrity

        check_integrity(self, Path(directory))

    def digest(self) -> str:
        """The model's identity: sha256 of the card's canonical JSON, which lists every file's sha256.

        What the registry tag, the InferenceService annotation and approvals pin. It covers the
        card itself, so the label order, the preprocessing or the input name cannot change under
        a pinned digest any more than ``model.onnx`` can. Canonical: keys sorted, no whitespace,
        fields holding their default value left out (a field added to the card later, with a
        default, keeps every existing digest; so never change an existing field's default).
        """
        doc = self.model_dump(mode="json", exclude_defaults=True)
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


def normalize_digest(digest: str) -> str:
    """A model digest as 64 lowercase hex characters (an optional ``sha256:`` prefix dropped);
    ``ValueError`` for anything else."""
    d = digest.strip().lower().removeprefix("sha256:")
    if len(d) != 64 or any(c not in "0123456789abcdef" for c in d):
        raise ValueError(f"{digest!r} is not a sha256 digest (64 hex characters); use ModelCard.digest()")
    return d


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
