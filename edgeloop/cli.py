"""The ``edgeloop`` command line. Subcommands load lazily so ``--help`` stays fast."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from pathlib import Path

import click

from edgeloop.core.config import Settings, load_settings

# name -> (module, attribute, one-line help shown before the module is imported)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "stack": ("edgeloop.commands.stack", "stack", "Start, stop and inspect the local services."),
    "data": (
        "edgeloop.commands.data",
        "data",
        "Generate the sample dataset and seed blob storage + Label Studio.",
    ),
    "config": ("edgeloop.commands.config", "config", "Show the effective settings (secrets masked)."),
    "demo": (
        "edgeloop.commands.demo",
        "demo",
        "The whole loop on the sample data, locally (what `make demo` runs).",
    ),
    "labels": ("edgeloop.components.cli", "labels", "Import annotations from Label Studio into a manifest."),
    "dataset": ("edgeloop.components.cli", "dataset", "Build a versioned dataset from a label manifest."),
    "train": (
        "edgeloop.components.cli",
        "train",
        "Import labels, build the dataset, train with DDP, export to ONNX.",
    ),
    "serve": ("edgeloop.serving.cli", "serve", "Run the KServe model server over ONNX Runtime."),
    "deploy": ("edgeloop.deploy.cli", "deploy", "Render KServe manifests for a model version."),
    "plan": ("edgeloop.deploy.cli", "plan", "Capacity and autoscaling plan with a burst simulation."),
    "pipeline": (
        "edgeloop.pipelines.cli",
        "pipeline",
        "Compile, run locally, submit or schedule the Kubeflow pipeline.",
    ),
    "images": (
        "edgeloop.pipelines.cli",
        "images",
        "Build the container images (serving, pipeline, builder) with docker or podman.",
    ),
    "approve": (
        "edgeloop.pipelines.approval_cli",
        "approve",
        "Approve a candidate model version: a signed decision (the human gate).",
    ),
    "reject": ("edgeloop.pipelines.approval_cli", "reject", "Reject a candidate model version (signed)."),
    "rollback": (
        "edgeloop.pipelines.approval_cli",
        "rollback",
        "Point champion back at the previous (verified) champion.",
    ),
    "registry": (
        "edgeloop.pipelines.approval_cli",
        "registry",
        "Verify a version's signed approval; the history of decisions.",
    ),
    "model": (
        "edgeloop.commands.model",
        "model",
        "Import a model trained elsewhere (ONNX) into the gated loop.",
    ),
    "batch": (
        "edgeloop.commands.batch",
        "batch",
        "Score every image under a blob prefix; results and a drift summary to blob storage.",
    ),
    "monitor": ("edgeloop.monitoring.cli", "monitor", "Drift scans and the relabel queue."),
    "labeling": (
        "edgeloop.labeling.cli",
        "labeling",
        "Label Studio ML backend: the champion's predictions as pre-annotations.",
    ),
    "stream": ("edgeloop.stream.cli", "stream", "Process live video streams and publish results over MQTT."),
}


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(n for n, (mod, _, _) in COMMANDS.items() if _exists(mod))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[cmd_name]
        if not _exists(module):
            return None
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, COMMANDS[n][2]) for n in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class AppContext:
    """Carried in ``ctx.obj``: settings are built on first use, never at import time."""

    def __init__(self, config_file: Path | None):
        self.config_file = config_file
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_file)
        return self._settings


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    envvar="EDGELOOP_CONFIG",
    help="YAML settings file (also EDGELOOP_CONFIG); environment variables EDGELOOP_* override it.",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.version_option(package_name="edgeloop")
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, verbose: int) -> None:
    """edgeloop: label -> train (DDP) -> ONNX -> gated approval -> KServe -> drift -> relabel.

    Start with `edgeloop stack up`, then `edgeloop data seed`, then
    `edgeloop pipeline run --local --auto-approve`. Every command has --help.
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    ctx.obj = AppContext(config_file)


def main() -> None:
    from edgeloop.core.errors import EdgeloopError

    try:
        cli(standalone_mode=True)
    except EdgeloopError as e:  # pragma: no cover - click exits before this in standalone mode
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
