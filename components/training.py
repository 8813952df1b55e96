"""Launch DDP training (:mod:`edgeloop.components.train`) under torchrun as a subprocess.

No torch import here: the CLI and the KFP component call :func:`run_training`,
which runs ``python -m torch.distributed.run --standalone --nproc-per-node N -m edgeloop.components.train ...``,
tees its output to ``<out>/train.log`` (and to stderr, for the rank-0 progress bar),
and returns a typed :class:`TrainResult`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeloop.components.defaults import DETECTION, TRAINING
from edgeloop.components.errors import TrainingError

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class TrainConfig:
    """One run's settings; what is not set is :data:`~edgeloop.components.defaults.TRAINING`."""

    arch: str = TRAINING.arch
    size: int = TRAINING.size
    epochs: int = TRAINING.epochs
    batch_size: int = TRAINING.batch_size
    lr: float = TRAINING.lr
    weight_decay: float = TRAINING.weight_decay
    balance: str = TRAINING.balance
    patience: int = TRAINING.patience
    min_epochs: int = TRAINING.min_epochs
    seed: int = TRAINING.seed
    bn_momentum: float = TRAINING.bn_momentum
    eval_bn: str = TRAINING.eval_bn
    relabel_share: float = TRAINING.relabel_share
    weights: str | None = None
    device: str = "auto"
    extra_args: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        a = [
            "--arch",
            self.arch,
            "--size",
            str(self.size),
            "--epochs",
            str(self.epochs),
            "--batch-size",
            str(self.batch_size),
            "--lr",
            str(self.lr),
            "--weight-decay",
            str(self.weight_decay),
            "--balance",
            self.balance,
            "--patience",
            str(self.patience),
            "--min-epochs",
            str(min(self.min_epochs, self.epochs)),
            "--seed",
            str(self.seed),
            "--bn-momentum",
            str(self.bn_momentum),
            "--eval-bn",
            self.eval_bn,
            "--relabel-share",
            str(self.relabel_share),
            "--device",
            self.device,
        ]
        if self.weights:
            a += ["--weights", str(self.weights)]
        return a + list(self.extra_args)


@dataclass
class DetectionTrainConfig:
    """A detector's run (:mod:`edgeloop.components.train_detection`'s flags); what is not set is
    :data:`~edgeloop.components.defaults.DETECTION`."""

    arch: str = DETECTION.detector
    size: int = DETECTION.size
    epochs: int = DETECTION.epochs
    batch_size: int = DETECTION.batch_size
    lr: float = DETECTION.lr
    seed: int = TRAINING.seed
    score_threshold: float = 0.5
    device: str = "auto"
    extra_args: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        return [
            "--detector",
            self.arch,
            "--size",
            str(self.size),
            "--epochs",
            str(self.epochs),
            "--batch-size",
            str(self.batch_size),
            "--lr",
            str(self.lr),
            "--seed",
            str(self.seed),
            "--score-threshold",
            str(self.score_threshold),
            "--device",
            self.device,
            *self.extra_args,
        ]


def config_for_task(
    task: str,
    arch: str = "",
    size: int = 0,
    epochs: int = 0,
    batch_size: int = 0,
    lr: float = 0.0,
    seed: int = TRAINING.seed,
) -> TrainConfig | DetectionTrainConfig:
    """The run's settings for a dataset of ``task``; an empty or zero value is that task's default
    (the pipeline's parameters are shared by both tasks)."""
    from edgeloop.components.defaults import ARCHS, DETECTORS

    detection = task == "detection"
    kind, choices = (DetectionTrainConfig, DETECTORS) if detection else (TrainConfig, ARCHS)
    if arch and arch not in choices:
        raise TrainingError(
            f"architecture {arch!r} cannot train a {task} dataset; choose one of {', '.join(choices)} "
            "(or leave it empty for the default)"
        )
    base = kind()
    cfg = kind(
        arch=arch or base.arch,
        size=size or base.size,
        epochs=epochs or base.epochs,
        batch_size=batch_size or base.batch_size,
        lr=lr or base.lr,
        seed=seed,
    )
    if isinstance(cfg, TrainConfig):
        cfg.min_epochs = min(cfg.epochs, TrainConfig.min_epochs)
    return cfg


