"""`edgeloop labels|dataset|train`: the training path from the command line (heavy imports stay lazy)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgeloop.components.defaults import (
    ARCHS,
    SPLIT_FRACTIONS,
    TRAINING,
    PrecisionBounds,
    format_fractions,
    parse_fractions,
)
from edgeloop.core.errors import user_errors

_BOUNDS = PrecisionBounds()


@click.group()
def labels() -> None:
    """Import annotations from Label Studio into a label manifest (JSONL)."""


@labels.command("import")
@click.option(
    "--project", default=None, help="Label Studio project title (default: labelstudio.project_title)."
)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Manifest path (default: <state_dir>/training/manifest.jsonl).",
)
@click.option(
    "--policy",
    type=click.Choice(["latest", "majority"]),
    default="latest",
    show_default=True,
    help="Several annotations per task: the latest wins, or the majority (ties are flagged and left out).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
@user_errors
def import_(obj, project: str | None, out: Path | None, policy: str, as_json: bool) -> None:
    """Export the project's annotations (and predictions) and write the manifest."""
    from edgeloop.components.labels import import_labels

    out = out or obj.settings.state_dir / "training" / "manifest.jsonl"
    report = import_labels(obj.settings, project, out, policy)
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else f"{report.summary()}\nmanifest: {out}")


@click.group()
def dataset() -> None:
    """Build a versioned dataset (fetched, verified, split by content hash) from a label manifest."""


@dataset.command("build")
@click.option("-m", "--manifest", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Dataset directory (default: <state_dir>/training/dataset).",
)
@click.option("--no-upload", is_flag=True, help="Do not store the index in blob storage.")
@click.option("--no-mlflow", is_flag=True, help="Do not log the dataset to MLflow.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@user_errors
def build(obj, manifest: Path, out: Path | None, no_upload: bool, no_mlflow: bool, as_json: bool) -> None:
    """Fetch the manifest's images, exclude corrupt ones, split, version, store and log."""
    from edgeloop.components.dataset import build_dataset

    out = out or obj.settings.state_dir / "training" / "dataset"
    info = build_dataset(obj.settings, manifest, out, upload=not no_upload, log_mlflow=not no_mlflow)
    if as_json:
        click.echo(json.dumps(info.as_dict(), indent=2))
        return
    click.echo(info.summary())
    for e in info.excluded:
        click.echo(f"excluded {e['image']}: {e['reason']}")
    for w in info.warnings:
        click.echo(f"warning: {w}")


@click.command()
@click.option(
    "--project", default=None, help="Label Studio project title (default: labelstudio.project_title)."
)
@click.option("--policy", type=click.Choice(["latest", "majority"]), default="latest", show_default=True)
@click.option("--arch", type=click.Choice(ARCHS), default=TRAINING.arch, show_default=True)
@click.option("--size", default=TRAINING.size, show_default=True, help="Model input size (pixels).")
@click.option("--epochs", default=TRAINING.epochs, show_default=True)
@click.option("--batch-size", default=TRAINING.batch_size, show_default=True, help="Per process.")
@click.option("--lr", default=TRAINING.lr, show_default=True, help="Peak learning rate (one-cycle).")
@click.option(
    "--patience", default=TRAINING.patience, show_default=True, help="Early stopping patience (epochs)."
)
@click.option("--seed", default=TRAINING.seed, show_default=True)
@click.option(
    "--split-fractions",
    default=format_fractions(SPLIT_FRACTIONS),
    show_default=True,
    help="Train,val,test shares of the labeled images (keep them fixed for a project).",
)
@click.option(
    "--weights",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Local checkpoint to start from (nothing is downloaded).",
)
@click.option(
    "--nproc-per-node", default=TRAINING.nproc_per_node, show_default=True, help="DDP processes (torchrun)."
)
@click.option(
    "--provider",
    default="CPUExecutionProvider",
    show_default=True,
    help="ONNX Runtime execution provider the precision is chosen for.",
)
@click.option(
    "--max-accuracy-drop",
    default=_BOUNDS.max_accuracy_drop,
    show_default=True,
    help="Largest validation-accuracy drop a faster precision may cost vs fp32.",
)
@click.option(
    "--max-disagreement",
    default=_BOUNDS.max_disagreement,
    show_default=True,
    help="Largest share of validation images whose top-1 may differ from fp32.",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Work directory (default: <state_dir>/training/<timestamp>).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
@user_errors
def train(
    obj,
    project,
    policy,
    arch,
    size,
    epochs,
    batch_size,
    lr,
    patience,
    seed,
    split_fractions,
    weights,
    nproc_per_node,
    provider,
    max_accuracy_drop,
    max_disagreement,
    out,
    as_json,
) -> None:
    """Import labels, build the dataset, train with DDP, export to ONNX, choose precision, write the card."""
    import time

    from edgeloop.components.path import run_training_path
    from edgeloop.components.stats import fields_text
    from edgeloop.components.training import TrainConfig

    out = out or obj.settings.state_dir / "training" / time.strftime("%Y%m%d-%H%M%S")
    config = TrainConfig(
        arch=arch,
        size=size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        patience=patience,
        seed=seed,
        weights=str(weights) if weights else None,
    )
    bounds = PrecisionBounds(max_accuracy_drop=max_accuracy_drop, max_disagreement=max_disagreement)
    try:
        fractions = parse_fractions(split_fractions)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--split-fractions") from e
    res = run_training_path(
        obj.settings,
        out,
        project=project,
        policy=policy,
        config=config,
        nproc_per_node=nproc_per_node,
        bounds=bounds,
        provider=provider,
        fractions=fractions,
        log=lambda m: click.echo(m, err=True),
    )
    if as_json:
        click.echo(json.dumps(res.as_dict(), indent=2, default=str))
        return
    ev = {m["precision"]: m for m in res.precision_evidence["measurements"]}
    lat = ", ".join(
        f"{p} b1 {m['latency_ms_b1']:.2f} ms / b8 {m['latency_ms_b8']:.2f} ms" for p, m in ev.items()
    )
    click.echo(
        f"val accuracy      {fields_text(res.metrics, 'val_accuracy')}\n"
        f"test accuracy     {fields_text(res.metrics, 'test_accuracy')}\n"
        f"parity            max |dp| {res.parity['max_abs_diff']:.2e}, top-1 agreement "
        f"{res.parity['top1_agreement']:.4f}\n"
        f"precision         {res.precision} ({lat})\n"
        f"dataset version   {res.dataset_version}\n"
        f"model             {res.model_dir} ({res.model_uri})\n"
        f"MLflow run        {res.run_url}\n"
        f"timings (s)       {res.timings_s}"
    )
