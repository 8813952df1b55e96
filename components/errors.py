"""Failures of the training path a user can act on (the CLI prints them and exits 2)."""

from __future__ import annotations

from edgeloop.core.errors import EdgeloopError


class LabelImportError(EdgeloopError):
    """The Label Studio project is missing or its export failed."""


class DatasetError(EdgeloopError):
    """The manifest cannot become a usable dataset (empty, a class without training images...)."""


class TrainingError(EdgeloopError):
    """torchrun or the training script failed; the message points at its log."""


class ParityError(EdgeloopError):
    """The ONNX export does not reproduce the torch model within the configured thresholds.

    The model must not be shipped: its served predictions would differ from the evaluated ones.
    """

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report or {}


class PrecisionError(EdgeloopError):
    """No precision variant satisfies the configured bounds (fp32 always should: check the bounds)."""
