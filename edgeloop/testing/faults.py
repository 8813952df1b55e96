"""Fault injection for tests: SIGKILL a local-stack service (its whole process group) or any process
group, restart it, and keep a record of what each fault cost (``faults.json``)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from edgeloop.core.config import Settings
from edgeloop.core.processes import group_alive, reap


def kill_group(pgid: int, timeout_s: float = 10.0) -> None:
    """SIGKILL every process of the group and wait until none is left (a crash: no clean shutdown)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while group_alive(pgid):
        reap(pgid)
        if time.monotonic() > deadline:
            raise TimeoutError(f"process group {pgid} still alive {timeout_s:.0f} s after SIGKILL")
        time.sleep(0.02)
    reap(pgid)


def kill_service(settings: Settings, service: str) -> int:
    """SIGKILL a running local-stack service (as ``edgeloop stack up`` started it); returns its group."""
    pid = settings.stack_state().get("pids", {}).get(service)
    if not group_alive(pid):
        raise RuntimeError(f"{service} is not running in the stack at {settings.state_dir}")
    kill_group(int(pid))
    return int(pid)


def restart_service(settings: Settings, service: str) -> float:
    """Start a killed service again on its port and data; seconds until it is ready."""
    from edgeloop.local.stack import Stack

    t0 = time.monotonic()
    port = settings.stack_state().get("ports", {}).get(service)
    if port:
        _wait_port_released(settings.stack.host, int(port))
    Stack(settings).up((service,), progress=lambda message: None)
    return time.monotonic() - t0


def _wait_port_released(host: str, port: int, timeout_s: float = 30.0) -> None:
    """A killed server's listening socket can outlive it for a moment; the restart needs the port."""
    import socket

    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    return  # let the stack name the port and its owner
        time.sleep(0.2)


class FaultLog:
    """Figures per fault, written as JSON (one object per fault name) when :meth:`write` is called."""

    def __init__(self, path: Path):
        self.path = path
        self.faults: dict[str, dict[str, Any]] = {}

    def record(self, fault: str, **figures: Any) -> None:
        self.faults.setdefault(fault, {}).update(figures)

    def write(self) -> None:
        if not self.faults:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(self.path.read_text()) if self.path.exists() else {}
        faults = {**old.get("faults", {}), **self.faults}
        load = os.getloadavg()
        self.path.write_text(
            json.dumps(
                {
                    "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "cpus": os.cpu_count(),
                    "load_avg_1_5_15": [round(x, 2) for x in load],
                    "faults": dict(sorted(faults.items())),
                },
                indent=2,
            )
        )
