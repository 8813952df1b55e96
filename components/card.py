"""Write the model card next to ``model.onnx`` and log the model directory to MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.core.model_card import MODEL_FILE, ModelCard, Precision
from edgeloop.core.preprocessing import PreprocessConfig

if TYPE_CHECKING:
    from edgeloop.core.config import Settings

MODEL_ARTIFACT_PATH = "model"  # runs:/<run_id>/model holds model.onnx + model_card.json


def write_model_card(
    model_dir: Path,
    *,
    name: str,
    architecture: str,
    labels: list[str],
    preprocessing: PreprocessConfig,
    precision: Precision | str,
    execution_provider: str = "CPUExecutionProvider",
    metrics: dict[str, float] | None = None,
    parity: dict[str, float] | None = None,
    precision_evidence: dict[str, Any] | None = None,
    dataset_version: str | None = None,
    lineage: dict[str, str] | None = None,
    embedding_dim: int | None = None,
) -> ModelCard:
    """Build the card (with the sha256 of every file in ``model_dir``) and save it there."""
    model_dir = Path(model_dir)
    if not (model_dir / MODEL_FILE).exists():
        raise FileNotFoundError(f"{model_dir} holds no {MODEL_FILE}; export the model first")
    if embedding_dim is None:
        embedding_dim = _embedding_dim(model_dir / MODEL_FILE)
    card = ModelCard(
        name=name,
        architecture=architecture,
        labels=list(labels),
        preprocessing=preprocessing,
        precision=Precision(precision),
        execution_provider=execution_provider,
        embedding_dim=embedding_dim,
        metrics={k: float(v) for k, v in (metrics or {}).items()},
        parity=dict(parity or {}),
        precision_evidence=dict(precision_evidence or {}),
        dataset_version=dataset_version,
        lineage={k: str(v) for k, v in (lineage or {}).items()},
    ).with_digests(model_dir)
    card.save(model_dir)
    return card


def _embedding_dim(path: Path) -> int | None:
    import onnx

    for out in onnx.load(str(path), load_external_data=False).graph.output:
        if out.name == "embedding":
            dims = out.type.tensor_type.shape.dim
            return int(dims[1].dim_value) if len(dims) > 1 and dims[1].dim_value else None
    return None


def log_model_dir(settings: Settings, model_dir: Path, run_id: str, card: ModelCard) -> str:
    """Log ``model_dir`` as artifacts of the run (``runs:/<id>/model``), with the card's figures; returns the URI."""
    import mlflow

    from edgeloop.components.tracking import mlflow_run

    with mlflow_run(settings, run_id):
        mlflow.log_artifacts(str(model_dir), artifact_path=MODEL_ARTIFACT_PATH)
        mlflow.log_metrics({f"parity_{k}": float(v) for k, v in card.parity.items()})
        mlflow.log_metrics({f"final_{k}": float(v) for k, v in card.metrics.items()})
        mlflow.set_tags(
            {
                "precision": card.precision.value,
                "execution_provider": card.execution_provider,
                "model_digest": card.digest(),
                "dataset_version": card.dataset_version or "",
                **{f"lineage.{k}": v for k, v in card.lineage.items()},
            }
        )
    return f"runs:/{run_id}/{MODEL_ARTIFACT_PATH}"
