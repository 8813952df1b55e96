"""Compile, run locally (KFP SubprocessRunner), submit to Kubeflow, schedule recurring runs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.core.errors import EdgeloopError

if TYPE_CHECKING:
    from edgeloop.core.config import Settings

ROOT = Path(__file__).resolve().parent.parent
#: The compiled pipeline checked into the repository (golden-tested); `make compile` refreshes it.
COMPILED = Path(__file__).resolve().parent / "compiled" / "training_pipeline.yaml"
DEFAULT_OUTPUT = Path("training_pipeline.yaml")
# Parameters a local run sets on top of the pipeline's (cluster-oriented) defaults.
LOCAL_DEFAULTS: dict[str, Any] = {"image_builder": "local", "deploy_target": "gitops"}
#: Set for the steps of a local run only: what lets ``auto_approve`` act (a Kubeflow run never has it).
LOCAL_RUNNER_ENV = "EDGELOOP_LOCAL_RUNNER"


class PipelineRunError(EdgeloopError):
    """A pipeline step failed; the message names the step and the cause."""


def compile_pipeline(out: Path | None = None, images: Path | None = None) -> Path:
    """Compile to KFP IR YAML; with ``images`` (``make images``' index.json) every image is pinned by digest."""
    from kfp import compiler

    from edgeloop.pipelines.training_pipeline import training_pipeline

    out = Path(out) if out else DEFAULT_OUTPUT
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(training_pipeline, str(out))
    if images is not None:
        from edgeloop.pipelines.image_build import read_index

        out.write_text(pin_images(out.read_text(), read_index(images)))
    return out


_IMAGE_LINE = re.compile(r"^(\s*image: )(\S+)$", re.MULTILINE)


def pin_images(text: str, index: dict[str, dict]) -> str:
    """Replace each ``image: <registry>/<name>:<tag>`` with ``<registry>/<name>@<digest of make images>``."""

    def pin(m: re.Match) -> str:
        ref = m.group(2)
        repo = ref.partition("@")[0].rpartition(":")[0] if "@" not in ref else ref.partition("@")[0]
        name = repo.rpartition("/")[2]
        if name not in index:
            raise PipelineRunError(
                f"image {ref} of the pipeline is not in the images index ({sorted(index)}): run `make images`"
            )
        return f"{m.group(1)}{repo}@{index[name]['digest']}"

    return _IMAGE_LINE.sub(pin, text)


def git_commit() -> str:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        sha = r.stdout.strip() if r.returncode == 0 else ""
        if sha:
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "unknown"


# -- local runs ------------------------------------------------------------------------------------------------------
@dataclass
class TaskResult:
    name: str
    state: str  # succeeded | failed | cached | skipped
    outputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class LocalOutcome:
    run_name: str
    run_dir: str
    seconds: float
    succeeded: bool
    tasks: dict[str, TaskResult]
    version: str | None = None
    gate_passed: bool | None = None
    decision: str | None = None
    deployed_to: str | None = None
    failed_step: str | None = None
    cause: str | None = None
    model: str = ""
    tracking_uri: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [
            f"pipeline run {self.run_name}: {'succeeded' if self.succeeded else 'FAILED'} "
            f"in {self.seconds:.1f} s (outputs under {self.run_dir})"
        ]
        if self.failed_step:
            lines.append(f"  failed step: {self.failed_step}: {self.cause}")
        if self.version:
            lines.append(
                f"  registered {self.model} version {self.version}: gate "
                f"{'passed' if self.gate_passed else 'FAILED'}"
            )
        if self.decision:
            lines.append(f"  decision: {self.decision}")
        if self.deployed_to:
            lines.append(f"  deployed to {self.deployed_to}; alias champion -> version {self.version}")
        elif self.succeeded and self.version:
            lines.append("  not deployed (rejected or waiting ended); see the version's tags in MLflow")
        if self.tracking_uri:
            lines.append(f"  MLflow: {self.tracking_uri}/#/models/{self.model}")
        return "\n".join(lines)


class _Tee(io.TextIOBase):
    """Copy of what the local runner prints, so a failure's cause can be named."""

    def __init__(self, stream: Any):
        self.stream, self.buf = stream, io.StringIO()

    def write(self, s: str) -> int:
        self.buf.write(s)
        return self.stream.write(s)

    def flush(self) -> None:
        self.stream.flush()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


NO_CAUSE = "see the step's log above"


def _failure_cause(log_text: str, step: str) -> str:
    """The last exception line printed by the failed step."""
    text = _ANSI.sub("", log_text)
    start = text.rfind(f"Executing task '{step}'")
    chunk = text[start:] if start >= 0 else text
    exc = [
        ln.strip()
        for ln in chunk.splitlines()
        if re.match(r"^\s*([A-Za-z_][\w.]*(Error|Exception|Failed|Rejected|Interrupt)|[\w.]+Error)\b.*:", ln)
    ]
    return exc[-1] if exc else NO_CAUSE


def _read_task_outputs(task_dir: Path) -> dict[str, Any]:
    eo = task_dir / "executor_output.json"
    if not eo.exists():
        return {}
    data = json.loads(eo.read_text())
    out = dict(data.get("parameterValues", {}))
    for name, arts in (data.get("artifacts") or {}).items():
        a = (arts.get("artifacts") or [{}])[0]
        out[name] = {"uri": a.get("uri"), "metadata": a.get("metadata", {})}
    return out


@contextlib.contextmanager
def scoped_environ(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set inside the block, as it was after it (kfp.local's steps inherit
    this process's environment)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def local_pipeline() -> Any:
    """The training pipeline as this machine runs it: built again with ``LOCAL_RUNNER_ENV`` set, so
    the step policies of :mod:`edgeloop.pipelines.cluster` are the local ones (kfp.local honours
    retries: one quick retry, not the cluster's 30 + 60 + 120 s back-off)."""
    from kfp import dsl

    from edgeloop.pipelines.training_pipeline import PIPELINE_NAME, training_pipeline

    with scoped_environ({LOCAL_RUNNER_ENV: "1"}):
        return dsl.pipeline(name=PIPELINE_NAME)(training_pipeline.pipeline_func)


def run_local(
    settings: Settings,
    params: dict[str, Any] | None = None,
    *,
    pipeline_root: Path | None = None,
    enable_caching: bool = True,
    log_stream: Any = None,
    runner: Any = None,
) -> LocalOutcome:
    """Run the pipeline on this machine with ``kfp.local.SubprocessRunner(use_venv=False)``.

    The steps run as subprocesses of this venv and inherit this process's environment; the
    settings reach them through ``EDGELOOP_STATE_DIR`` (and ``EDGELOOP_CONFIG`` if a config file
    was given), so they talk to the same local stack. ``runner``: another kfp local runner
    (:func:`run_in_containers` passes a ``DockerRunner``).
    """
    from kfp import local

    from edgeloop.pipelines.training_pipeline import PIPELINE_NAME

    root = Path(pipeline_root) if pipeline_root else settings.state_dir / "kfp-local"
    root.mkdir(parents=True, exist_ok=True)
    args = {**LOCAL_DEFAULTS, "git_commit": git_commit(), **(params or {})}
    env = {"EDGELOOP_STATE_DIR": str(settings.state_dir), LOCAL_RUNNER_ENV: "1"}
    if settings.config_file:
        env["EDGELOOP_CONFIG"] = str(settings.config_file)
    if settings.mlflow.registered_model != type(settings.mlflow)().registered_model:
        env["EDGELOOP_MLFLOW__REGISTERED_MODEL"] = settings.mlflow.registered_model
    if settings.mlflow.experiment != type(settings.mlflow)().experiment:
        env["EDGELOOP_MLFLOW__EXPERIMENT"] = settings.mlflow.experiment
    if settings.labelstudio.project_title != type(settings.labelstudio)().project_title:
        env["EDGELOOP_LABELSTUDIO__PROJECT_TITLE"] = settings.labelstudio.project_title
    before = {p.name for p in root.glob(f"{PIPELINE_NAME}-*")}
    tee = _Tee(log_stream or sys.stdout)
    error: BaseException | None = None
    with scoped_environ(env):
        pipeline = local_pipeline()
        local.init(
            runner=runner or local.SubprocessRunner(use_venv=False),
            pipeline_root=str(root),
            enable_caching=enable_caching,
            raise_on_error=True,
        )
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stdout(tee):  # type: ignore[type-var]
                pipeline(**args)
        except (RuntimeError, ValueError) as e:  # ValueError: a step's output is missing (see below)
            error = e
    seconds = time.perf_counter() - t0
    new = sorted(p for p in root.glob(f"{PIPELINE_NAME}-*") if p.name not in before)
    run_dir = new[-1] if new else root
    log_text = _ANSI.sub("", tee.buf.getvalue())
    tasks: dict[str, TaskResult] = {}
    for m in re.finditer(r"Task '([\w-]+)' finished with status (\w+)", log_text):
        tasks[m.group(1)] = TaskResult(m.group(1), m.group(2).lower())
    for m in re.finditer(r"Task '?([\w-]+)'? cache hit", log_text):
        tasks.setdefault(m.group(1), TaskResult(m.group(1), "cached")).state = "cached"
    for d in run_dir.iterdir() if run_dir.is_dir() else []:
        if d.is_dir():
            tasks.setdefault(d.name, TaskResult(d.name, "succeeded")).outputs = _read_task_outputs(d)
    if runner is not None:
        # kfp's DockerRunner runs each container with auto_remove and reads its exit code afterwards;
        # when the container is gone by then (podman removes it at once) kfp assumes exit 0. A step
        # that failed that way left no executor output: it failed.
        for name, t in tasks.items():
            if t.state == "success" and not (run_dir / name / "executor_output.json").exists():
                t.state = "failure"
    reg = tasks.get("register-model")
    outcome = LocalOutcome(
        run_name=run_dir.name,
        run_dir=str(run_dir),
        seconds=round(seconds, 2),
        succeeded=error is None and not any(t.state == "failure" for t in tasks.values()),
        tasks=tasks,
        model=settings.mlflow.registered_model,
    )
    with contextlib.suppress(Exception):
        outcome.tracking_uri = settings.mlflow_tracking_uri()
    if reg and reg.outputs:
        outcome.version = reg.outputs.get("version")
        outcome.gate_passed = reg.outputs.get("gate_passed")
    appr = tasks.get("await-approval")
    if appr and appr.outputs:
        outcome.decision = appr.outputs.get("Output")
    for name, t in tasks.items():
        if name.startswith("deploy-model") and t.outputs.get("Output"):
            outcome.deployed_to = t.outputs["Output"]
    if not outcome.succeeded:
        message = _ANSI.sub("", str(error or ""))
        chain = re.findall(r"'([\w-]+)'", message.partition("Inner task failed:")[2])
        chain += re.findall(r"but task '([\w-]+)' not found", message)
        failed = [n for n, t in tasks.items() if t.state == "failure"]
        outcome.failed_step = chain[0] if chain else (failed[0] if failed else None)
        cause = _failure_cause(log_text, outcome.failed_step) if outcome.failed_step else ""
        if cause in ("", NO_CAUSE) and message.strip():
            cause = message.strip().splitlines()[-1]  # kfp's own error (e.g. a step's missing output)
        outcome.cause = cause or NO_CAUSE
    return outcome


# -- every step in its image (kfp DockerRunner) -----------------------------------------------------------------------
#: The parameters a container run sets: the approval is signed on this machine (the steps' settings
#: hold no signing key, as on a cluster), so the wait polls often.
CONTAINER_DEFAULTS: dict[str, Any] = {"approval_poll_s": 2.0}


def container_env(settings: Settings) -> dict[str, str]:
    """What the steps get on a cluster from the ``edgeloop-*`` Secrets and the trusted-approvers ConfigMap
    (:mod:`edgeloop.pipelines.cluster`), filled in from this machine's settings (the local stack's)."""
    from edgeloop.pipelines import attestation

    env = {
        "EDGELOOP_BLOB__CONNECTION_STRING": settings.blob_connection_string(),
        "EDGELOOP_MLFLOW__TRACKING_URI": settings.mlflow_tracking_uri(),
        "EDGELOOP_LABELSTUDIO__URL": settings.labelstudio_url(),
        "EDGELOOP_LABELSTUDIO__API_KEY": settings.labelstudio_api_key(),
        "EDGELOOP_MLFLOW__EXPERIMENT": settings.mlflow.experiment,
        "EDGELOOP_MLFLOW__REGISTERED_MODEL": settings.mlflow.registered_model,
        "EDGELOOP_LABELSTUDIO__PROJECT_TITLE": settings.labelstudio.project_title,
    }
    credentials = settings.mlflow_credentials()
    if credentials:
        env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"] = credentials
    trusted = attestation.trusted_keys(settings)
    if trusted:
        keys = {owner: attestation.public_key_text(k) for owner, k in trusted.items()}
        env["EDGELOOP_APPROVALS__TRUSTED_KEYS"] = json.dumps(keys, sort_keys=True)
    return env


def _approve_when_registered(
    settings: Settings, root: Path, before: set[str], stop: threading.Event, say: Callable[[str], None]
) -> None:
    """``--auto-approve`` for a container run: once register-model of the new run has passed the gate,
    sign an approval with the local stack's auto-approver key here (mode ``auto``), as the step would
    with the subprocess runner; await-approval in its container then finds it."""
    from edgeloop.pipelines import registry
    from edgeloop.pipelines.training_pipeline import PIPELINE_NAME

    while not stop.wait(1.0):
        runs = sorted(p for p in root.glob(f"{PIPELINE_NAME}-*") if p.name not in before)
        outputs = _read_task_outputs(runs[-1] / "register-model") if runs else {}
        if not outputs.get("version"):
            continue
        if outputs.get("gate_passed") is True:
            version = str(outputs["version"])
            try:
                registry.record_decision(
                    settings.as_mlflow_role("auto"),
                    version,
                    registry.APPROVED,
                    note=f"auto-approved by the local container runner ({runs[-1].name}): --auto-approve",
                    mode="auto",
                )
            except Exception as e:  # the run must not wait a day in silence: say it and how to go on
                say(
                    f"auto-approval of version {version} failed ({type(e).__name__}: {e}); await-approval keeps "
                    f"waiting: approve it with `edgeloop approve {settings.mlflow.registered_model} {version}` "
                    "or reject it with `edgeloop reject ...`, else the run ends at approval_timeout_s"
                )
                return
            say(f"auto-approved version {version} (signed here with the local auto-approver key)")
        return


def run_in_containers(
    settings: Settings,
    params: dict[str, Any] | None = None,
    *,
    images: Path = ROOT / "build" / "images",
    pipeline_root: Path | None = None,
    enable_caching: bool = False,
    log_stream: Any = None,
) -> LocalOutcome:
    """Run the pipeline on this machine with every step in its image: ``kfp.local.DockerRunner`` on docker
    or on podman's Docker-compatible API (``podman system service``, started for the run).

    The images are built first where their content changed (as ``make images`` does, without the OCI
    archives) and tagged with the references the pipeline names. Each step runs as user 1000 with no capabilities on the host
    network (the local stack listens on 127.0.0.1); its settings come in as the environment a cluster's
    Secrets give it (:func:`container_env`): DockerRunner ignores kfp-kubernetes' Secret references.
    The pipeline root is mounted at the same path (world-writable, for user 1000). ``auto_approve``
    is signed here, not in a step: the steps hold no signing key, as on a cluster. A run whose step
    containers have all ended while kfp still waits is stopped with the reason
    (:mod:`edgeloop.pipelines.container_watch`). No caching by
    default: kfp's local cache keys a step by its image's name, not its content, and keeps a step
    DockerRunner wrongly reported as succeeded (see :func:`run_local`).
    """
    from kfp import local

    from edgeloop.pipelines import container_watch, image_build, steps
    from edgeloop.pipelines.cluster import RUN_AS_USER
    from edgeloop.pipelines.training_pipeline import PIPELINE_NAME

    image_build.use_project_engine_config()
    engine = image_build.container_engine()
    wanted = ("edgeloop-pipeline", "edgeloop-training")
    # no OCI archives: these images only run here (`make images` writes the handoff)
    built = {
        b.name: b
        for b in image_build.build_images(Path(images), wanted, engine=engine, log=print, save=False)
    }
    for name, b in built.items():
        if b.status == "skipped":
            raise PipelineRunError(f"{name} could not be built here: {b.note}")
    for ref in (steps.PIPELINE_IMAGE, steps.TRAINING_IMAGE):
        name = ref.rpartition("/")[2].partition(":")[0]
        image_build.tag_image(engine, built[name].image, ref)
    args = {**CONTAINER_DEFAULTS, **(params or {})}
    auto_approve = bool(args.pop("auto_approve", False))
    args["auto_approve"] = False
    root = Path(pipeline_root) if pipeline_root else settings.state_dir / "kfp-containers"
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o777)
    args.setdefault("gitops_dir", str(root / "gitops"))
    env = container_env(settings)
    before = {p.name for p in root.glob(f"{PIPELINE_NAME}-*")}
    stop = threading.Event()
    watcher = threading.Thread(
        target=_approve_when_registered, args=(settings, root, before, stop, print), daemon=True
    )
    with container_watch.watched_engine(engine) as api, scoped_environ({"DOCKER_HOST": api.host}):
        runner = local.DockerRunner(
            network_mode="host",
            user=f"{RUN_AS_USER}:{RUN_AS_USER}",
            environment=env,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            labels=api.labels,
        )
        if auto_approve:
            watcher.start()
        try:
            return run_local(
                settings,
                args,
                pipeline_root=root,
                enable_caching=enable_caching,
                log_stream=log_stream,
                runner=runner,
            )
        finally:
            stop.set()


# -- Kubeflow --------------------------------------------------------------------------------------------------------
def _client(host: str, namespace: str | None = None):
    import kfp

    return kfp.Client(host=host, namespace=namespace)


#: The Kubernetes service account every step of a submitted or scheduled run uses (manifests/base/platform).
SERVICE_ACCOUNT = "edgeloop-pipeline"


def _package(tmp: Path, images: Path | None) -> Path:
    return compile_pipeline(tmp / "training_pipeline.yaml", images=images)


def submit_run(
    host: str,
    params: dict[str, Any],
    *,
    experiment: str = "edgeloop",
    run_name: str | None = None,
    namespace: str | None = None,
    images: Path | None = None,
    service_account: str = SERVICE_ACCOUNT,
) -> str:
    import tempfile

    client = _client(host, namespace)
    with tempfile.TemporaryDirectory() as tmp:
        package = _package(Path(tmp), images)
        result = client.create_run_from_pipeline_package(
            str(package),
            arguments=params,
            run_name=run_name or f"edgeloop-training-{time.strftime('%Y%m%d-%H%M%S')}",
            experiment_name=experiment,
            namespace=namespace,
            enable_caching=None,
            service_account=service_account,
        )
    return f"{host.rstrip('/')}/#/runs/details/{result.run_id}"


def schedule_runs(
    host: str,
    cron: str,
    params: dict[str, Any],
    *,
    experiment: str = "edgeloop",
    job_name: str = "edgeloop-retrain",
    max_concurrency: int = 1,
    namespace: str | None = None,
    images: Path | None = None,
    service_account: str = SERVICE_ACCOUNT,
) -> str:
    """A recurring run. ``snapshot-labels`` is never cached, so each scheduled run trains on the labels of its time
    (unchanged labels -> same manifest digest -> the dataset/training steps are reused from the cache)."""
    import tempfile

    if len(cron.split()) != 6:
        raise PipelineRunError(
            f"cron {cron!r} needs 6 fields (seconds first), e.g. '0 0 3 * * *' for 03:00 daily"
        )
    client = _client(host, namespace)
    exp = client.create_experiment(experiment, namespace=namespace)
    with tempfile.TemporaryDirectory() as tmp:
        package = _package(Path(tmp), images)
        job = client.create_recurring_run(
            experiment_id=exp.experiment_id,
            job_name=job_name,
            cron_expression=cron,
            max_concurrency=max_concurrency,
            pipeline_package_path=str(package),
            params=params,
            no_catchup=True,
            service_account=service_account,
        )
    return str(getattr(job, "recurring_run_id", None) or getattr(job, "id", ""))
