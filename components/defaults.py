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
#: Detectors for a detection dataset (`--detector` of the torchrun entry point): torchvision's Faster
#: R-CNN on a small GroupNorm backbone sized for defects of 5-50 px (edgeloop.components.detection),
#: or two of torchvision's stock mobile detectors.
DETECTORS = ("fasterrcnn_tiny_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large")


@dataclass(frozen=True)
class TrainingDefaults:
    """Hyperparameters of a training run when nobody sets them.

    resnet18 at 64 px for 16 epochs, 32 images per process on 2 processes, is what ``make demo``
    trains with. Measured on the demo's sample (1,000 images, 493 of them for training) on 2 shared
    CPU cores: val accuracy 0.996 / 1.000 / 0.996 (n=249) and test 1.000 (n=258) for seeds 0 / 1 / 2,
    84-129 s per run (noisy: other work on the machine). 12 epochs were not enough (val 0.92: the one-cycle
    schedule had not annealed); mobilenet_v3_small at 64 px trained 3x cheaper per step but reached
    only 0.88 in 40 epochs.
    """

    arch: str = "resnet18"
    size: int = 64  # model input, pixels (square)
    epochs: int = 16
    batch_size: int = 32  # per process
    lr: float = 2e-3  # peak of the one-cycle schedule (AdamW)
    weight_decay: float = 1e-4
    balance: str = "loss"  # class imbalance: weighted loss, weighted sampler, or none
    patience: int = 8  # early stopping: epochs without validation improvement
    # no early stop before the one-cycle schedule has annealed: stopping at the first plateau
    # (epoch ~12 of 25) cost 3 points of val accuracy on the sample; at 16 epochs, none at all
    min_epochs: int = 16
    seed: int = 0
    bn_momentum: float = 0.1  # mobilenet_v3 ships 0.01, too slow for short runs
    # per-epoch validation with the running BatchNorm statistics ("running") or with statistics
    # recomputed on the train images first ("recalibrate": one more pass over them every epoch,
    # honest for BatchNorm momenta as low as mobilenet_v3's 0.01). The final model is recalibrated
    # either way.
    eval_bn: str = "running"
    # Share of each epoch's draws that goes to images labelers relabeled from a drifted site (task
    # source "relabel") while they are fewer than that; 0: off (plain shuffling). Off by default, by
    # measurement: in the relabel loop benchmark (20 labels a round) 0.25 reached the shifted site's
    # 0.92 a round later than no oversampling (0.305 / 0.645 / 0.920 vs 0.535 / 0.920 / 0.895,
    # n=200 each, same seeds): drawing ~10 images with replacement a quarter of the time overfits them.
    relabel_share: float = 0.0
    nproc_per_node: int = 2  # DDP processes (torchrun)


TRAINING = TrainingDefaults()


@dataclass(frozen=True)
class DetectionDefaults:
    """What a detection dataset trains with when nobody says otherwise (the torchrun entry point's
    ``--detector`` and other flags); the size is the detection sample's (192 px).

    Measured on the seeded sample (500 images at 192 px, split 0.5 / 0.1 / 0.4) on 2 shared CPU
    cores: fasterrcnn_tiny_fpn, 15 epochs at batch 8 in one process (13-14 s an epoch), reached
    test mAP@0.5 0.92 (95 % CI 0.88-0.97, n=200), mAP@0.5:0.95 0.68, recall at 0.5 0.96.
    fasterrcnn_mobilenet_v3_large_320_fpn (random init, anchors from 32 px on its stride-16/32 maps)
    reached 0.05 after 12 epochs at ~50 s an epoch: defects of 5-50 px are too small for it.
    """

    detector: str = DETECTORS[0]
    size: int = 192
    epochs: int = 15
    batch_size: int = 4  # per process: 2 processes step as often as one at 8
    lr: float = 2e-3  # peak of the one-cycle schedule (AdamW), stepped every batch


DETECTION = DetectionDefaults()

# Share of the labeled images in train / val / test. The split of an image is a function of its
# content hash and these fractions (edgeloop.components.dataset.assign_split): keep them fixed for a
# project, or images the champion trained on can land in a later candidate's test split.
SPLIT_FRACTIONS: tuple[float, float, float] = (0.7, 0.2, 0.1)


def format_fractions(fractions: tuple[float, ...] | list[float]) -> str:
    """``(0.7, 0.2, 0.1)`` -> ``"0.7,0.2,0.1"``: how the pipeline parameter and the CLI write them."""
    return ",".join(f"{float(f):g}" for f in fractions)


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``"0.5,0.25,0.25"`` (or a JSON list) -> ``(0.5, 0.25, 0.25)``; ValueError unless three numbers."""
    parts = [p for p in text.strip().strip("[]").replace(" ", "").split(",") if p]
    if len(parts) != 3:
        raise ValueError(f"split fractions need three numbers (train,val,test), got {text!r}")
    a, b, c = (float(p) for p in parts)
    return a, b, c


@dataclass(frozen=True)
class PrecisionBounds:
    """How much a faster precision (int8) may cost to be chosen over fp32
    (:func:`edgeloop.components.precision.decide_precision`)."""

    max_accuracy_drop: float = 0.01  # absolute, on the validation split
    max_disagreement: float = 0.02  # share of validation images whose top-1 differs from fp32
    min_speedup: float = 1.05  # a non-fp32 variant must be at least this much faster (batch 1)
