"""KFP components of the training pipeline: thin wrappers over edgeloop's library functions.

Every body imports what it needs (nothing heavy at module import, so compiling
stays fast) and calls one typed library function. Settings come from
``config_file`` (a pipeline parameter; empty = the environment: ``EDGELOOP_*``
variables, ``EDGELOOP_CONFIG``), never from values baked in at compile time.
On a cluster the image ``PIPELINE_IMAGE`` holds the edgeloop package; locally
the subprocess runner uses this venv and inherits the environment.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import (
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
)

# The images every step runs in, built from this repository by `make images` (pipelines/Dockerfile,
# pipelines/builder.Dockerfile). The compiled YAML names these tags; `edgeloop pipeline compile|submit|
# schedule --images build/images/index.json` pins them by digest.
# The image holds kfp: steps install nothing at run time (install_kfp_package=False).
PIPELINE_IMAGE = "ghcr.io/edgeloop/edgeloop-pipeline:0.1.0"  # no torch
TRAINING_IMAGE = "ghcr.io/edgeloop/edgeloop-training:0.1.0"  # edgeloop-pipeline + torch
BUILDER_IMAGE = "ghcr.io/edgeloop/edgeloop-builder:0.1.0"


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def snapshot_labels(project: str, label_policy: str, config_file: str, pipeline_run: str = "") -> NamedTuple(  # type: ignore[valid-type]
    "LabelSnapshot",
    [("manifest_uri", str), ("labels_digest", str), ("labeled_images", int), ("mlflow_run_id", str)],
):
    """Export the labels from Label Studio into a content-addressed manifest (never cached); open the
    MLflow run of ``pipeline_run`` (output mlflow_run_id), under which every step's run nests."""
    from edgeloop.pipelines.tasks import snapshot_labels_task

    return snapshot_labels_task(project, label_policy, config_file, pipeline_run)


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def build_dataset(manifest_uri: str, split_fractions: str, config_file: str, dataset: Output[Dataset]) -> str:
    """Fetch, verify and split the labeled images (train/val/test shares); returns the dataset version.
    Cached by manifest digest and fractions."""
    from edgeloop.pipelines.tasks import build_dataset_task

    return build_dataset_task(manifest_uri, split_fractions, config_file, dataset)


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def train_model(
    dataset: Input[Dataset],
    architecture: str,
    epochs: int,
    batch_size: int,
    image_size: int,
    learning_rate: float,
    nproc_per_node: int,
    seed: int,
    config_file: str,
    model: Output[Model],
    metrics: Output[Metrics],
) -> NamedTuple("Training", [("val_score", float), ("mlflow_run_id", str)]):  # type: ignore[valid-type]
    """DDP training under torchrun of a classifier or a detector (the dataset's task); returns the
    validation score (accuracy; mAP@0.5 for a detector) and the MLflow run of the training (the
    dataset is its input)."""
    from edgeloop.pipelines.tasks import train_task

    return train_task(
        dataset,
        architecture,
        epochs,
        batch_size,
        image_size,
        learning_rate,
        nproc_per_node,
        seed,
        config_file,
        model,
        metrics,
    )


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def export_onnx(
    model: Input[Model], dataset: Input[Dataset], onnx_model: Output[Model], parity: Output[Metrics]
) -> str:
    """Export the fp32 ONNX model with its card and torch parity check; returns the model digest."""
    from edgeloop.pipelines.tasks import export_task

    return export_task(model, dataset, onnx_model, parity)


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def select_precision(
    onnx_model: Input[Model],
    dataset: Input[Dataset],
    target_profile: str,
    chosen_model: Output[Model],
    evidence: Output[Metrics],
) -> str:
    """Pick fp32 or int8 by measurement for the target hardware profile; returns the precision."""
    from edgeloop.pipelines.tasks import select_precision_task

    return select_precision_task(onnx_model, dataset, target_profile, chosen_model, evidence)


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def staging_evaluation(
    dataset: Input[Dataset],
    candidate: Input[Model],
    reference: Input[Model],
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
    staged_model: Output[Model],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    confusion_matrix: Output[ClassificationMetrics],
    report: Output[Markdown],
) -> bool:
    """Serve the candidate on the real model server, measure, compare with the champion, apply the rules."""
    from edgeloop.pipelines.tasks import staging_evaluation_task

    return staging_evaluation_task(
        dataset,
        candidate,
        reference,
        min_accuracy,
        min_map_50,
        max_regression,
        min_class_recall,
        class_recall_floors,
        max_latency_p95_ms,
        max_ece,
        max_parity_diff,
        min_top1_agreement,
        min_eval_images,
        regression_alpha,
        latency_requests,
        parent_run_id,
        train_run_id,
        config_file,
        staged_model,
        evaluation,
        metrics,
        confusion_matrix,
        report,
    )


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def register_model(
    staged_model: Input[Model],
    evaluation: Input[Artifact],
    dataset: Input[Dataset],
    dataset_version: str,
    labels_digest: str,
    pipeline_run: str,
    git_commit: str,
    architecture: str,
    target_profile: str,
    parent_run_id: str,
    config_file: str,
) -> NamedTuple(  # type: ignore[valid-type]
    "Registration", [("version", str), ("gate_passed", bool), ("evidence_digest", str)]
):
    """Register the version in MLflow with its evidence; alias candidate if the gate passed, else rejected."""
    from edgeloop.pipelines.tasks import register_task

    return register_task(
        staged_model,
        evaluation,
        dataset,
        dataset_version,
        labels_digest,
        pipeline_run,
        git_commit,
        architecture,
        target_profile,
        parent_run_id,
        config_file,
    )


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def await_approval(
    version: str,
    gate_passed: bool,
    timeout_s: float,
    poll_s: float,
    auto_approve: bool,
    pipeline_run: str,
    parent_run_id: str,
    config_file: str,
) -> str:
    """Wait for an approver's signed decision (edgeloop approve/reject); returns approved|rejected.
    A version that failed the automatic gate is rejected at once (never shown for approval)."""
    from edgeloop.pipelines.tasks import await_approval_task

    return await_approval_task(
        version, gate_passed, timeout_s, poll_s, auto_approve, pipeline_run, parent_run_id, config_file
    )


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def prepare_image_build(image_repository: str, context: Output[Artifact]) -> NamedTuple(  # type: ignore[valid-type]
    "BuildContext", [("image", str), ("content_hash", str), ("needs_build", bool)]
):
    """Write the serving image's build context; the tag is a hash of its content."""
    from edgeloop.pipelines.tasks import prepare_image_build_task

    return prepare_image_build_task(image_repository, context)


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def local_image_build(context: Input[Artifact], image: str, config_file: str) -> str:
    """Build with docker/buildah/podman when one works here; else record why it was skipped."""
    from edgeloop.pipelines.tasks import local_image_build_task

    return local_image_build_task(context, image, config_file)


