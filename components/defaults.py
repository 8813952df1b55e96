"""Training defaults, defined once.

Every entry point derives its defaults from :data:`TRAINING` and :class:`PrecisionBounds`:
the options of ``edgeloop train``, the argparse parser of the torchrun entry point
(:mod:`edgeloop.components.train`), :class:`~edgeloop.components.training.TrainConfig`,
:func:`~edgeloop.components.path.run_training_path`, and the parameters of the Kubeflow
pipeline. ``tests/unit/components/test_training_defaults.py`` fails if any of them drifts. Nothing
beyond the standard library is imported, so the CLI and the pipeline compiler read it
without the ML stack.
"""

from __future__ import annotations

from dataclasses import dataclass

ARCHS = ("mobilenet_v3_small", "mobilenet_v3_large", "resnet18", "efficientnet_b0")


@dataclass(frozen=True)
class TrainingDefaults:
    """Hyperparameters of a training run when nobody sets them.

    resnet18 at 128 px for 30 epochs, 32 images per process on 2 processes, is what
    ``make demo`` trains with (README: test accuracy 0.923 through the model server).
    """

    arch: str = "resnet18"
    size: int = 128  # model input, pixels (square)
    epochs: int = 30
    batch_size: int = 32  # per process
    lr: float = 2e-3  # peak of the one-cycle schedule (AdamW)
    weight_decay: float = 1e-4
    balance: str = "loss"  # class imbalance: weighted loss, weighted sampler, or none
    patience: int = 8  # early stopping: epochs without validation improvement
    # no early stop before the one-cycle schedule has mostly annealed: stopping at the
    # first plateau (epoch ~12 of 25) cost 3 points of val accuracy on the sample
    min_epochs: int = 20
    seed: int = 0
    bn_momentum: float = 0.1  # mobilenet_v3 ships 0.01, too slow for short runs
    nproc_per_node: int = 2  # DDP processes (torchrun)


TRAINING = TrainingDefaults()


@dataclass(frozen=True)
class PrecisionBounds:
    """How much a faster precision (int8) may cost to be chosen over fp32
    (:func:`edgeloop.components.precision.decide_precision`)."""

    max_accuracy_drop: float = 0.01  # absolute, on the validation split
    max_disagreement: float = 0.02  # share of validation images whose top-1 differs from fp32
    min_speedup: float = 1.05  # a non-fp32 variant must be at least this much faster (batch 1)
