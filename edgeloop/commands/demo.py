"""`edgeloop demo`: the whole loop on the sample data, locally."""

from __future__ import annotations

import click

from edgeloop.core.errors import user_errors
from edgeloop.local.demo import DEMO_PER_CLASS


@click.command()
@click.option(
    "--per-class",
    default=DEMO_PER_CLASS,
    show_default=True,
    help="Sample images per class (fewer than ~200 leave the test split too small for the gate).",
)
@click.option("--epochs", default=None, type=int, help="Training epochs (default: the demo's).")
@click.option(
    "--serve-seconds",
    default=0.0,
    show_default=True,
    help="Keep the champion's server up this long at the end, to try it yourself.",
)
@click.pass_obj
@user_errors
def demo(obj, per_class: int, epochs: int | None, serve_seconds: float) -> None:
    """Stack up, seed the sample data, run the pipeline with auto-approval, serve the champion.

    Prints where to look at the end: MLflow UI, Label Studio UI, the endpoint and a sample prediction.
    """
    settings = obj.settings
    from edgeloop.local.demo import run_demo

    params = {"epochs": epochs} if epochs else None
    run_demo(settings, params=params, per_class=per_class, serve_seconds=serve_seconds, echo=click.echo)
