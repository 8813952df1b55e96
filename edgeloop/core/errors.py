"""Errors a user can act on. The CLI prints their message and exits 2, without a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


class EdgeloopError(RuntimeError):
    """Base class: the message says what went wrong and what to do about it."""


class ModelError(EdgeloopError):
    """A model could not be fetched, verified or opened (:mod:`edgeloop.core.model_loader`).

    The model server answers these with 422 / FAILED_PRECONDITION (``serving.errors.ModelLoadError``).
    """


class ModelFetchError(ModelError):
    """The model URI names nothing to fetch: no such directory, no blobs under the prefix, no such
    registered version or alias, or no settings to reach the store."""


class InvalidModelError(ModelError):
    """The directory is not a usable model: no card, a card that does not validate, or an ONNX
    file that ONNX Runtime cannot open."""


class ModelSessionError(InvalidModelError):
    """ONNX Runtime could not open the model on any of the configured execution providers."""


class IntegrityError(ModelError):
    """A model file does not match the sha256 in its card, a listed file is missing, or the card
    records no digest for the model file: the model is refused (never loaded with a warning).

    The model server answers 422 / FAILED_PRECONDITION (``serving.errors.IntegrityRefusedError``)
    with ``reason`` only: the directory is a server-side detail.
    """

    def __init__(self, reason: str, directory: Path | str | None = None):
        super().__init__(f"the model in {directory} is refused: {reason}" if directory else reason)
        self.reason = reason
        self.directory = directory


def user_errors(fn: F) -> F:
    """Decorator for CLI commands: known errors become one clear line on stderr and exit code 2."""
    from edgeloop.core.config import StackNotRunningError

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (EdgeloopError, StackNotRunningError, FileNotFoundError) as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
