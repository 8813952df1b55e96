"""Fixtures for the serving integration tests: model directories and real servers on free ports."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeloop.serving.launcher import ServerHandle, running_server
from edgeloop.testing.models import build_tiny_model_dir

SIZE = 64


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Versions 1-3 of a tiny 64x64 classifier (different weights), plus a tampered copy of version 2."""
    root = tmp_path_factory.mktemp("serving-models")
    dirs = {
        v: build_tiny_model_dir(root / f"v{v}", size=SIZE, seed=int(v), version=v) for v in ("1", "2", "3")
    }
    tampered = root / "v2-tampered"
    shutil.copytree(dirs["2"], tampered)
    onnx_path = tampered / "model.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit
    onnx_path.write_bytes(bytes(data))
    dirs["tampered"] = tampered
    return dirs


@pytest.fixture(scope="module")
def server(model_dirs: dict[str, Path]) -> Iterator[ServerHandle]:
    """Versions 1 (champion) and 2 (candidate); admin on, loading from the test models' directory;
    2 MiB request limit; at most 32 images."""
    with running_server(
        [model_dirs["1"], f"{model_dirs['2']}#alias=candidate"],
        admin=True,
        extra_args=[
            *("--max_request_mb", "2", "--max_images", "32"),
            *("--admin_allow_source", str(model_dirs["1"].parent)),
        ],
    ) as srv:
        yield srv
