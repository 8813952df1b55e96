"""A bounded wait for kfp's DockerRunner: a step container that has ended must not leave the run waiting.

kfp's DockerRunner follows each step container's log stream until it ends, then asks for its exit
code, with no time limit. On podman's Docker-compatible API (podman 4.3) the log stream of a
container that exits can stay open after the container is gone, and the run then waits forever.
:class:`StallWatch` lists the run's containers (each carries the label :data:`RUN_LABEL`) every few
seconds; when none has been running for ``stall_s`` while the run is still in progress, it stops the
engine API that it waits on (the ``podman system service`` started for the run: the blocked call then
fails) and :func:`watched_engine` raises :class:`StalledRunError` naming the step container it waited for.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from edgeloop.core.errors import EdgeloopError
from edgeloop.pipelines.image_build import EngineApi, docker_api

RUN_LABEL = "io.edgeloop.local-run"
#: States in which a container still does (or is about to do) the step's work.
ACTIVE = {"created", "configured", "initialized", "running", "paused", "restarting", "stopping"}
#: No container of the run active for this long: the run is stalled. kfp starts the next step within
#: a second of the last one's end, and a step's container is running while it works.
STALL_S = 120.0


class StalledRunError(EdgeloopError):
    """kfp's DockerRunner kept waiting on a step container that had ended: the run was stopped."""


@dataclass
class Seen:
    name: str
    image: str
    state: str
    since: float  # when this state was first seen


Lister = Callable[[], list[tuple[str, str, str]]]


def engine_lister(engine: str, run_id: str) -> Lister:
    """(name, state, image) of every container of ``run_id``, from ``<engine> ps -a``."""

    def containers() -> list[tuple[str, str, str]]:
        r = subprocess.run(
            [
                engine,
                "ps",
                "-a",
                "--filter",
                f"label={RUN_LABEL}={run_id}",
                "--format",
                "{{.Names}}\t{{.State}}\t{{.Image}}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        rows = [line.split("\t") for line in r.stdout.splitlines() if line.strip()]
        return [(row[0], row[1].lower(), row[2] if len(row) > 2 else "") for row in rows if len(row) >= 2]

    return containers


@dataclass
class StallWatch:
    """Calls ``on_stall(reason)`` once when none of the run's containers has been active for ``stall_s``."""

    list_containers: Lister
    on_stall: Callable[[str], None]
    stall_s: float = STALL_S
    poll_s: float = 3.0
    clock: Callable[[], float] = time.monotonic
    reason: str | None = None
    seen: dict[str, Seen] = field(default_factory=dict)
    _last_active: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def check(self) -> str | None:
        """One look at the run's containers; the stall's reason once it has stalled."""
        now = self.clock()
        if self._last_active is None:
            self._last_active = now
        try:
            current = self.list_containers()
        except (OSError, subprocess.SubprocessError):
            return None  # the engine did not answer this time: no evidence either way
        gone = set(self.seen) - {name for name, _, _ in current}
        for name in gone:
            if self.seen[name].state != "removed":
                self.seen[name] = Seen(name, self.seen[name].image, "removed", now)
        for name, state, image in current:
            if name not in self.seen or self.seen[name].state != state:
                self.seen[name] = Seen(name, image, state, now)
            if state in ACTIVE:
                self._last_active = now
        if now - self._last_active < self.stall_s:
            return None
        last = max(self.seen.values(), key=lambda s: s.since, default=None)
        waited = f"no step container of this run has been running for {now - self._last_active:.0f} s"
        if last is None:
            return f"{waited}, and none ever started: the engine API did not start the first step"
        return (
            f"{waited}: kfp's DockerRunner still waits on step container {last.name} ({last.image}), "
            f"{last.state} {now - last.since:.0f} s ago; the engine's log stream of it did not end"
        )

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            reason = self.check()
            if reason:
                self.reason = reason
                self.on_stall(reason)
                return

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="edgeloop-stall-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_s + 60)


@dataclass
class WatchedApi:
    """What a DockerRunner needs: ``DOCKER_HOST`` and the labels that tie its containers to the watch."""

    host: str
    labels: dict[str, str]
    watch: StallWatch


@contextlib.contextmanager
def watched_engine(engine: str, stall_s: float = STALL_S, poll_s: float = 3.0) -> Iterator[WatchedApi]:
    """:func:`~edgeloop.pipelines.image_build.docker_api` with a :class:`StallWatch` over the containers
    started with ``labels``; a stall stops the engine API (ours only) and raises :class:`StalledRunError`."""
    run_id = uuid.uuid4().hex[:12]
    with docker_api(engine) as api:
        watch = StallWatch(engine_lister(engine, run_id), _stopper(api), stall_s=stall_s, poll_s=poll_s)
        watch.start()
        try:
            yield WatchedApi(api.host, {RUN_LABEL: run_id}, watch)
        except Exception as e:
            if watch.reason:
                raise StalledRunError(_advice(watch.reason, api)) from e
            raise
        finally:
            watch.stop()
        if watch.reason:
            raise StalledRunError(_advice(watch.reason, api))


def _stopper(api: EngineApi) -> Callable[[str], None]:
    def stop(reason: str) -> None:
        if api.close is not None:
            api.close()

    return stop


def _advice(reason: str, api: EngineApi) -> str:
    done = "stopped the engine API it waited on" if api.close else "the engine's own daemon was left running"
    return f"{reason}; {done}. The steps that finished kept their outputs: re-run the pipeline"