@dataclass
class TrainResult:
    model_path: str
    checkpoint_path: str
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    nproc_per_node: int
    seconds: float
    log_path: str
    command: list[str]

    @property
    def val_accuracy(self) -> float:
        return float(self.metrics.get("val_accuracy", float("nan")))

    @property
    def val_score(self) -> float:
        """What training selected the model on: validation accuracy, or mAP@0.5 for a detector."""
        return float(self.metrics.get("val_accuracy", self.metrics.get("val_map_50", float("nan"))))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def torchrun_prefix(nproc_per_node: int = TRAINING.nproc_per_node) -> list[str]:
    """``torchrun --standalone --nproc-per-node N -m edgeloop.components.train``, with this interpreter:
    the training entry point's flags follow."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc_per_node),
        "-m",
        "edgeloop.components.train",
    ]


def torchrun_command(
    dataset_dir: Path,
    out_dir: Path,
    config: TrainConfig | DetectionTrainConfig,
    nproc_per_node: int = TRAINING.nproc_per_node,
    mlflow_tracking_uri: str | None = None,
    mlflow_experiment: str = "edgeloop",
    mlflow_run_id: str | None = None,
    dataset_version: str | None = None,
    git_commit: str | None = None,
    resume: Path | None = None,
    progress: bool = True,
) -> list[str]:
    cmd = [
        *torchrun_prefix(nproc_per_node),
        "--data",
        str(dataset_dir),
        "--out",
        str(out_dir),
        *config.argv(),
    ]
    if mlflow_tracking_uri:
        cmd += ["--mlflow-tracking-uri", mlflow_tracking_uri, "--mlflow-experiment", mlflow_experiment]
        if mlflow_run_id:
            cmd += ["--mlflow-run-id", mlflow_run_id]
    if dataset_version:
        cmd += ["--dataset-version", dataset_version]
    if git_commit:
        cmd += ["--git-commit", git_commit]
    if resume:
        cmd += ["--resume", str(resume)]
    if not progress:
        cmd += ["--no-progress"]
    return cmd


def run_training(
    dataset_dir: Path,
    out_dir: Path,
    config: TrainConfig | DetectionTrainConfig | None = None,
    *,
    nproc_per_node: int = TRAINING.nproc_per_node,
    mlflow_tracking_uri: str | None = None,
    mlflow_experiment: str = "edgeloop",
    mlflow_run_id: str | None = None,
    dataset_version: str | None = None,
    git_commit: str | None = None,
    resume: Path | None = None,
    progress: bool = True,
    echo: bool = True,
    timeout_s: float | None = None,
) -> TrainResult:
    """Train with DDP on ``nproc_per_node`` processes; raises :class:`TrainingError` with the log tail."""
    config = config or TrainConfig()
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if git_commit is None:
        from edgeloop.components.tracking import git_commit as _git

        git_commit = _git()
    cmd = torchrun_command(
        dataset_dir,
        out_dir,
        config,
        nproc_per_node,
        mlflow_tracking_uri,
        mlflow_experiment,
        mlflow_run_id,
        dataset_version,
        git_commit,
        resume,
        progress,
    )
    log_path = out_dir / "train.log"
    (out_dir / "metrics.json").unlink(missing_ok=True)  # never report a previous run's result
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True
        )
        assert proc.stdout is not None
        try:
            while (
                chunk := proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096)
            ):
                log.write(chunk)
                if echo:
                    sys.stderr.buffer.write(chunk)
                    sys.stderr.flush()
                if timeout_s is not None and time.perf_counter() - t0 > timeout_s:
                    proc.kill()
                    break
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    seconds = round(time.perf_counter() - t0, 2)
    metrics_path = out_dir / "metrics.json"
    if rc != 0 or not metrics_path.exists():
        tail = log_path.read_text(errors="replace")[-3000:]
        raise TrainingError(
            f"training failed (exit code {rc}) after {seconds:.0f} s; log: {log_path}\n{tail}"
        )
    result = json.loads(metrics_path.read_text())
    metrics = {k: v for k, v in result.items() if k not in {"history"}}
    return TrainResult(
        model_path=str(out_dir / "model.pt"),
        checkpoint_path=str(out_dir / "checkpoint.pt"),
        metrics=metrics,
        history=result.get("history", []),
        nproc_per_node=nproc_per_node,
        seconds=seconds,
        log_path=str(log_path),
        command=cmd,
    )
