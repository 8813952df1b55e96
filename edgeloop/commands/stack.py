"""`edgeloop stack up|down|status|logs`."""

from __future__ import annotations

import json

import click

from edgeloop.core.errors import user_errors
from edgeloop.local.stack import SERVICES, Stack, prepare_labelstudio_template

_only = click.option(
    "--only",
    "only",
    multiple=True,
    type=click.Choice(SERVICES),
    help="Act on this service only (repeatable). Default: all four.",
)


@click.group()
def stack() -> None:
    """The local stack: Azurite (blob), MLflow (tracking + registry), Label Studio, Mosquitto (MQTT).

    Everything binds 127.0.0.1 and keeps its data under the state dir
    (EDGELOOP_STATE_DIR, default ./.edgeloop). Ports are picked free on the
    first `up` and kept; set EDGELOOP_STACK__PORTS__<SERVICE> to choose them.
    """


@stack.command()
@_only
@click.pass_obj
@user_errors
def up(obj, only: tuple[str, ...]) -> None:
    """Start the services (a no-op for those already running) and wait until ready."""
    statuses = Stack(obj.settings).up(only or SERVICES, progress=lambda m: click.echo(m, err=True))
    _print_table([s.as_dict() for s in statuses])


@stack.command()
@_only
@click.pass_obj
@user_errors
def down(obj, only: tuple[str, ...]) -> None:
    """Stop the services: SIGTERM to each process group, SIGKILL after the grace period. Data is kept."""
    Stack(obj.settings).down(only or SERVICES, progress=lambda m: click.echo(m, err=True))


@stack.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
@click.pass_obj
def status(obj, as_json: bool) -> None:
    """Each service's URL, state (ready/starting/stopped/dead) and data dir."""
    rows = [s.as_dict() for s in Stack(obj.settings).status()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        _print_table(rows)


@stack.command()
@click.argument("service", type=click.Choice(SERVICES))
@click.option("-n", "lines", default=40, show_default=True)
@click.pass_obj
def logs(obj, service: str, lines: int) -> None:
    """Show the last lines of a service's log."""
    path = Stack(obj.settings).log_file(service)
    if not path.exists():
        raise click.ClickException(f"no log yet at {path}")
    click.echo("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))


@stack.command("prepare")
@click.pass_obj
@user_errors
def prepare(obj) -> None:
    """Pre-migrate a Label Studio data dir once, so later first starts take seconds (run by `make setup`)."""
    click.echo(f"Label Studio template ready at {prepare_labelstudio_template(obj.settings)}")


def _print_table(rows: list[dict]) -> None:
    cols = ("name", "state", "url", "data_dir")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in cols))
    for r in rows:
        click.echo("  ".join(str(r[c]).ljust(widths[c]) for c in cols))
