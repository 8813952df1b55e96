"""`edgeloop demo`: the whole loop on the sample data, locally."""

from __future__ import annotations

import click

from edgeloop.errors import user_errors


@click.command()
@click.option("--per-class", default=60, show_default=True, help="Sample images per class.")
@click.option("--epochs", default=None, type=int, help="Training epochs (default: the pipeline's).")
@click.pass_obj
@user_errors
def demo(obj, per_class: int, epochs: int | None) -> None:
    """Stack up, seed the sample data, run the pipeline with auto-approval, serve the champion.

    Prints where to look at the end: MLflow UI, Label Studio UI, the endpoint and a sample prediction.
    """
    settings = obj.settings
    from pipelines.demo import run_demo

    run_demo(settings, per_class=per_class, epochs=epochs)
