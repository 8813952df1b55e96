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


def test_a_pipeline_left_at_its_task_defaults_trains_each_task_at_its_own_defaults():
    """The pipeline's shared parameters default to empty / 0: the train step reads them as the
    labels' task's defaults (TRAINING for a classifier, DETECTION for a detector)."""
    from edgeloop.components.defaults import DETECTION
    from edgeloop.components.training import DetectionTrainConfig, config_for_task

    cls = config_for_task("classification")
    assert isinstance(cls, TrainConfig)
    assert (cls.arch, cls.size, cls.epochs, cls.batch_size, cls.lr) == (
        TRAINING.arch,
        TRAINING.size,
        TRAINING.epochs,
        TRAINING.batch_size,
        TRAINING.lr,
    )
    det = config_for_task("detection")
    assert isinstance(det, DetectionTrainConfig)
    assert (det.arch, det.size, det.epochs, det.batch_size, det.lr) == (
        DETECTION.detector,
        DETECTION.size,
        DETECTION.epochs,
        DETECTION.batch_size,
        DETECTION.lr,
    )
    short = config_for_task("detection", epochs=2, size=96)
    assert (short.epochs, short.size, short.arch) == (2, 96, DETECTION.detector)


def test_an_architecture_of_the_other_task_is_refused_with_the_choices():
    from edgeloop.components.errors import TrainingError
    from edgeloop.components.training import config_for_task

    with pytest.raises(
        TrainingError, match="cannot train a detection dataset; choose one of fasterrcnn_tiny_fpn"
    ):
        config_for_task("detection", arch=TRAINING.arch)
    with pytest.raises(TrainingError, match="cannot train a classification dataset"):
        config_for_task("classification", arch="fasterrcnn_tiny_fpn")


def test_detection_launcher_argv_reaches_the_detection_entry_point_unchanged():
    from edgeloop.components import train_detection
    from edgeloop.components.training import DetectionTrainConfig

    parser = train_detection.get_args_parser()
    launched = parser.parse_args(["--data", "d", "--out", "o", *DetectionTrainConfig().argv()])
    defaults = parser.parse_args(["--data", "d", "--out", "o"])
    assert vars(launched) == vars(defaults)
