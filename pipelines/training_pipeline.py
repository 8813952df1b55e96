"""The edgeloop training pipeline (KFP v2).

    snapshot-labels (never cached) -> build-dataset -> train-model (DDP) -> export-onnx
      -> select-precision -> staging-evaluation (real model server) -> register-model
      -> [gate passed] await-approval -> [approved] prepare-image-build
      -> buildah-build (cluster, non-root) | local-image-build (local) -> deploy-model (moves champion)

Caching: ``snapshot-labels`` is never cached; it writes the label manifest to
blob storage under its own sha256 and passes that URI on. ``build-dataset``,
``train-model``, ``export-onnx`` and ``select-precision`` are cached on their
inputs, so a run over unchanged labels reuses them, and a run over new labels
(a new manifest digest) recomputes them: a scheduled run can never train on a
stale label import. Steps with side effects or that depend on the registry's
state (evaluation vs the current champion, register, approval, build, deploy)
are never cached.

Training and gate defaults come from the typed objects every other entry point
reads too (:data:`edgeloop.components.defaults.TRAINING`,
:data:`edgeloop.pipelines.gate.GATE`); the other defaults are literals. Nothing is
read from the environment at import or compile time. Service endpoints reach the
steps at run time through ``config_file`` / ``EDGELOOP_*`` variables of the
step's environment: on a cluster from the ``edgeloop-*`` Secrets (see
:mod:`edgeloop.pipelines.cluster`, which also sets each step's security context,
requests/limits, retries and the approval step's deadline).
"""

from kfp import dsl

from edgeloop.components.defaults import SPLIT_FRACTIONS, TRAINING, format_fractions
from edgeloop.pipelines import steps
from edgeloop.pipelines.gate import GATE