@dsl.container_component
def buildah_build(context: Input[Artifact], image: str, content_hash: str, needs_build: bool):
    """Build and push the serving image in-cluster with buildah, rootless (user 1000, chroot isolation,
    vfs storage). Skipped only when the tag's image already carries this content hash."""
    return dsl.ContainerSpec(
        image=BUILDER_IMAGE,
        command=["/bin/sh", "-c"],
        args=[
            'set -eu; if [ "$3" != "true" ] && [ "$3" != "True" ]; then '
            'echo "image $1 carries content hash $2: reused"; exit 0; fi; '
            'mkdir -p "$HOME/ctx" && tar -xzf "$0" -C "$HOME/ctx"; '
            'buildah build --isolation chroot --storage-driver vfs --label "io.edgeloop.content-hash=$2" '
            '-f "$HOME/ctx/edgeloop/serving/Dockerfile" -t "$1" "$HOME/ctx"; '
            'buildah push --storage-driver vfs --digestfile "$HOME/digest" "$1"; '
            'echo "pushed $1@$(cat "$HOME/digest")"',
            context.path,
            image,
            content_hash,
            needs_build,
        ],
    )


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def deploy_model(
    version: str,
    image: str,
    deploy_target: str,
    namespace: str,
    gitops_dir: str,
    parent_run_id: str,
    config_file: str,
) -> str:
    """Render the InferenceService for the approved version, apply it (or write it for Flux), move champion."""
    from edgeloop.pipelines.tasks import deploy_task

    return deploy_task(version, image, deploy_target, namespace, gitops_dir, parent_run_id, config_file)
