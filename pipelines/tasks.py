"""What each pipeline step does, as plain functions over KFP artifact objects.

The components in :mod:`edgeloop.pipelines.steps` are one-line wrappers over these, so
the steps can be tested (and debugged) by calling them with any object that has
``.path``, ``.metadata`` (and ``.log_metric`` / ``.log_confusion_matrix`` for
metrics), without KFP.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import namedtuple
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeloop.core.config import Settings

log = logging.getLogger("edgeloop.pipeline")

# the steps' multi-value returns (field names = the KFP output names)
LabelSnapshot = namedtuple(
    "LabelSnapshot", ["manifest_uri", "labels_digest", "labeled_images", "mlflow_run_id"]
)
Training = namedtuple("Training", ["val_score", "mlflow_run_id"])
Registration = namedtuple("Registration", ["version", "gate_passed", "evidence_digest"])
ImageContext = namedtuple("ImageContext", ["image", "content_hash", "needs_build"])


def settings_for(config_file: str) -> Settings:
    from edgeloop.core.config import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("azure", "httpx", "httpcore", "urllib3"):  # one line per HTTP request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return load_settings(config_file or None)


def _persist(artifact: Any) -> None:
    """Write a Metrics/ClassificationMetrics artifact's values to its file too.

    KFP keeps metrics in the executor output only; the local runner's cache treats an artifact
    whose file is missing as a miss, so without this file a step with metrics is never cached.
    """
    path = Path(artifact.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(artifact.metadata, indent=2, sort_keys=True, default=str))


def _dir(artifact: Any) -> Path:
    p = Path(artifact.path)
    p.mkdir(parents=True, exist_ok=True)
    return p


# -- labels and dataset -------------------------------------------------------------------------------------
def snapshot_labels_task(project: str, label_policy: str, config_file: str, pipeline_run: str = ""):
    """Never cached: the manifest's digest names it, so build_dataset can be cached on that name.
    The first step, so it also opens the MLflow run of ``pipeline_run`` (its id is an output the later
    uncached steps nest their runs under; none without a pipeline run's name)."""
    import tempfile

    from edgeloop.components import tracking
    from edgeloop.components.labels import import_labels
    from edgeloop.core.blob import BlobStore, BlobUri
    from edgeloop.core.model_card import sha256_file

    settings = settings_for(config_file)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.jsonl"
        report = import_labels(settings, project or None, path, policy=label_policy)
        digest = sha256_file(path)
        store = BlobStore.from_settings(settings)
        store.ensure_container(settings.blob.datasets_container)
        uri = BlobUri(settings.blob.datasets_container, f"manifests/{digest}.jsonl")
        if not store.exists(uri):
            store.upload_file(uri, path)
    n = int(getattr(report, "labeled_images", 0))
    parent = tracking.start_pipeline_run(settings, pipeline_run) if pipeline_run else ""
    if parent:
        import mlflow

        with tracking.step_run(settings, parent, "snapshot-labels"):
            mlflow.log_params(
                {"labels_digest": digest, "manifest_uri": str(uri), "label_policy": label_policy}
            )
            mlflow.log_metric("labeled_images", n)
    log.info("labels snapshot %s: %d labeled images (%s); MLflow run %s", digest[:12], n, uri, parent or "-")
    return LabelSnapshot(str(uri), digest, n, parent)


def build_dataset_task(manifest_uri: str, split_fractions: str, config_file: str, dataset: Any) -> str:
    import tempfile

    from edgeloop.components import tracking
    from edgeloop.components.dataset import build_dataset
    from edgeloop.core.blob import BlobStore

    settings = settings_for(config_file)
    out = _dir(dataset)
    # cached: it cannot be told the pipeline's MLflow run; staging-evaluation nests this run under it
    run_id = tracking.start_run(settings, "build-dataset", {tracking.STEP_TAG: "build-dataset"})
    with tempfile.TemporaryDirectory() as tmp:
        manifest = BlobStore.from_settings(settings).download_to(manifest_uri, Path(tmp) / "manifest.jsonl")
        info = build_dataset(
            settings, manifest, out, fractions=_fractions(split_fractions), mlflow_run_id=run_id
        )
    dataset.metadata.update(
        {
            "version": info.version,
            "classes": info.classes,
            "images": info.images,
            "counts": info.counts,
            "fractions": list(info.fractions),
            "manifest_uri": manifest_uri,
            "mlflow_run_id": run_id,
        }
    )
    log.info(info.summary())
    return info.version


def _fractions(split_fractions: str) -> tuple[float, float, float]:
    from edgeloop.components.defaults import parse_fractions
    from edgeloop.components.errors import DatasetError

    try:
        return parse_fractions(split_fractions)
    except ValueError as e:
        raise DatasetError(f"pipeline parameter split_fractions: {e}") from e


# -- training -------------------------------------------------------------------------------------------------
def train_task(
    dataset: Any,
    architecture: str,
    epochs: int,
    batch_size: int,
    image_size: int,
    learning_rate: float,
    nproc_per_node: int,
    seed: int,
    config_file: str,
    model: Any,
    metrics: Any,
):
    """Train in an MLflow run of its own that has the dataset as its input; returns (validation score:
    accuracy, or mAP@0.5 for a detector; run id). Empty / zero hyperparameters are the defaults of the
    dataset's task (classification or detection)."""
    from edgeloop.components import tracking
    from edgeloop.components.dataset import DatasetInfo, log_dataset
    from edgeloop.components.train import dataset_task
    from edgeloop.components.training import config_for_task, run_training

    settings = settings_for(config_file)
    out = _dir(model)
    task = dataset_task(Path(dataset.path))
    cfg = config_for_task(task, architecture, image_size, epochs, batch_size, learning_rate, seed)
    log.info("training a %s model: %s", task, cfg)
    from edgeloop.core.config import StackNotRunningError

    try:
        uri = settings.mlflow_tracking_uri()
    except StackNotRunningError as e:  # training works without tracking, but say so
        log.warning("training without MLflow tracking: %s", e)
        uri = None
    run_id = ""
    if uri is not None:  # cached like build-dataset: staging-evaluation nests this run under the pipeline's
        run_id = tracking.start_run(settings, "train-model", {tracking.STEP_TAG: "train-model"})
        log_dataset(settings, DatasetInfo.load(Path(dataset.path)), Path(dataset.path), run_id=run_id)
    result = run_training(
        Path(dataset.path),
        out,
        cfg,
        nproc_per_node=nproc_per_node,
        mlflow_tracking_uri=uri,
        mlflow_experiment=settings.mlflow.experiment,
        mlflow_run_id=run_id or None,
        dataset_version=dataset.metadata.get("version"),
        progress=False,
        echo=True,
    )
    for k, v in result.metrics.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            metrics.log_metric(k, float(v))
    model.metadata.update(
        {
            "task": task,
            "architecture": cfg.arch,
            "framework": "pytorch",
            "dataset_version": dataset.metadata.get("version", ""),
            "val_score": result.val_score,
            "val_images": result.metrics.get("val_images", 0),
            "nproc_per_node": nproc_per_node,
            "seed": seed,
            "mlflow_run_id": run_id,
            **{f"train_{k}": v for k, v in (result.metrics.get("machine") or {}).items() if k != "cpu_flags"},
        }
    )
    _persist(metrics)
    return Training(float(result.val_score), run_id)


def export_task(model: Any, dataset: Any, onnx_model: Any, parity: Any) -> str:
    from edgeloop.components.export import export_model

    out = _dir(onnx_model)
    card = export_model(Path(model.path), out, dataset_dir=Path(dataset.path))
    for k, v in _flat(card.parity or {}).items():
        parity.log_metric(k, v)
    onnx_model.metadata.update(
        {
            "precision": card.precision.value,
            "digest": card.digest(),
            "framework": "onnx",
            "architecture": card.architecture,
        }
    )
    _persist(parity)
    return card.digest()


def select_precision_task(
    onnx_model: Any, dataset: Any, target_profile: str, chosen_model: Any, evidence: Any
) -> str:
    from edgeloop.components.precision import choose_precision

    out = _dir(chosen_model)
    card = choose_precision(Path(onnx_model.path), out, dataset_dir=Path(dataset.path), target=target_profile)
    for k, v in _flat({k: v for k, v in card.precision_evidence.items() if k != "measurements"}).items():
        evidence.log_metric(k, v)
    for m in card.precision_evidence.get("measurements", []):
        for key in ("latency_ms_b1", "accuracy", "agreement_with_fp32"):
            if key in m:
                evidence.log_metric(f"{m['precision']}.{key}", float(m[key]))
    chosen_model.metadata.update(
        {
            "precision": card.precision.value,
            "digest": card.digest(),
            "target_profile": target_profile,
            "framework": "onnx",
            "reasons": card.precision_evidence.get("reasons", []),
        }
    )
    _persist(evidence)
    return card.precision.value


def _card(directory: Path):
    from edgeloop.core.model_card import ModelCard

    return ModelCard.load(directory)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _flat(v, key + ".")
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[key] = float(v)
    return out


# -- staging evaluation, registry, gate ---------------------------------------------------------------------------
def staging_evaluation_task(
    dataset: Any,
    candidate: Any,
    reference: Any,
    min_accuracy: float,
    min_map_50: float,
    max_regression: float,
    min_class_recall: float,
    class_recall_floors: dict,
    max_latency_p95_ms: float,
    max_ece: float,
    max_parity_diff: float,
    min_top1_agreement: float,
    min_eval_images: int,
    regression_alpha: float,
    latency_requests: int,
    parent_run_id: str,
    train_run_id: str,
    config_file: str,
    staged_model: Any,
    evaluation: Any,
    metrics: Any,
    confusion_matrix: Any,
    report: Any,
) -> bool:
    import mlflow

    from edgeloop.components import tracking
    from edgeloop.pipelines.gate import GateThresholds
    from edgeloop.pipelines.staging import run_staging_evaluation, stage_model

    settings = settings_for(config_file)
    # the first uncached step after the cached ones: their runs join the pipeline's run here
    tracking.adopt(
        settings,
        parent_run_id,
        {"build-dataset": str(dataset.metadata.get("mlflow_run_id", "")), "train-model": train_run_id},
    )
    thresholds = GateThresholds.model_validate(
        {
            "min_accuracy": min_accuracy,
            "min_map_50": min_map_50,
            "max_regression": max_regression,
            "min_class_recall": min_class_recall,
            "class_recall_floors": {str(k): float(v) for k, v in (class_recall_floors or {}).items()},
            "max_latency_p95_ms": max_latency_p95_ms,
            "max_ece": max_ece,
            "max_parity_diff": max_parity_diff,
            "min_top1_agreement": min_top1_agreement,
            "min_eval_images": int(min_eval_images),
            "regression_alpha": regression_alpha,
        }
    )
    with tracking.step_run(settings, parent_run_id, "staging-evaluation"):
        staged = stage_model(Path(candidate.path), Path(staged_model.path), Path(dataset.path))
        result = run_staging_evaluation(
            settings,
            Path(dataset.path),
            staged,
            Path(reference.path),
            thresholds,
            latency_requests=latency_requests,
        )
        mlflow.log_metrics({k.replace("=", "_"): float(v) for k, v in result.report.flat_metrics().items()})
        mlflow.set_tags({"edgeloop.gate": "passed" if result.decision.passed else "failed"})
        mlflow.log_text(result.markdown, "report.md")
    Path(evaluation.path).parent.mkdir(parents=True, exist_ok=True)
    Path(evaluation.path).write_text(result.to_json())
    evaluation.metadata.update(
        {
            "evidence_digest": result.report.digest(),
            "gate_passed": result.decision.passed,
            "champion_version": result.champion_version or "",
        }
    )
    for k, v in result.report.flat_metrics().items():
        metrics.log_metric(k, float(v))
    confusion_matrix.log_confusion_matrix(*result.report.confusion())
    _persist(metrics)
    _persist(confusion_matrix)
    Path(report.path).parent.mkdir(parents=True, exist_ok=True)
    Path(report.path).write_text(result.markdown)
    staged_model.metadata.update(
        {"digest": result.report.model_digest, "precision": result.report.precision, "framework": "onnx"}
    )
    log.info("gate: %s", result.decision.summary())
    return bool(result.decision.passed)


def register_task(
    staged_model: Any,
    evaluation: Any,
    dataset: Any,
    dataset_version: str,
    labels_digest: str,
    pipeline_run: str,
    git_commit: str,
    architecture: str,
    target_profile: str,
    parent_run_id: str,
    config_file: str,
):
    from edgeloop.pipelines import registry
    from edgeloop.pipelines.staging import StagingResult

    settings = settings_for(config_file)
    result = StagingResult.from_json(Path(evaluation.path).read_text())
    lineage = {
        "dataset_version": dataset_version,
        "labels_digest": labels_digest,
        "pipeline_run": pipeline_run,
        "git_commit": git_commit or os.environ.get("EDGELOOP_GIT_COMMIT", "") or _git_commit(),
        "champion_compared": result.champion_version or "none",
        "dataset_uri": str(dataset.metadata.get("manifest_uri", "")),
        # how the model was trained: the seed and the machine (the card holds all its CPU flags)
        **{
            k: v
            for k, v in _card(Path(staged_model.path)).lineage.items()
            if k in ("train_seed", "train_cpu_model", "train_cpu_isa", "train_torch_cpu_capability")
        },
    }
    with _tmp_file("report.md", result.markdown) as md:
        reg = registry.register_candidate(
            settings,
            Path(staged_model.path),
            result.report,
            result.decision,
            report_markdown=result.markdown,
            champion_report=result.champion_report,
            lineage=lineage,
            params={"architecture": architecture, "target_profile": target_profile},
            extra_evidence={"dataset.json": Path(dataset.path) / "dataset.json", "report.md": md},
            parent_run_id=parent_run_id,
        )
    if not reg.gate_passed:
        log.warning("version %s rejected by the gate: %s", reg.version, "; ".join(reg.reasons))
    return Registration(reg.version, reg.gate_passed, reg.evidence_digest)


class _tmp_file:
    def __init__(self, name: str, text: str):
        import tempfile

        self._dir = tempfile.mkdtemp()
        self.path = Path(self._dir) / name
        self.path.write_text(text)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: Any) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


