"""`edgeloop model import`: bring a model trained elsewhere (ONNX) into the loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edgeloop.core.errors import user_errors


def _floats3(value: str | None, flag: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    try:
        parts = tuple(float(x) for x in value.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise click.BadParameter(
            f"{value!r}: three comma-separated numbers (R,G,B), e.g. 0.5,0.5,0.5", param_hint=flag
        )
    return parts  # type: ignore[return-value]


def _gate(items: tuple[str, ...]) -> Any:
    from pydantic import ValidationError

    from edgeloop.pipelines.gate import GateThresholds

    values: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in GateThresholds.model_fields:
            raise click.BadParameter(
                f"{item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(GateThresholds.model_fields))}",
                param_hint="--gate",
            )
        values[key] = json.loads(value) if key == "class_recall_floors" else value
    try:
        return GateThresholds.model_validate(values)
    except ValidationError as e:
        raise click.BadParameter(str(e).splitlines()[-1], param_hint="--gate") from e


@click.group()
def model() -> None:
    """Models trained elsewhere: import an ONNX classifier so it takes the same path as ours
    (precision and latency measured here, staging evaluation and the gate, approval, serving, monitoring)."""


@model.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--name", required=True, help="Registered model name (also the name it is served under).")
@click.option("--labels", required=True, help="Class names in the order of the model's outputs: a,b,c.")
@click.option("--size", type=int, default=None, help="Input side S in pixels [default: from the graph].")
@click.option(
    "--mean", default=None, help="Per-channel mean of (x / 255) the model was trained with [ImageNet]."
)
@click.option("--std", default=None, help="Per-channel std of (x / 255) [ImageNet].")
@click.option("--input", "input_name", default=None, help="The image input [default: the only input].")
@click.option("--probabilities", default=None, help="The class-score output [default: the only output].")
@click.option(
    "--embedding",
    default=None,
    help="A feature-vector output for drift monitoring [default: none; embedding detectors are then off].",
)
@click.option("--softmax", is_flag=True, help="The class-score output holds logits: apply a softmax.")
@click.option(
    "--dataset",
    "dataset_dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="A labeled dataset directory (`edgeloop dataset build`): its test split is the staging set, "
    "val the precision and monitoring reference.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the imported model directory goes [default: <state dir>/imported/NAME].",
)
@click.option(
    "--gate",
    "gate_items",
    multiple=True,
    metavar="KEY=VALUE",
    help="A gate threshold (repeatable), e.g. --gate min_accuracy=0.9 --gate min_eval_images=100.",
)
@click.option("--latency-requests", default=200, show_default=True, help="Timed requests in staging.")
@click.option("--target", default="cpu", show_default=True, help="Target execution provider for precision.")
@click.option("--no-register", is_flag=True, help="Validate, measure and evaluate only; register nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.pass_obj
@user_errors
def import_(
    obj: Any,
    file: Path,
    name: str,
    labels: str,
    size: int | None,
    mean: str | None,
    std: str | None,
    input_name: str | None,
    probabilities: str | None,
    embedding: str | None,
    softmax: bool,
    dataset_dir: Path,
    out_dir: Path | None,
    gate_items: tuple[str, ...],
    latency_requests: int,
    target: str,
    no_register: bool,
    as_json: bool,
) -> None:
    """Import FILE (an ONNX classifier) as a candidate version of NAME.

    The graph is checked (one float image input [N, 3, S, S], a class-score output with one column
    per label, opset, a batch of 2 runs), rewritten to edgeloop's tensor names, its precision and
    latency measured on this machine, its monitoring reference built from the dataset's validation
    split, and it is evaluated through the model server on the test split. A version that passes the
    gate waits for `edgeloop approve NAME VERSION`, like a trained one; its tags say
    lineage.origin=imported.
    """
    from edgeloop.components.model_import import ImportSpec, import_model

    spec = ImportSpec(
        name=name,
        labels=labels.split(","),
        size=size,
        input=input_name,
        probabilities=probabilities,
        embedding=embedding,
        softmax=softmax,
    )
    for flag, value in (("--mean", mean), ("--std", std)):
        parsed = _floats3(value, flag)
        if parsed is not None:
            setattr(spec, flag[2:], parsed)
    spec.__post_init__()
    settings = obj.settings
    out = out_dir or settings.ensure_state_dir() / "imported" / name
    outcome = import_model(
        None if no_register else settings,
        file,
        spec,
        dataset_dir,
        out,
        thresholds=_gate(gate_items),
        latency_requests=latency_requests,
        register=not no_register,
        target=target,
        progress=lambda m: click.echo(f"- {m}", err=True),
    )
    if as_json:
        reg = outcome.registered
        click.echo(
            json.dumps(
                {
                    "model_dir": str(outcome.model_dir),
                    "digest": outcome.card.digest(),
                    "precision": outcome.card.precision.value,
                    "validation": outcome.validation.as_dict(),
                    "gate_passed": outcome.staging.decision.passed if outcome.staging else None,
                    "registered": reg.as_dict() if reg else None,
                },
                indent=2,
                default=str,
            )
        )
    else:
        click.echo(outcome.summary())
    if outcome.staging is not None and not outcome.staging.decision.passed:
        raise SystemExit(1)
