"""Fixtures for the deploy tests: the packaged manifests and the vendored upstream CRD schemas."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
DIGEST = "3f" * 32
STORAGE = "https://edgeloopprod.blob.core.windows.net/models/edgeloop-inspection/7"

needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None and shutil.which("kustomize") is None, reason="needs kubectl (kustomize)"
)


@pytest.fixture(scope="session")
def schemas_dir() -> Path:
    from edgeloop.schemas import schemas_dir

    return schemas_dir()


@pytest.fixture(scope="session")
def rendered_overlays() -> dict[str, list[dict]]:
    """Every overlay rendered once per session with kubectl kustomize."""
    if shutil.which("kubectl") is None and shutil.which("kustomize") is None:
        pytest.skip("needs kubectl (kustomize)")
    from edgeloop.deploy.render import list_overlays, render_overlay

    return {name: render_overlay(name) for name in list_overlays()}