def _git_commit() -> str:
    try:
        from edgeloop.components.tracking import git_commit

        return git_commit()
    except Exception:  # noqa: BLE001
        return "unknown"


def await_approval_task(
    version: str,
    gate_passed: bool,
    timeout_s: float,
    poll_s: float,
    auto_approve: bool,
    pipeline_run: str,
    parent_run_id: str,
    config_file: str,
) -> str:
    import mlflow

    from edgeloop.components import tracking
    from edgeloop.pipelines import registry
    from edgeloop.pipelines.runner import LOCAL_RUNNER_ENV

    settings = settings_for(config_file)
    if auto_approve and (
        os.environ.get(LOCAL_RUNNER_ENV) != "1" or os.environ.get("KUBERNETES_SERVICE_HOST")
    ):
        raise registry.RegistryError(
            "auto_approve=True is refused: it works only with the local runner (`edgeloop pipeline run "
            "--local --auto-approve`); on a cluster an approver decides with `edgeloop approve`"
        )
    with tracking.step_run(settings, parent_run_id, "await-approval", tags={"edgeloop.version": version}):
        if not gate_passed:
            reasons = registry.version_tags(settings, version).get(
                registry.REJECTED_REASONS, "the gate failed"
            )
            log.warning("version %s failed the automatic gate, no approval asked: %s", version, reasons)
            mlflow.set_tags({"edgeloop.decision": registry.REJECTED_VALUE, "edgeloop.decision.mode": "gate"})
            decision = registry.REJECTED_VALUE
        else:
            d = registry.wait_for_decision(
                settings,
                version,
                timeout_s,
                auto_approve=auto_approve,
                poll_s=poll_s,
                run_name=pipeline_run,
                progress=log.info,
            )
            mlflow.set_tags(
                {
                    "edgeloop.decision": d.decision,
                    "edgeloop.decision.by": d.by,
                    "edgeloop.decision.mode": d.mode,
                }
            )
            log.info(
                "decision on version %s: %s by %s (%s)%s",
                version,
                d.decision,
                d.by,
                d.mode,
                f": {d.note}" if d.note else "",
            )
            decision = d.decision
    if decision != registry.APPROVED:
        tracking.end_pipeline_run(settings, parent_run_id)  # deploy does not run: the pipeline ends here
    return decision


