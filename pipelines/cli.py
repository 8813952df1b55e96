"""`edgeloop pipeline compile|run|submit|schedule` (the human gate: :mod:`edgeloop.pipelines.approval_cli`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgeloop.core.errors import user_errors

if TYPE_CHECKING:
    from edgeloop.core.config import Settings

_param = click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="A pipeline parameter (repeatable), e.g. -p epochs=5 -p min_accuracy=0.8.",
)


def _parse_params(params: tuple[str, ...]) -> dict[str, object]:
    from edgeloop.pipelines.training_pipeline import parameter_types

    types = parameter_types()
    out: dict[str, object] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--param")
        if key not in types:
            raise click.BadParameter(
                f"unknown pipeline parameter {key!r}; known: {', '.join(sorted(types))}", param_hint="--param"
            )
        kind = types[key]
        try:
            if kind is bool:
                out[key] = value.lower() in ("1", "true", "yes", "on")
            elif kind is dict:
                out[key] = json.loads(value)  # e.g. -p 'class_recall_floors={"stain": 0.8}'
            else:
                out[key] = kind(value)
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            raise click.BadParameter(f"{key}: {e}", param_hint="--param") from e
    return out


def _for_model(settings: Settings, model: str | None) -> Settings:
    if not model or model == settings.mlflow.registered_model:
        return settings
    return settings.model_copy(
        update={"mlflow": settings.mlflow.model_copy(update={"registered_model": model})}
    )


_images_opt = click.option(
    "--images",
    type=click.Path(path_type=Path),
    default=None,
    help="index.json written by `make images`: pin every image of the pipeline by digest.",
)
_pinned_images = click.option(
    "--images",
    type=click.Path(path_type=Path),
    default=Path("build/images/index.json"),
    show_default=True,
    help="index.json written by `make images` (pushed to the registry): every image is pinned by digest.",
)
_service_account = click.option(
    "--service-account",
    default="edgeloop-pipeline",
    show_default=True,
    help="Kubernetes service account of every step (manifests/base/platform/serviceaccounts.yaml).",
)


@click.group()
def pipeline() -> None:
    """The Kubeflow training pipeline: label import -> dataset -> DDP training -> ONNX -> staging
    evaluation -> registry + human gate -> image build -> deploy."""


@pipeline.command()
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output YAML [default: ./training_pipeline.yaml].",
)
@_images_opt
@user_errors
def compile(out: Path | None, images: Path | None) -> None:  # noqa: A001 - the command's name
    """Compile the pipeline to KFP IR YAML (what you upload to Kubeflow)."""
    from edgeloop.pipelines.runner import compile_pipeline

    path = compile_pipeline(out, images=images)
    click.echo(f"wrote {path}")


@pipeline.command()
@click.option(
    "--local",
    "local",
    is_flag=True,
    required=True,
    help="Run on this machine with the KFP local subprocess runner (against the local stack).",
)
@click.option("--auto-approve", is_flag=True, help="Approve the candidate automatically (recorded as such).")
@_param
@click.option(
    "--pipeline-root",
    type=click.Path(path_type=Path),
    default=None,
    help="Where task outputs go (default: <state_dir>/kfp-local).",
)
@click.option(
    "--containers",
    is_flag=True,
    help="Run every step in its image (edgeloop-pipeline, edgeloop-training; built first if changed) with "
    "kfp's DockerRunner on docker or podman, settings passed as the cluster's Secrets pass them.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.pass_obj
@user_errors
def run(
    obj,
    local: bool,
    auto_approve: bool,
    params: tuple[str, ...],
    pipeline_root: Path | None,
    containers: bool,
    as_json: bool,
) -> None:
    """Run the whole pipeline locally, end to end."""
    from edgeloop.pipelines.runner import run_in_containers, run_local

    args = _parse_params(params)
    if auto_approve:
        args["auto_approve"] = True
    import sys

    # with --json, the steps' logs go to stderr so stdout holds only the JSON
    run = run_in_containers if containers else run_local
    outcome = run(obj.settings, args, pipeline_root=pipeline_root, log_stream=sys.stderr if as_json else None)
    if as_json:
        click.echo(json.dumps(outcome.as_dict(), indent=2, default=str))
    else:
        click.echo(outcome.summary())
    if not outcome.succeeded:
        raise SystemExit(1)


@pipeline.command()
@click.option("--host", required=True, help="Kubeflow Pipelines API URL, e.g. http://localhost:8080.")
@_param
@click.option("--experiment", default="edgeloop", show_default=True)
@click.option("--run-name", default=None)
@click.option("--namespace", default=None, help="Kubeflow profile namespace (multi-user installs).")
@_pinned_images
@_service_account
@click.pass_obj
@user_errors
def submit(
    obj,
    host: str,
    params: tuple[str, ...],
    experiment: str,
    run_name: str | None,
    namespace: str | None,
    images: Path,
    service_account: str,
) -> None:
    """Upload the compiled pipeline (images pinned by digest) and start a run (kfp.Client)."""
    from edgeloop.pipelines.runner import submit_run

    url = submit_run(
        host,
        _parse_params(params),
        experiment=experiment,
        run_name=run_name,
        namespace=namespace,
        images=images,
        service_account=service_account,
    )
    click.echo(f"started: {url}")


@pipeline.command()
@click.option("--host", required=True, help="Kubeflow Pipelines API URL.")
@click.option("--cron", required=True, help="Cron expression with seconds, e.g. '0 0 3 * * *' (03:00 daily).")
@_param
@click.option("--experiment", default="edgeloop", show_default=True)
@click.option("--name", "job_name", default="edgeloop-retrain", show_default=True)
@click.option("--max-concurrency", default=1, show_default=True)
@click.option("--namespace", default=None)
@_pinned_images
@_service_account
@click.pass_obj
@user_errors
def schedule(
    obj,
    host: str,
    cron: str,
    params: tuple[str, ...],
    experiment: str,
    job_name: str,
    max_concurrency: int,
    namespace: str | None,
    images: Path,
    service_account: str,
) -> None:
    """Create a recurring run (label import is never cached, so each run sees the latest labels)."""
    from edgeloop.pipelines.runner import schedule_runs

    job_id = schedule_runs(
        host,
        cron,
        _parse_params(params),
        experiment=experiment,
        job_name=job_name,
        max_concurrency=max_concurrency,
        namespace=namespace,
        images=images,
        service_account=service_account,
    )
    click.echo(f"recurring run {job_name} created (id {job_id}), cron '{cron}'")


# -- container images ---------------------------------------------------------------------------------------------
@click.group()
def images() -> None:
    """The container images (edgeloop-serving, edgeloop-pipeline, edgeloop-builder): build with docker or
    podman, tagged by content hash, saved as OCI archives with an index of digests."""


@images.command("build")
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=Path("build/images"),
    show_default=True,
    help="Where the OCI archives and index.json go.",
)
@click.option(
    "--only",
    "names",
    multiple=True,
    help="Build only this image (repeatable); edgeloop-serving-gpu is built only when named here.",
)
@click.option(
    "--base-image",
    default=None,
    help="Base image [default: python:3.11-slim-bookworm if present or pullable, else the Debian base "
    "built with `edgeloop images base`].",
)
@click.option(
    "--torch-index-url", default=None, help="Index with CPU torch wheels [default: PyTorch's CPU index]."
)
@click.option(
    "--torch-wheels",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="A directory of wheels pip may use for torch (a build context; nothing else is copied).",
)
@click.option(
    "--kubectl",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="The kubectl binary (kustomize built in) the pipeline image gets [default: the one on PATH; none: "
    "built without, deploy steps fail].",
)
@click.option(
    "--engine", type=click.Choice(["docker", "podman"]), default=None, help="[default: whichever works]"
)
@user_errors
def images_build(
    out: Path,
    names: tuple[str, ...],
    base_image: str | None,
    torch_index_url: str | None,
    torch_wheels: str | None,
    kubectl: str | None,
    engine: str | None,
) -> None:
    """Build every image; an image whose content hash is unchanged is not rebuilt."""
    from edgeloop.pipelines.image_build import DEFAULT_IMAGES, build_images, kubectl_source, torch_source

    torch = torch_source(torch_index_url, torch_wheels) if (torch_index_url or torch_wheels) else None
    build_images(
        out,
        tuple(names) or DEFAULT_IMAGES,
        engine=engine,
        base_image=base_image,
        torch=torch,
        kubectl=kubectl_source(kubectl) if kubectl else None,
        log=click.echo,
    )
    click.echo(f"index: {out / 'index.json'}")


@images.command("base")
@click.option(
    "--engine", type=click.Choice(["docker", "podman"]), default=None, help="[default: whichever works]"
)
@click.option("--mirror", default=None, help="Debian mirror [default: the first one apt uses here].")
@user_errors
def images_base(engine: str | None, mirror: str | None) -> None:
    """Build the python:3.11-slim equivalent from Debian bookworm's packages (debootstrap, as root)."""
    from edgeloop.pipelines.image_build import DEBIAN_BASE_IMAGE, build_base_image, container_engine

    click.echo(build_base_image(engine or container_engine(), DEBIAN_BASE_IMAGE, mirror=mirror))
