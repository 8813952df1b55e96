"""Fixtures for the training-path unit tests: an in-memory blob store and a tiny built dataset."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from edgeloop.components.labels import ManifestRow, write_manifest
from edgeloop.core.model_card import sha256_bytes
from edgeloop.local.sample_data import CLASSES, render_tag


class MemoryStore:
    """The part of BlobStore that build_dataset uses."""

    def __init__(self):
        self.blobs: dict[str, bytes] = {}
        self.calls = 0

    def put(self, uri: str, data: bytes) -> None:
        self.blobs[uri] = data

    def download(self, uri: str) -> bytes:
        from edgeloop.core.blob import BlobNotFoundError, BlobUri

        self.calls += 1
        if uri not in self.blobs:
            raise BlobNotFoundError(BlobUri.parse(uri), "memory")
        return self.blobs[uri]


def png(seed: int, label: str, size: int = 32) -> bytes:
    buf = io.BytesIO()
    render_tag(seed, label, size=size).save(buf, format="PNG")
    return buf.getvalue()


def make_rows(store: MemoryStore, per_class: int, size: int = 32, start: int = 0) -> list[ManifestRow]:
    rows = []
    for ci, label in enumerate(CLASSES):
        for i in range(start, start + per_class):
            data = png(1000 * ci + i, label, size)
            sha = sha256_bytes(data)
            uri = f"az://images/test/{sha}.png"
            store.put(uri, data)
            rows.append(
                ManifestRow(
                    image=uri,
                    sha256=sha,
                    label=label,
                    annotator="t",
                    annotated_at="2026",
                    task_id=1000 * ci + i,
                    annotation_id=None,
                    n_annotations=1,
                    agreement=1.0,
                    metadata={"lighting": "normal"},
                )
            )
    return sorted(rows, key=lambda r: r.sha256)


@pytest.fixture
def memory_store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A built dataset of 4 classes x 12 images at 32 px (no servers)."""
    from edgeloop.components.dataset import build_dataset

    store = MemoryStore()
    tmp = tmp_path_factory.mktemp("tiny")
    manifest = write_manifest(make_rows(store, 12), tmp / "manifest.jsonl")
    build_dataset(
        None,
        manifest,
        tmp / "dataset",
        store=store,
        upload=False,
        log_mlflow=False,
        fractions=(0.5, 0.4, 0.1),
    )
    return tmp / "dataset"


@pytest.fixture
def rows_factory():
    """make_rows(store, per_class, size=32, start=0) -> manifest rows whose images are in ``store``."""
    return make_rows
