"""Kubeflow Pipelines components of the training path: thin wrappers over the library functions.

Each body imports and calls one function of :mod:`components`; nothing heavy is imported
at module level, so compiling a pipeline needs only kfp. ``packages_to_install`` stays
empty: locally they run with ``kfp.local.SubprocessRunner(use_venv=False)`` in the
project's venv; in a cluster, set ``base_image`` to the project's training image.
Settings come from ``config_file`` (a YAML path, or "" for the environment), read at run time.
"""

from typing import NamedTuple  # no `from __future__ import annotations`: kfp reads real annotations

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

BASE_IMAGE = "python:3.11-slim"  # replaced by the project's training image in a cluster


@dsl.component(base_image=BASE_IMAGE, packages_to_install=[])
def start_mlflow_run(run_name: str, config_file: str = "") -> str:
    """Create the MLflow run the later steps log into (git commit tagged); returns its id."""
    from components.tracking import start_run
    from edgeloop.config import load_settings

    return start_run(load_settings(config_file or None), run_name=run_name)


@dsl.component(base_image=BASE_IMAGE, packages_to_install=[])
def import_labels_component(
    manifest: Output[Dataset], project: str = "", policy: str = "latest", config_file: str = ""
) -> NamedTuple("Labels", [("labeled_images", int), ("manifest_sha256", str)]):  # type: ignore[valid-type]
    """Label Studio export -> label manifest (JSONL); the import report goes into the artifact metadata."""
    from collections import namedtuple

    from components.labels import import_labels
    from edgeloop.config import load_settings

    report = import_labels(load_settings(config_file or None), project or None, manifest.path, policy)
    manifest.metadata.update({k: v for k, v in report.as_dict().items() if k != "manifest_path"})
    return namedtuple("Labels", ["labeled_images", "manifest_sha256"])(  # type: ignore[call-arg]
        report.labeled_images,  # type: ignore[arg-type]
        report.manifest_sha256,
    )


@dsl.component(base_image=BASE_IMAGE, packages_to_install=[])
def build_dataset_component(
    manifest: Input[Dataset], dataset: Output[Dataset], mlflow_run_id: str = "", config_file: str = ""
) -> str:
    """Manifest -> versioned dataset directory (images, index.jsonl, dataset.json); returns the version."""
    from components.dataset import build_dataset
    from edgeloop.config import load_settings

    info = build_dataset(
        load_settings(config_file or None), manifest.path, dataset.path, mlflow_run_id=mlflow_run_id or None
    )
    dataset.metadata.update(
        {
            "version": info.version,
            "classes": info.classes,
            "images": info.images,
            "counts": info.counts,
            "excluded": len(info.excluded),
            "blob_uri": info.blob_uri,
        }
    )
    return info.version


@dsl.component(base_image=BASE_IMAGE, packages_to_install=[])
def train_component(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    arch: str = "resnet18",
    size: int = 128,
    epochs: int = 30,
    batch_size: int = 16,
    lr: float = 0.002,
    patience: int = 8,
    seed: int = 0,
    nproc_per_node: int = 2,
    mlflow_run_id: str = "",
    config_file: str = "",
) -> float:
    """DDP training under torchrun; ``model`` is the training directory (model.pt, checkpoints, log)."""
    from components.training import TrainConfig, run_training
    from edgeloop.config import load_settings

    settings = load_settings(config_file or None)
    cfg = TrainConfig(
        arch=arch,
        size=size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        patience=patience,
        seed=seed,
        min_epochs=min(epochs, 20),
    )
    result = run_training(
        dataset.path,
        model.path,
        cfg,
        nproc_per_node=nproc_per_node,
        mlflow_tracking_uri=settings.mlflow_tracking_uri(),
        mlflow_experiment=settings.mlflow.experiment,
        mlflow_run_id=mlflow_run_id or None,
        dataset_version=dataset.metadata.get("version"),
        progress=False,
    )
    for k, v in result.metrics.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            metrics.log_metric(k, float(v))
    model.metadata.update(
        {
            "arch": arch,
            "framework": "pytorch",
            "val_accuracy": result.val_accuracy,
            "dataset_version": dataset.metadata.get("version", ""),
        }
    )
    return float(result.val_accuracy)


@dsl.component(base_image=BASE_IMAGE, packages_to_install=[])
def export_onnx_component(
    model: Input[Model],
    dataset: Input[Dataset],
    onnx_model: Output[Model],
    parity: Output[Metrics],
    max_abs_diff: float = 1e-4,
    min_agreement: float = 1.0,
) -> str:
    """model.pt -> model directory (fp32 model.onnx + card); fails with ParityError if torch and ONNX differ."""
    from components.export import export_model

    card = export_model(
        model.path,
        onnx_model.path,
        dataset_dir=dataset.path,
        max_abs_diff=max_abs_diff,
        min_agreement=min_agreement,
    )
    for k, v in card.parity.items():
        parity.log_metric(k, float(v))
    onnx_model.metadata.update(
        {"framework": "onnx", "precision": card.precision.value, "digest": card.digest()}
    )
    return card.digest()


@dsl.component(base_image=BASE_IMAGE, packages_to_install=[])
def select_precision_component(
    onnx_model: Input[Model],
    dataset: Input[Dataset],
    chosen_model: Output[Model],
    evidence: Output[Metrics],
    target: str = "cpu",
    max_accuracy_drop: float = 0.01,
    max_disagreement: float = 0.02,
) -> str:
    """fp32 vs int8 (static QDQ) measured on this machine's provider; the chosen one + card in ``chosen_model``."""
    from components.precision import PrecisionBounds, choose_precision

    card = choose_precision(
        onnx_model.path,
        chosen_model.path,
        dataset_dir=dataset.path,
        target=target,
        bounds=PrecisionBounds(max_accuracy_drop=max_accuracy_drop, max_disagreement=max_disagreement),
    )
    for m in card.precision_evidence["measurements"]:
        for k in ("latency_ms_b1", "latency_ms_b8", "accuracy", "agreement_with_fp32"):
            evidence.log_metric(f"{m['precision']}_{k}", float(m[k]))
    chosen_model.metadata.update(
        {
            "framework": "onnx",
            "precision": card.precision.value,
            "digest": card.digest(),
            "provider": card.execution_provider,
        }
    )
    return card.precision.value


@dsl.component(base_image=BASE_IMAGE, packages_to_install=[])
def log_model_component(chosen_model: Input[Model], mlflow_run_id: str, config_file: str = "") -> str:
    """Log the model directory (model.onnx + model_card.json) as run artifacts; returns runs:/<id>/model."""
    from components.card import log_model_dir
    from edgeloop.config import load_settings
    from edgeloop.model_card import ModelCard

    card = ModelCard.load(chosen_model.path)
    card.verify(chosen_model.path)
    return log_model_dir(load_settings(config_file or None), chosen_model.path, mlflow_run_id, card)
