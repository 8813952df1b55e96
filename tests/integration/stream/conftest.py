"""Fixtures for the stream processor's integration tests: own Mosquitto brokers, a subscriber, inputs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeloop.local.stack import free_port
from edgeloop.testing.mqtt import Subscriber


class Broker:
    """A Mosquitto of our own (own config, port, process group) that a test may stop and restart."""

    def __init__(self, directory: Path, port: int | None = None):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        import pwd

        user = pwd.getpwuid(os.getuid()).pw_name
        self.conf = self.dir / "mosquitto.conf"
        # persistence keeps the subscriber's session (and its queued QoS 1 messages) across a restart
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {self.dir}/\nuser {user}\nlog_dest stdout\n"
        )

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            pytest.skip("mosquitto is not installed (make setup installs it)")
        log = open(self.dir / "mosquitto.log", "ab")
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError((self.dir / "mosquitto.log").read_text()[-2000:]) from None
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "mosquitto")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator:
    """Brokers a test configures itself (write its mosquitto.conf in ``broker.dir``, then start)."""
    made: list[Broker] = []

    def make(name: str = "mosquitto") -> Broker:
        made.append(Broker(tmp_path / name))
        return made[-1]

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def subscribe():
    subs: list[Subscriber] = []

    def make(
        host: str, port: int, topic: str = "#", credentials: tuple[str, str] | None = None
    ) -> Subscriber:
        s = Subscriber(
            host,
            port,
            topic,
            client_id=f"test-sub-{len(subs)}-{os.getpid()}-{time.monotonic_ns()}",
            credentials=credentials,
        )
        subs.append(s)
        return s

    yield make
    for s in subs:
        s.close()


@pytest.fixture(scope="session")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from edgeloop.testing.media import make_video

    d = tmp_path_factory.mktemp("stream-videos")
    return {
        "short": make_video(d / "short.mp4", seconds=2, fps=15),  # 30 frames
        "long": make_video(d / "long.mp4", seconds=4, fps=15, seed=1),  # 60 frames
        "live": make_video(d / "live.ts", seconds=4, fps=15, seed=2, container_format="mpegts", gop=15),
    }
