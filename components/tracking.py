"""MLflow plumbing shared by the steps: one run per training path, resumed by id in each step."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeloop.core.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def git_commit(cwd: Path = ROOT) -> str:
    """The repository's HEAD commit, with ``-dirty`` when tracked files changed; ``unknown`` outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# The instruction-set features that decide which float kernels torch, oneDNN and ONNX Runtime pick:
# machines differing in them round differently (the same seeded run gave val accuracy 0.967 on one
# machine of our kind and 0.933 on another with other SIMD features).
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "sve",
)


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The machine a number was measured on: CPU model, its feature flags (all of them, sorted),
    the SIMD subset that decides float rounding (``cpu_isa``), and the logical CPU count."""
    model, flags = "", ""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = value.strip()
    names = sorted(set(flags.split()))
    return {
        "cpu_model": model or platform.processor() or platform.machine() or "unknown",
        "cpu_isa": ",".join(f for f in ISA_FLAGS if f in names) or "unknown",
        "cpu_flags": " ".join(names) or "unknown",
        "cpu_count": str(os.cpu_count() or 0),
        "machine": platform.machine(),
    }


def configure(tracking_uri: str, experiment: str) -> None:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)


@contextlib.contextmanager
def mlflow_run_at(
    tracking_uri: str,
    experiment: str,
    run_id: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> Iterator[Any]:
    """Resume ``run_id`` (or start a new run) and end it (not fail it) on exit, unless it was active."""
    import mlflow

    configure(tracking_uri, experiment)
    active = mlflow.active_run()
    if active is not None and (run_id is None or active.info.run_id == run_id):
        yield active
        return
    with mlflow.start_run(run_id=run_id, run_name=run_name if run_id is None else None, tags=tags) as run:
        yield run


@contextlib.contextmanager
def mlflow_run(
    settings: Settings,
    run_id: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> Iterator[Any]:
    with mlflow_run_at(
        settings.mlflow_tracking_uri(), settings.mlflow.experiment, run_id, run_name, tags
    ) as run:
        yield run


def start_run(settings: Settings, run_name: str | None = None, tags: dict[str, str] | None = None) -> str:
    """Create the training path's run (git commit tagged) and return its id; steps resume it by id."""
    base = {
        "edgeloop.step": "training-path",
        "git_commit": git_commit(),
        "mlflow.source.git.commit": git_commit(),
    }
    with mlflow_run(settings, None, run_name, {**base, **(tags or {})}) as run:
        return str(run.info.run_id)


def run_url(settings: Settings, run_id: str) -> str:
    import mlflow

    configure(settings.mlflow_tracking_uri(), settings.mlflow.experiment)
    run = mlflow.get_run(run_id)
    return (
        f"{settings.mlflow_tracking_uri().rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
    )
