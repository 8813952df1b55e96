"""One source of training defaults: `edgeloop train`, the torchrun entry point and TrainConfig
all default to edgeloop.components.defaults (TRAINING, PrecisionBounds)."""

from __future__ import annotations

import dataclasses
import inspect

import click
import pytest
from click.testing import CliRunner

from edgeloop.components.cli import train
from edgeloop.components.defaults import ARCHS, TRAINING, PrecisionBounds, TrainingDefaults
from edgeloop.components.path import run_training_path
from edgeloop.components.training import TrainConfig, run_training, torchrun_command

# `edgeloop train` option -> TrainingDefaults field
CLI_OPTIONS = {
    "arch": "arch",
    "size": "size",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "patience": "patience",
    "seed": "seed",
    "nproc_per_node": "nproc_per_node",
}
# TrainingDefaults fields the torchrun entry point takes as flags (nproc_per_node is torchrun's own)
ENTRY_POINT_FIELDS = [f.name for f in dataclasses.fields(TrainingDefaults) if f.name != "nproc_per_node"]


def _cli_param(name: str) -> click.Option:
    return next(p for p in train.params if p.name == name and isinstance(p, click.Option))


@pytest.mark.parametrize(("option", "field"), sorted(CLI_OPTIONS.items()))
def test_train_command_defaults_are_the_training_defaults(option, field):
    param = _cli_param(option)
    assert param.default == getattr(TRAINING, field), f"`edgeloop train --{option.replace('_', '-')}`"
    assert param.show_default


def test_train_command_precision_bounds_are_the_precision_defaults():
    bounds = PrecisionBounds()
    assert _cli_param("max_accuracy_drop").default == bounds.max_accuracy_drop
    assert _cli_param("max_disagreement").default == bounds.max_disagreement


def test_train_help_shows_the_defaults():
    out = CliRunner().invoke(train, ["--help"], terminal_width=200).output
    assert f"[default: {TRAINING.batch_size}]" in out
    assert f"[default: {TRAINING.arch}]" in out


def test_default_architecture_is_one_the_cli_and_the_entry_point_accept():
    assert TRAINING.arch in ARCHS
    assert tuple(_cli_param("arch").type.choices) == ARCHS


def _entry_point_parser():
    from edgeloop.components import train as entry_point  # imports torch

    return entry_point.get_args_parser()


def test_entry_point_defaults_are_the_training_defaults():
    args = _entry_point_parser().parse_args(["--data", "d", "--out", "o"])
    for name in ENTRY_POINT_FIELDS:
        assert getattr(args, name) == getattr(TRAINING, name), f"train.py --{name.replace('_', '-')}"


def test_train_config_defaults_are_the_training_defaults():
    cfg = TrainConfig()
    for name in ENTRY_POINT_FIELDS:
        assert getattr(cfg, name) == getattr(TRAINING, name), f"TrainConfig.{name}"


def test_launcher_argv_reaches_the_entry_point_unchanged():
    """What run_training passes to torchrun parses back to the same values as the entry point's defaults."""
    parser = _entry_point_parser()
    launched = parser.parse_args(["--data", "d", "--out", "o", *TrainConfig().argv()])
    defaults = parser.parse_args(["--data", "d", "--out", "o"])
    assert vars(launched) == vars(defaults)


def test_process_count_defaults_are_the_training_default():
    for fn in (run_training, run_training_path, torchrun_command):
        default = inspect.signature(fn).parameters["nproc_per_node"].default
        assert default == TRAINING.nproc_per_node, fn.__qualname__
    cmd = torchrun_command("d", "o", TrainConfig())
    assert cmd[cmd.index("--nproc-per-node") + 1] == str(TRAINING.nproc_per_node)
