"""Errors a user can act on. The CLI prints their message and exits 2, without a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


class EdgeloopError(RuntimeError):
    """Base class: the message says what went wrong and what to do about it."""


def user_errors(fn: F) -> F:
    """Decorator for CLI commands: known errors become one clear line on stderr and exit code 2."""
    from edgeloop.core.config import StackNotRunningError
    from edgeloop.local.stack import StackError

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (EdgeloopError, StackError, StackNotRunningError, FileNotFoundError) as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
