"""`edgeloop labeling backend serve|connect|predict`: the champion's predictions as Label Studio pre-annotations."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgeloop.core.errors import EdgeloopError, user_errors


@click.group()
def labeling() -> None:
    """Label Studio helpers: the ML backend that pre-annotates every task."""


@labeling.group()
def backend() -> None:
    """A Label Studio ML backend serving the champion's predictions (label-studio-ml protocol).

    Start it with `serve --connect`, or `serve` here and `connect --url URL` from anywhere that
    reaches Label Studio. Label Studio then asks it for a prediction whenever a task without one is
    opened or listed, so seeded, imported and flagged tasks all arrive pre-annotated; `predict`
    fetches predictions for every task at once.
    """


def _password(settings, password_file: Path | None) -> tuple[str, str]:
    user, password = settings.ml_backend_credentials()
    if password_file is not None:
        password = password_file.read_text().strip()
        if not password:
            raise EdgeloopError(f"{password_file} is empty: put the backend's password in it")
    return user, password


_project = click.option(
    "--project", default=None, help="Label Studio project title (default: labelstudio.project_title)."
)
_password_file = click.option(
    "--password-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="File holding the Basic-auth password (default: labelstudio.ml_backend_password, else the "
    "generated secret in the state dir). The user is labelstudio.ml_backend_user.",
)


@backend.command()
@click.option(
    "--model",
    "model_name",
    default=None,
    help="Registered model (default: mlflow.registered_model), followed at --alias.",
)
@click.option("--alias", default="champion", show_default=True, help="Registry alias to serve.")
@click.option(
    "--model-dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="Serve this exported model directory instead of the registry's alias.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=0, show_default=True, type=int, help="Port (0: a free one).")
@click.option(
    "--refresh",
    "refresh_s",
    default=30.0,
    show_default=True,
    help="Seconds between checks of the alias for a new version.",
)
@click.option(
    "--connect",
    "connect_to",
    is_flag=True,
    help="Also connect it to the Label Studio project once it listens.",
)
@click.option(
    "--advertise-url",
    default=None,
    help="URL Label Studio reaches the backend at, with --connect (default: the bound address).",
)
@_project
@_password_file
@click.pass_obj
@user_errors
def serve(
    obj,
    model_name,
    alias,
    model_dir,
    host,
    port,
    refresh_s,
    connect_to,
    advertise_url,
    project,
    password_file,
) -> None:
    """Serve predictions to Label Studio until interrupted (HTTP Basic auth on every route)."""
    import threading

    from edgeloop.labeling.backend import bind, build_predictor, connect, create_app, serve_app, url_of

    settings = obj.settings
    credentials = _password(settings, password_file)
    uri = str(model_dir) if model_dir else f"models:/{model_name or settings.mlflow.registered_model}@{alias}"
    predictor = build_predictor(settings, uri, refresh_s)
    version = predictor.source.current().version  # fail now, not on Label Studio's first call
    sock = bind(host, port)
    url = url_of(sock)
    click.echo(f"ML backend for {version} ({uri}) listening on {url}", err=True)
    click.echo(url)  # alone on stdout: what a script reads
    if connect_to:

        def later() -> None:
            try:
                c = connect(settings, advertise_url or url, project, credentials=credentials)
                click.echo(f"connected to Label Studio project {c.project_id}: {c.state}", err=True)
            except EdgeloopError as e:
                click.echo(f"error: {e}", err=True)

        threading.Timer(1.0, later).start()  # once the server below accepts connections
    serve_app(create_app(predictor, credentials), sock)


@backend.command("connect")
@click.option(
    "--url", required=True, help="Where Label Studio reaches the backend, e.g. http://127.0.0.1:9090."
)
@click.option("--title", default="edgeloop champion", show_default=True, help="Name shown in Label Studio.")
@click.option(
    "--predict/--no-predict", default=True, show_default=True, help="Then fetch predictions for all tasks."
)
@_project
@_password_file
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@user_errors
def connect_cmd(obj, url, title, predict, project, password_file, as_json) -> None:
    """Connect a running backend to the Label Studio project (updates an existing connection)."""
    from dataclasses import asdict

    from edgeloop.labeling.backend import connect, request_predictions

    settings = obj.settings
    c = connect(settings, url, project, title=title, credentials=_password(settings, password_file))
    out = asdict(c)
    if predict:
        out["tasks_processed"] = request_predictions(settings, project)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(
        f"{'connected' if c.created else 'updated'} ML backend {c.backend_id} ({url}) in project "
        f"{c.project_id}: {c.state}, model {c.model_version}"
        + (f"; predictions requested for {out['tasks_processed']} tasks" if predict else "")
    )


@backend.command()
@_project
@click.pass_obj
@user_errors
def predict(obj, project) -> None:
    """Fetch the connected backend's predictions for every task that has none from its current model."""
    from edgeloop.labeling.backend import request_predictions

    n = request_predictions(obj.settings, project)
    click.echo(f"Label Studio requested predictions for the project's {n} tasks")
