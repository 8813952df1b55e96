"""The batch-scoring pipeline (KFP v2): every image under a blob prefix through a registered model.

    plan-batch (listing -> shards, manifest at OUT) -> score-shard x N (ParallelFor, each writes its
      results then its marker) -> summarize-batch (counts, confidence histogram, drift vs the
      model's reference profile; OUT/summary.json)

The steps are thin wrappers over :mod:`edgeloop.components.batch_score`. Nothing is cached by KFP:
a re-run of the same parameters resumes from the markers in blob storage instead (finished
shards are skipped, unfinished ones scored again whole), which also holds across a killed run.
Nothing is read from the environment at compile time; endpoints reach the steps at run time
through ``config_file`` / ``EDGELOOP_*`` variables.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kfp import dsl
from kfp.dsl import Artifact, Metrics, Output

from edgeloop.pipelines.steps import PIPELINE_IMAGE

if TYPE_CHECKING:
    from edgeloop.core.config import Settings

PIPELINE_NAME = "edgeloop-batch-scoring"
PARALLELISM = 4  # shards scored at once on a cluster (the local runner runs them one after another)
COMPILED = Path(__file__).resolve().parent / "compiled" / "batch_pipeline.yaml"


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def plan_batch(container: str, prefix: str, model: str, out: str, shard_size: int, config_file: str) -> list:
    """List the images under the prefix and cut them into shards (or resume the plan at ``out``);
    returns the shard indices."""
    from edgeloop.components.batch_score import plan_task

    return plan_task(container, prefix, model, out, shard_size, config_file)


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def score_shard(
    container: str,
    prefix: str,
    model: str,
    out: str,
    shard_size: int,
    shard: int,
    config_file: str,
    metrics: Output[Metrics],
) -> int:
    """Score one shard; skipped when an earlier run left its marker."""
    from edgeloop.components.batch_score import score_task

    return score_task(container, prefix, model, out, shard_size, shard, config_file, metrics)


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def summarize_batch(
    container: str,
    prefix: str,
    model: str,
    out: str,
    shard_size: int,
    shard_images: list,
    config_file: str,
    summary: Output[Artifact],
    metrics: Output[Metrics],
) -> bool:
    """Counts per label, confidence histogram, drift report; returns whether the batch drifted."""
    from edgeloop.components.batch_score import summarize_task

    return summarize_task(
        container, prefix, model, out, shard_size, shard_images, config_file, summary, metrics
    )


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Score every image under a blob prefix with a registered model; results, summary and "
    "drift report back to blob storage; re-runs resume.",
)
def batch_pipeline(
    container: str,
    prefix: str,
    model: str,
    out: str,
    shard_size: int = 256,
    config_file: str = "",
) -> None:
    """container/prefix: the images; model: NAME@ALIAS or NAME/VERSION (or a models:/ / az:// URI);
    out: az://CONTAINER/PREFIX (or PREFIX in the images' container) for the results."""
    plan = plan_batch(
        container=container,
        prefix=prefix,
        model=model,
        out=out,
        shard_size=shard_size,
        config_file=config_file,
    )
    plan.set_caching_options(False)
    with dsl.ParallelFor(plan.output, parallelism=PARALLELISM) as shard:
        scored = score_shard(
            container=container,
            prefix=prefix,
            model=model,
            out=out,
            shard_size=shard_size,
            shard=shard,
            config_file=config_file,
        )
        scored.set_caching_options(False)
    summary = summarize_batch(
        container=container,
        prefix=prefix,
        model=model,
        out=out,
        shard_size=shard_size,
        shard_images=dsl.Collected(scored.outputs["Output"]),
        config_file=config_file,
    )
    summary.set_caching_options(False)

    # What only a cluster reads (Secrets as EDGELOOP_* variables, non-root, resources, retries, the
    # NetworkPolicy role label): the same policy table as the training pipeline's steps.
    from kfp.dsl import pipeline_context

    from edgeloop.pipelines.cluster import configure

    for task in pipeline_context.Pipeline.get_default_pipeline().tasks.values():
        configure(task)


def compile_batch_pipeline(out: Path | None = None) -> Path:
    from kfp import compiler

    out = Path(out) if out else Path("batch_pipeline.yaml")
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(batch_pipeline, str(out))
    return out


def run_batch_pipeline_local(
    settings: "Settings", params: dict[str, Any], pipeline_root: Path | None = None
) -> dict[str, Any]:
    """Run the pipeline with ``kfp.local.SubprocessRunner`` against ``settings``' stack; returns the summary
    the last step wrote (``OUT/summary.json``)."""
    import json

    from kfp import local

    from edgeloop.components.batch_score import SUMMARY, parse_out
    from edgeloop.core.blob import BlobStore, BlobUri
    from edgeloop.pipelines.runner import scoped_environ

    root = Path(pipeline_root) if pipeline_root else settings.ensure_state_dir() / "kfp-local"
    root.mkdir(parents=True, exist_ok=True)
    env = {"EDGELOOP_STATE_DIR": str(settings.state_dir)}
    if settings.config_file:
        env["EDGELOOP_CONFIG"] = str(settings.config_file)
    with scoped_environ(env):
        local.init(
            runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True
        )
        batch_pipeline(**params)
    container, prefix = parse_out(params["out"], params["container"])
    data = BlobStore.from_settings(settings).download(BlobUri(container, f"{prefix}/{SUMMARY}"))
    return dict(json.loads(data))
