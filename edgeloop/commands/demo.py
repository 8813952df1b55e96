"""`edgeloop demo`: the whole loop on the sample data, locally."""

from __future__ import annotations

import click

from edgeloop.core.errors import user_errors
from edgeloop.local.demo import DEMO_DETECTION_IMAGES, DEMO_PER_CLASS, TASKS


@click.command()
@click.option(
    "--per-class",
    default=DEMO_PER_CLASS,
    show_default=True,
    help="Sample images per class (fewer than ~200 leave the test split too small for the gate).",
)
@click.option(
    "--task",
    type=click.Choice(TASKS),
    default="classification",
    show_default=True,
    help="classification: one class per image; detection: boxes of 0-3 defects per image (a RectangleLabels "
    "project and a registered model of its own, edgeloop-detection).",
)
@click.option(
    "--images",
    default=DEMO_DETECTION_IMAGES,
    show_default=True,
    help="Sample images with --task detection (fewer than ~450 leave the test split under the gate's 200).",
)
@click.option("--epochs", default=None, type=int, help="Training epochs (default: the task's).")
@click.option(
    "--serve-seconds",
    default=0.0,
    show_default=True,
    help="Keep the champion's server up this long at the end, to try it yourself.",
)
@click.pass_obj
@user_errors
def demo(obj, per_class: int, task: str, images: int, epochs: int | None, serve_seconds: float) -> None:
    """Stack up, seed the sample data, run the pipeline with auto-approval, serve the champion.

    Prints where to look at the end: MLflow UI, Label Studio UI, the endpoint and a sample prediction
    (a classifier's label, or a detector's boxes).
    """
    settings = obj.settings
    from edgeloop.local.demo import run_demo

    params = {"epochs": epochs} if epochs else None
    run_demo(
        settings,
        params=params,
        per_class=per_class,
        task=task,
        images=images,
        serve_seconds=serve_seconds,
        echo=click.echo,
    )
