"""The fault suite's own stack (killing its services must not disturb the other tests) and its record.

Every figure a fault test measures (seconds to recover, frames or items counted lost) goes to
``test-output/faults.json`` (or ``$EDGELOOP_FAULTS_JSON``): the README's table comes from there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeloop.core.config import Settings, load_settings
from edgeloop.testing.faults import FaultLog

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A stack (Azurite, MLflow, Label Studio, Mosquitto) of the fault tests alone."""
    from edgeloop.testing.stack import running_stack

    with running_stack(
        load_settings(state_dir=tmp_path_factory.mktemp("fault-stack")), "fault stack"
    ) as settings:
        yield settings


@pytest.fixture(scope="session")
def fault_log() -> Iterator[FaultLog]:
    log = FaultLog(Path(os.environ.get("EDGELOOP_FAULTS_JSON", ROOT / "test-output" / "faults.json")))
    yield log
    log.write()


@pytest.fixture
def subscribe() -> Iterator:
    from edgeloop.testing.mqtt import Subscriber

    subs: list[Subscriber] = []

    def make(host: str, port: int, topic: str, credentials: tuple[str, str] | None = None) -> Subscriber:
        subs.append(Subscriber(host, port, topic, f"fault-sub-{len(subs)}-{os.getpid()}", credentials))
        return subs[-1]

    yield make
    for s in subs:
        s.close()


@pytest.fixture(scope="session")
def fault_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from edgeloop.testing.media import make_video

    d = tmp_path_factory.mktemp("fault-videos")
    return {
        "long": make_video(d / "long.mp4", seconds=8, fps=15, seed=3),  # 120 frames, ~8 s in real time
        "short": make_video(d / "short.mp4", seconds=2, fps=15, seed=4),  # 30 frames
    }
