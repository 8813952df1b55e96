"""Supervising child process groups: the local stack's services and the model servers tests and
staging evaluation start. Each runs in its own session (``start_new_session=True``) so that its
forked workers are stopped with it."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)


def group_members(pgid: int | None) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc."""
    if not pgid:
        return []
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def group_alive(pgid: int | None) -> bool:
    return bool(group_members(pgid))


def reap(pid: int) -> None:
    """Collect a finished child (no-op for a process that is not our child)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def terminate_group(pgid: int, grace_s: float, proc: subprocess.Popen | None = None) -> bool:
    """SIGTERM the group, wait up to ``grace_s`` for every member to exit, then SIGKILL what is left.

    Pass ``proc`` (the group leader's Popen) to keep its exit code: it is then reaped through it.
    Returns True when the group stopped on SIGTERM (a clean shutdown), False when it had to be killed.
    """

    def collect(timeout_s: float) -> None:
        if proc is None:
            reap(pgid)
            time.sleep(timeout_s)
            return
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass

    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        collect(0.1)
        if not group_alive(pgid):
            return True
    log.warning("process group %s ignored SIGTERM for %.0f s; sending SIGKILL", pgid, grace_s)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    collect(1.0)
    return False