# -- image and deploy ------------------------------------------------------------------------------------------------
def prepare_image_build_task(image_repository: str, context: Any):
    from edgeloop.pipelines.image_build import needs_build, write_context

    ctx = write_context(Path(context.path), image_repository)
    build, why = (
        needs_build(ctx.image, ctx.content_hash) if os.environ.get("KUBERNETES_SERVICE_HOST") else (True, "")
    )
    if why:
        log.info(why)
    context.metadata.update({"content_hash": ctx.content_hash, "image": ctx.image, "files": ctx.files})
    return ImageContext(ctx.image, ctx.content_hash, build)


def local_image_build_task(context: Any, image: str, config_file: str) -> str:
    from edgeloop.pipelines.image_build import BuildContext, build_locally

    settings = settings_for(config_file)
    ctx = BuildContext(
        archive=context.path,
        content_hash=context.metadata.get("content_hash", ""),
        image=image,
        files=int(context.metadata.get("files", 0)),
    )
    result = build_locally(ctx, record_dir=settings.state_dir / "images")
    log.info("image %s: %s (%s)", image, result.status, result.reason)
    if result.status == "failed":
        # A local run serves the model with `edgeloop serve`, not with this image: a builder that is
        # installed but cannot build here (no registry for the base image, no privileges) is recorded,
        # never the end of the run. The cluster's build step (buildah) fails loudly instead.
        log.warning("image %s was not built locally with %s: %s", image, result.builder, result.reason[-500:])
    return json.dumps(result.as_dict())


def deploy_task(
    version: str,
    image: str,
    deploy_target: str,
    namespace: str,
    gitops_dir: str,
    parent_run_id: str,
    config_file: str,
) -> str:
    import mlflow

    from edgeloop.components import tracking
    from edgeloop.pipelines.deploy import deploy_version

    settings = settings_for(config_file)
    with tracking.step_run(
        settings, parent_run_id, "deploy-model", tags={"edgeloop.version": version}, final=True
    ):
        result = deploy_version(
            settings,
            version,
            image=image,
            deploy_target=deploy_target,
            namespace=namespace,
            gitops_dir=gitops_dir,
        )
        mlflow.set_tags(
            {
                "edgeloop.deployed_to": result.target[:4900],
                "edgeloop.previous_champion": result.previous_champion or "",
            }
        )
    log.info(
        "version %s deployed to %s; champion moved (previous: %s)",
        version,
        result.target,
        result.previous_champion or "none",
    )
    return result.target
