"""Shared fixtures: the real local stack, started once per session on free ports in a temp state dir."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeloop.core.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu = _has_cuda() if any("gpu" in item.keywords for item in items) else False
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)
        if "browser" in parts:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.integration)
        if "gpu" in item.keywords and not gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings pointing at a real stack (Azurite, MLflow, Label Studio, Mosquitto) on free ports.

    Set EDGELOOP_TEST_STATE_DIR to reuse a stack you already started (it is then left running).
    """
    from edgeloop.local.stack import Stack

    reuse = os.environ.get("EDGELOOP_TEST_STATE_DIR")
    state_dir = Path(reuse) if reuse else tmp_path_factory.mktemp("edgeloop-state")
    settings = load_settings(state_dir=state_dir)
    stack = Stack(settings)
    stack.up(progress=lambda m: print(f"[stack] {m}"))
    yield settings
    if not reuse:
        stack.down(progress=lambda m: print(f"[stack] {m}"))


@pytest.fixture(scope="session")
def blob_store(stack_settings: Settings):
    from edgeloop.core.blob import BlobStore

    return BlobStore.from_settings(stack_settings)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded sample dataset (small), generated once per session."""
    from edgeloop.local.sample_data import generate_dataset

    out = tmp_path_factory.mktemp("sample")
    generate_dataset(out, per_class=24, seed=7, size=128)
    return out


@pytest.fixture(scope="session")
def mon_assets(tmp_path_factory):
    """Sample sets (train/ref/same/shifted) and a tiny model with its reference profile, once per session."""
    from edgeloop.testing.monitoring import MonitorAssets

    return MonitorAssets(tmp_path_factory.getbasetemp() / "monitoring-assets").build()
