"""`edgeloop batch score|compile`: score a whole blob prefix of images with a registered model."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from edgeloop.core.errors import user_errors


@click.group()
def batch() -> None:
    """Batch scoring: every image under a blob prefix through a model; results, a summary and a
    drift report back to blob storage. Re-running the same command resumes (finished shards are skipped)."""


@batch.command()
@click.option("--container", required=True, help="Blob container holding the images.")
@click.option("--prefix", default="", help="Blob name prefix of the images [default: the whole container].")
@click.option(
    "--model",
    required=True,
    help="NAME@ALIAS (e.g. edgeloop-inspection@champion), NAME/VERSION, or a models:/, az:// URI or directory.",
)
@click.option(
    "--out",
    required=True,
    help="Where results go: az://CONTAINER/PREFIX, or PREFIX in the images' container. One run per --out.",
)
@click.option("--shard-size", default=256, show_default=True, help="Images per shard (the unit of resume).")
@click.option(
    "--pipeline",
    "as_pipeline",
    is_flag=True,
    help="Run it as the Kubeflow batch pipeline on this machine (kfp.local) instead of in this process.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
@user_errors
def score(
    obj: Any,
    container: str,
    prefix: str,
    model: str,
    out: str,
    shard_size: int,
    as_pipeline: bool,
    as_json: bool,
) -> None:
    """Score every .png/.jpg under az://CONTAINER/PREFIX with MODEL.

    Writes OUT/shards/NNNNN.jsonl (one line per image: blob, label, score, probabilities, model
    version and digest, or why it could not be scored), a marker per finished shard, and
    OUT/summary.json (counts per label, confidence histogram, drift against the model's reference
    profile). Killed half-way? Run the same command again: finished shards are skipped and no image
    is scored twice into the results.
    """
    settings = obj.settings
    if as_pipeline:
        from edgeloop.pipelines.batch_pipeline import run_batch_pipeline_local

        params = {
            "container": container,
            "prefix": prefix,
            "model": model,
            "out": out,
            "shard_size": shard_size,
        }
        summary = run_batch_pipeline_local(settings, params)
        click.echo(json.dumps(summary, indent=1) if as_json else f"summary at {summary['out']}/summary.json")
        return
    from edgeloop.components.batch_score import run_batch

    result = run_batch(settings, container, prefix, model, out, shard_size, progress=sys.stderr.isatty())
    click.echo(json.dumps(result.as_dict(), indent=1) if as_json else result.text())


@batch.command()
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output YAML [default: ./batch_pipeline.yaml].",
)
def compile(out: Path | None) -> None:  # noqa: A001 - the command's name
    """Compile the batch-scoring pipeline to KFP IR YAML (what you upload to Kubeflow)."""
    from edgeloop.pipelines.batch_pipeline import compile_batch_pipeline

    click.echo(f"wrote {compile_batch_pipeline(out)}")
