"""Fixtures for the stream processor's unit tests: short synthetic videos (the tiny model is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def short_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s, 15 fps, 160x120 H.264 in MP4: 30 frames."""
    from edgeloop.testing.media import make_video

    return make_video(tmp_path_factory.mktemp("stream-video") / "clip.mp4", seconds=2, fps=15)
