"""Container tests: the images `make images` builds, run with podman or docker the way the cluster runs them.

Skipped (with the reason) when no container engine works here; an engine that works but cannot build
the images fails the tests. podman reads the project's configuration (.tools/containers, written by
`make setup`): runc, ulimits this shell may set, storage under .tools/.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def engine() -> str:
    from edgeloop.pipelines.image_build import ImageBuildError, container_engine, use_project_engine_config

    use_project_engine_config(ROOT)
    try:
        return container_engine()
    except ImageBuildError as e:
        pytest.skip(f"no container engine: {e}")


@pytest.fixture(scope="session")
def images(engine: str) -> Callable[[str], str]:
    """name -> local image reference; builds it if missing (content-hash cache: a no-op when current)."""
    from edgeloop.pipelines.image_build import build_images

    built: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in built:
            built[name] = build_images(ROOT / "build" / "images", (name,), engine=engine)[0].image
        return built[name]

    return get
