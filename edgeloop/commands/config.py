"""`edgeloop config show`."""

from __future__ import annotations

import json

import click


@click.group()
def config() -> None:
    """Inspect the effective settings."""


@config.command()
@click.pass_obj
def show(obj) -> None:
    """Print the settings as JSON; secrets show as '**********'."""
    click.echo(json.dumps(obj.settings.redacted(), indent=2, default=str))