PIPELINE_NAME = "edgeloop-training"
#: A training parameter left at this value takes the default of the labels' task
#: (:data:`~edgeloop.components.defaults.TRAINING` or :data:`~edgeloop.components.defaults.DETECTION`).
TASK_DEFAULT_STR = ""
TASK_DEFAULT_NUM = 0


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Label Studio labels -> DDP training -> ONNX -> staging evaluation "
    "-> human-gated registry -> serving image -> KServe deploy.",
)
def training_pipeline(
    project: str = "",
    label_policy: str = "latest",
    split_fractions: str = format_fractions(SPLIT_FRACTIONS),  # "train,val,test" shares
    architecture: str = TASK_DEFAULT_STR,
    epochs: int = TASK_DEFAULT_NUM,
    batch_size: int = TASK_DEFAULT_NUM,
    image_size: int = TASK_DEFAULT_NUM,
    learning_rate: float = float(TASK_DEFAULT_NUM),
    nproc_per_node: int = TRAINING.nproc_per_node,
    seed: int = TRAINING.seed,
    target_profile: str = "cpu-avx2",
    min_accuracy: float = GATE.min_accuracy,
    min_map_50: float = GATE.min_map_50,
    max_regression: float = GATE.max_regression,
    min_class_recall: float = GATE.min_class_recall,
    class_recall_floors: dict = GATE.class_recall_floors,  # KFP reads it; never mutated
    max_latency_p95_ms: float = GATE.max_latency_p95_ms,
    max_ece: float = GATE.max_ece,
    max_parity_diff: float = GATE.max_parity_diff,
    min_top1_agreement: float = GATE.min_top1_agreement,
    min_eval_images: int = GATE.min_eval_images,
    regression_alpha: float = GATE.regression_alpha,
    latency_requests: int = 200,
    approval_timeout_s: float = 86400.0,
    approval_poll_s: float = 15.0,
    auto_approve: bool = False,
    image_builder: str = "buildah",
    image_repository: str = "ghcr.io/edgeloop/edgeloop-serving",
    deploy_target: str = "auto",
    namespace: str = "edgeloop",
    gitops_dir: str = "",
    git_commit: str = "",
    config_file: str = "",
) -> None:
    """Parameters a Kubeflow UI user sets: project (Label Studio project title, empty: the configured one;
    a Choices project trains a classifier, a RectangleLabels project a detector), split_fractions
    (train/val/test shares of the labeled images; keep them fixed for a project), model architecture,
    epochs, batch size, image size, learning rate (empty / 0: the default of the project's task),
    gate thresholds (min_accuracy judges a classifier, min_map_50 a detector; min_eval_images: fewer
    test images fail the gate for insufficient evidence), approval timeout, target hardware profile,
    auto_approve."""
    labels = steps.snapshot_labels(
        project=project,
        label_policy=label_policy,
        pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        config_file=config_file,
    )
    labels.set_caching_options(False)  # always a fresh export: see the module docstring
    # The pipeline run's MLflow run: uncached steps nest their runs under it; the cached ones cannot take
    # it (a per-run input would change their cache key), so staging-evaluation nests theirs.
    parent_run_id = labels.outputs["mlflow_run_id"]

    dataset = steps.build_dataset(
        manifest_uri=labels.outputs["manifest_uri"], split_fractions=split_fractions, config_file=config_file
    )
    trained = steps.train_model(
        dataset=dataset.outputs["dataset"],
        architecture=architecture,
        epochs=epochs,
        batch_size=batch_size,
        image_size=image_size,
        learning_rate=learning_rate,
        nproc_per_node=nproc_per_node,
        seed=seed,
        config_file=config_file,
    )
    exported = steps.export_onnx(model=trained.outputs["model"], dataset=dataset.outputs["dataset"])
    chosen = steps.select_precision(
        onnx_model=exported.outputs["onnx_model"],
        dataset=dataset.outputs["dataset"],
        target_profile=target_profile,
    )

    staging = steps.staging_evaluation(
        dataset=dataset.outputs["dataset"],
        candidate=chosen.outputs["chosen_model"],
        reference=exported.outputs["onnx_model"],
        min_accuracy=min_accuracy,
        min_map_50=min_map_50,
        max_regression=max_regression,
        min_class_recall=min_class_recall,
        class_recall_floors=class_recall_floors,
        max_latency_p95_ms=max_latency_p95_ms,
        max_ece=max_ece,
        max_parity_diff=max_parity_diff,
        min_top1_agreement=min_top1_agreement,
        min_eval_images=min_eval_images,
        regression_alpha=regression_alpha,
        latency_requests=latency_requests,
        parent_run_id=parent_run_id,
        train_run_id=trained.outputs["mlflow_run_id"],
        config_file=config_file,
    )
    staging.set_caching_options(False)  # depends on the champion

    registered = steps.register_model(
        staged_model=staging.outputs["staged_model"],
        evaluation=staging.outputs["evaluation"],
        dataset=dataset.outputs["dataset"],
        dataset_version=dataset.outputs["Output"],
        labels_digest=labels.outputs["labels_digest"],
        pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        git_commit=git_commit,
        architecture=architecture,
        target_profile=target_profile,
        parent_run_id=parent_run_id,
        config_file=config_file,
    )
    registered.set_caching_options(False)

    # The gate's verdict goes into await-approval (which returns "rejected" at once for a failed gate)
    # rather than into a dsl.If: kfp 2.17's local runner cannot evaluate a condition on a named output
    # of a multi-output step, and the approval step's single output works on both runners.
    approval = steps.await_approval(
        version=registered.outputs["version"],
        gate_passed=registered.outputs["gate_passed"],
        timeout_s=approval_timeout_s,
        poll_s=approval_poll_s,
        auto_approve=auto_approve,
        pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        parent_run_id=parent_run_id,
        config_file=config_file,
    )
    approval.set_caching_options(False)
    with dsl.If(approval.output == "approved", name="approved"):
        context = steps.prepare_image_build(image_repository=image_repository).set_caching_options(False)
        with dsl.If(image_builder == "buildah", name="build-in-cluster"):
            built = steps.buildah_build(
                context=context.outputs["context"],
                image=context.outputs["image"],
                content_hash=context.outputs["content_hash"],
                needs_build=context.outputs["needs_build"],
            ).set_caching_options(False)
            steps.deploy_model(
                version=registered.outputs["version"],
                image=context.outputs["image"],
                deploy_target=deploy_target,
                namespace=namespace,
                gitops_dir=gitops_dir,
                parent_run_id=parent_run_id,
                config_file=config_file,
            ).after(built).set_caching_options(False)
        with dsl.Else(name="build-locally"):
            local = steps.local_image_build(
                context=context.outputs["context"], image=context.outputs["image"], config_file=config_file
            ).set_caching_options(False)
            steps.deploy_model(
                version=registered.outputs["version"],
                image=context.outputs["image"],
                deploy_target=deploy_target,
                namespace=namespace,
                gitops_dir=gitops_dir,
                parent_run_id=parent_run_id,
                config_file=config_file,
            ).after(local).set_caching_options(False)

    # What only a cluster reads (the local runner ignores it): see edgeloop.pipelines.cluster.
    from kfp.dsl import pipeline_context

    from edgeloop.pipelines.cluster import configure

    for task in pipeline_context.Pipeline.get_default_pipeline().tasks.values():
        configure(task)


def parameter_types() -> dict[str, type]:
    """Pipeline parameter name -> Python type (for the CLI's ``-p KEY=VALUE``)."""
    import inspect

    sig = inspect.signature(training_pipeline.pipeline_func)
    mapping = {"str": str, "int": int, "float": float, "bool": bool, "dict": dict}
    out: dict[str, type] = {}
    for name, p in sig.parameters.items():
        ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "str")
        out[name] = mapping.get(ann, str)
    return out
