"""Fixtures for the serving unit tests: tiny ONNX model directories built without torch."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeloop.testing.models import build_tiny_model_dir


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {v: build_tiny_model_dir(root / f"v{v}", size=64, seed=int(v), version=v) for v in ("1", "2")}


@pytest.fixture
def tiny_copy(tmp_path: Path, tiny_dirs: dict[str, Path]) -> Path:
    """A private copy of version 1, safe to tamper with."""
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(tiny_dirs["1"], dst)
    return dst
