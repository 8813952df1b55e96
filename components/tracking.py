"""MLflow plumbing shared by the steps.

``edgeloop train`` has one run for its whole training path, resumed by id in each step. A pipeline run
has one MLflow run of its own (:func:`start_pipeline_run`, made by its first step, which passes the id
on as an output) with each step's run nested under it (MLflow's ``mlflow.parentRunId`` tag):

* steps that are never cached take the id as a parameter and open their run with :func:`step_run`;
* cached steps (dataset, training) cannot take it: a per-run value among their inputs would change their
  cache key on every run. They open a run of their own and hand its id on; the first uncached step
  after them nests those runs under the pipeline's with :func:`adopt`. A cache hit hands on the run of
  the pipeline run that computed it: it stays there, and the new pipeline run records it in a tag.
"""

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

STEP_TAG = "edgeloop.step"  # which step (or "pipeline", "training-path") a run records
PIPELINE_RUN_TAG = "edgeloop.pipeline_run"  # the KFP pipeline job name
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a run under this one
REUSED_PREFIX = "edgeloop.reused."  # + step: a run of an earlier pipeline run whose result this one reused
PIPELINE_STEP = "pipeline"


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
        STEP_TAG: "training-path",
        "git_commit": git_commit(),
        "mlflow.source.git.commit": git_commit(),
    }
    with mlflow_run(settings, None, run_name, {**base, **(tags or {})}) as run:
        return str(run.info.run_id)


def _client(settings: Settings):
    from mlflow import MlflowClient

    configure(settings.mlflow_tracking_uri(), settings.mlflow.experiment)
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri())


def start_pipeline_run(settings: Settings, pipeline_run: str, tags: dict[str, str] | None = None) -> str:
    """The MLflow run of one pipeline run (named after it; left RUNNING, each step's end updates it);
    returns its id. A retried first step finds the run it made before instead of making a second one."""
    import mlflow

    c = _client(settings)
    exp = mlflow.get_experiment_by_name(settings.mlflow.experiment)
    assert exp is not None  # configure() made it
    found = c.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{STEP_TAG}` = '{PIPELINE_STEP}' and tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run}'",
        max_results=1,
    )
    if found:
        return str(found[0].info.run_id)
    commit = git_commit()
    run = c.create_run(
        exp.experiment_id,
        run_name=pipeline_run,
        tags={
            STEP_TAG: PIPELINE_STEP,
            PIPELINE_RUN_TAG: pipeline_run,
            "git_commit": commit,
            "mlflow.source.git.commit": commit,
            **(tags or {}),
        },
    )
    return str(run.info.run_id)


@contextlib.contextmanager
def step_run(
    settings: Settings,
    parent_run_id: str,
    step: str,
    *,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    final: bool = False,
) -> Iterator[Any]:
    """A step's own run (the active run inside the block), nested under ``parent_run_id`` when one is
    given (else a top-level run). The parent shows RUNNING from the first step on; a step that raises
    ends it FAILED, and the pipeline's last step (``final``, or :func:`end_pipeline_run`) FINISHED."""
    c = _client(settings) if parent_run_id else None
    run_tags = {STEP_TAG: step, **({PARENT_TAG: parent_run_id} if parent_run_id else {}), **(tags or {})}
    if c is not None:
        c.update_run(parent_run_id, status="RUNNING")
    try:
        with mlflow_run(settings, None, run_name or step, run_tags) as run:
            yield run
    except BaseException:
        if c is not None:
            c.set_terminated(parent_run_id, status="FAILED")
        raise
    if c is not None and final:
        c.set_terminated(parent_run_id, status="FINISHED")


def end_pipeline_run(settings: Settings, parent_run_id: str) -> None:
    """The pipeline ends here without its last step (a rejected or unapproved version): FINISHED."""
    if parent_run_id:
        _client(settings).set_terminated(parent_run_id, status="FINISHED")


def adopt(settings: Settings, parent_run_id: str, step_runs: dict[str, str]) -> dict[str, str]:
    """Nest the runs of cached steps (step name -> run id) under the pipeline's run. A run that already
    has a parent (a cache hit: an earlier pipeline run computed it) stays there and is recorded on this
    pipeline's run as ``edgeloop.reused.<step>``. Returns step -> ``nested`` | ``reused``."""
    if not parent_run_id:
        return {}
    c = _client(settings)
    out: dict[str, str] = {}
    for step, run_id in step_runs.items():
        if not run_id or run_id == parent_run_id:
            continue
        parent = c.get_run(run_id).data.tags.get(PARENT_TAG)
        if not parent or parent == parent_run_id:
            c.set_tag(run_id, PARENT_TAG, parent_run_id)
            out[step] = "nested"
        else:
            record_reused(settings, parent_run_id, step, run_id)
            out[step] = "reused"
    return out


def record_reused(settings: Settings, parent_run_id: str, step: str, run_id: str) -> None:
    """Name on the pipeline's run the run of another pipeline run whose result this step reused (a cache
    hit, a model already registered): ``edgeloop.reused.<step>``."""
    if parent_run_id and run_id:
        _client(settings).set_tag(parent_run_id, f"{REUSED_PREFIX}{step}", run_id)


def run_url(settings: Settings, run_id: str) -> str:
    import mlflow

    configure(settings.mlflow_tracking_uri(), settings.mlflow.experiment)
    run = mlflow.get_run(run_id)
    return (
        f"{settings.mlflow_tracking_uri().rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
    )
