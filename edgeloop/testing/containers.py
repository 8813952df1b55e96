"""Running the project's images in tests: podman/docker calls with errors that show the engine's output."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def run(engine: str, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([engine, *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{engine} {' '.join(args[:3])} ... exit {r.returncode}:\n{r.stderr[-3000:]}")
    return r


@contextmanager
def container(engine: str, image: str, run_args: list[str], cmd: list[str]) -> Iterator[str]:
    """A detached container (removed at the end, logs shown if a test fails inside the block)."""
    name = f"edgeloop-test-{uuid.uuid4().hex[:8]}"
    run(engine, "run", "-d", "--name", name, *run_args, image, *cmd)
    try:
        yield name
    except BaseException:
        print(run(engine, "logs", name, check=False).stderr[-4000:])
        raise
    finally:
        run(engine, "rm", "-f", "-t", "0", name, check=False)


def readable_copy(src: Path, dst: Path, uid: int = 1000) -> Path:
    """Directory ``src`` copied to ``dst``, owned by ``uid`` and readable by it only (as a volume mounted
    for a pod with ``fsGroup``): what a container running as ``uid`` may read."""
    shutil.copytree(src, dst)
    for p in [dst, *dst.rglob("*")]:
        if os.geteuid() == 0:
            os.chown(p, uid, uid)
        p.chmod(0o750 if p.is_dir() else 0o440)
    return dst
