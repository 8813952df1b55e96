"""The whole training path in one call: what `edgeloop train` runs.

labels (Label Studio) -> dataset (blob, versioned) -> DDP training -> ONNX export + parity
-> precision selection -> model card -> MLflow (one run holds it all).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.components.defaults import SPLIT_FRACTIONS, TRAINING
from edgeloop.components.labels import LabelPolicy
from edgeloop.components.precision import PrecisionBounds
from edgeloop.components.training import TrainConfig

if TYPE_CHECKING:
    from edgeloop.core.config import Settings


@dataclass
class PathResult:
    run_id: str
    run_url: str
    model_dir: str
    model_uri: str
    dataset_version: str
    val_accuracy: float
    test_accuracy: float | None
    parity: dict[str, float]
    precision: str
    precision_evidence: dict[str, Any]
    timings_s: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # the card's: each with .n (and .ci95_*)
    import_report: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_training_path(
    settings: Settings,
    out_dir: Path,
    *,
    project: str | None = None,
    policy: LabelPolicy | str = LabelPolicy.LATEST,
    config: TrainConfig | None = None,
    nproc_per_node: int = TRAINING.nproc_per_node,
    bounds: PrecisionBounds = PrecisionBounds(),
    provider: str = "CPUExecutionProvider",
    fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
    progress: bool = True,
    log=print,
) -> PathResult:
    from edgeloop.components import card as cardmod
    from edgeloop.components import tracking
    from edgeloop.components.dataset import build_dataset
    from edgeloop.components.export import export_and_verify
    from edgeloop.components.labels import import_labels
    from edgeloop.components.precision import chosen_metrics, select_precision
    from edgeloop.components.training import run_training

    config = config or TrainConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    commit = tracking.git_commit()

    t = time.perf_counter()
    report = import_labels(settings, project, out_dir / "manifest.jsonl", policy)
    timings["import_labels"] = round(time.perf_counter() - t, 2)
    log(f"labels: {report.summary()}")

    run_id = tracking.start_run(
        settings,
        run_name=f"train-{config.arch}",
        tags={"labelstudio.project": report.project_title, "labelstudio.export_id": str(report.export_id)},
    )
    t = time.perf_counter()
    info = build_dataset(
        settings, out_dir / "manifest.jsonl", out_dir / "dataset", fractions=fractions, mlflow_run_id=run_id
    )
    timings["build_dataset"] = round(time.perf_counter() - t, 2)
    log(f"dataset: {info.summary()}")
    if info.task == "detection":
        from edgeloop.components.errors import TrainingError

        raise TrainingError(
            f"project '{report.project_title}' holds boxes (detection): `edgeloop train` trains classifiers. "
            f"Train, export, evaluate and gate the detector with the pipeline: `edgeloop pipeline run --local "
            f"-p project={report.project_title}` (architecture, epochs, ... default to the detector's)"
        )
    for w in info.warnings:
        log(f"warning: {w}")

    result = run_training(
        out_dir / "dataset",
        out_dir / "train",
        config,
        nproc_per_node=nproc_per_node,
        mlflow_tracking_uri=settings.mlflow_tracking_uri(),
        mlflow_experiment=settings.mlflow.experiment,
        mlflow_run_id=run_id,
        dataset_version=info.version,
        git_commit=commit,
        progress=progress,
    )
    timings["train"] = result.seconds
    log(
        f"trained {config.arch} on {nproc_per_node} processes in {result.seconds:.0f} s: "
        f"val accuracy {result.val_accuracy:.4f}"
    )

    t = time.perf_counter()
    onnx_path, parity, _ = export_and_verify(
        Path(result.model_path), out_dir / "export" / "model.fp32.onnx", out_dir / "dataset"
    )
    timings["export_and_parity"] = round(time.perf_counter() - t, 2)
    log(f"parity: max |dp| {parity.max_abs_diff:.2e}, top-1 agreement {parity.top1_agreement:.4f}")

    t = time.perf_counter()
    model_dir = out_dir / "model"
    decision = select_precision(
        onnx_path,
        out_dir / "dataset",
        model_dir,
        labels=info.classes,
        size=config.size,
        provider=provider,
        bounds=bounds,
    )
    timings["select_precision"] = round(time.perf_counter() - t, 2)
    log(f"precision: {decision.reasons[-1]} ({'; '.join(decision.reasons[:-1]) or 'fp32 only'})")

    t = time.perf_counter()
    from edgeloop.core.preprocessing import PreprocessConfig

    chosen = next(m for m in decision.measurements if m.precision is decision.precision)
    metrics = {
        k: v for k, v in result.metrics.items() if isinstance(v, float) and not k.startswith("val_loss")
    }
    metrics.update(chosen_metrics(chosen))
    lineage = {
        "git_commit": commit,
        "mlflow_run_id": run_id,
        "dataset_uri": info.blob_uri,
        "manifest_sha256": info.manifest_sha256,
        "labelstudio_project": report.project_title,
        "labelstudio_export_id": str(report.export_id),
        "label_policy": report.policy,
        "train_command": " ".join(result.command[2:]),
        "nproc_per_node": str(nproc_per_node),
        "train_seed": str(config.seed),
        **{f"train_{k}": str(v) for k, v in (result.metrics.get("machine") or {}).items()},
    }
    card = cardmod.write_model_card(
        model_dir,
        name=settings.mlflow.registered_model,
        architecture=config.arch,
        labels=info.classes,
        preprocessing=PreprocessConfig(size=config.size),
        precision=decision.precision,
        execution_provider=provider,
        metrics=metrics,
        parity=parity.card_fields(),
        precision_evidence=decision.evidence(),
        dataset_version=info.version,
        lineage=lineage,
    )
    model_uri = cardmod.log_model_dir(settings, model_dir, run_id, card)
    timings["card_and_log"] = round(time.perf_counter() - t, 2)
    with tracking.mlflow_run(settings, run_id):
        import mlflow

        mlflow.log_metrics({f"time_{k}_s": v for k, v in timings.items()})
        mlflow.log_dict({"import": report.as_dict(), "timings_s": timings}, "training_path.json")
    res = PathResult(
        run_id=run_id,
        run_url=tracking.run_url(settings, run_id),
        model_dir=str(model_dir),
        model_uri=model_uri,
        dataset_version=info.version,
        val_accuracy=result.val_accuracy,
        test_accuracy=result.metrics.get("test_accuracy"),
        parity=parity.card_fields(),
        precision=decision.precision.value,
        precision_evidence=decision.evidence(),
        timings_s=timings,
        metrics=dict(card.metrics),
        import_report=report.as_dict(),
        dataset=info.as_dict(),
    )
    (out_dir / "result.json").write_text(json.dumps(res.as_dict(), indent=2, default=str))
    return res
