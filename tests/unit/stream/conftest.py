"""Fixtures for the stream processor's unit tests: a tiny model and short synthetic videos."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeloop.testing.models import build_model_dir

    return build_model_dir(
        tmp_path_factory.mktemp("stream-model"),
        size=64,
        architecture="tiny",
        labels=["ok", "scratch", "dent"],
        name="stream-test",
        version="1",
    )


@pytest.fixture(scope="session")
def short_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s, 15 fps, 160x120 H.264 in MP4: 30 frames."""
    from edgeloop.testing.media import make_video

    return make_video(tmp_path_factory.mktemp("stream-video") / "clip.mp4", seconds=2, fps=15)
