"""Bounded waits for tests: each gives up after a set time with an AssertionError that names what it
waited for (the service and its address, the topic, the process), never hangs the run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import IO, TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float,
    what: str | Callable[[], str],
    *,
    step_s: float = 0.05,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """``predicate()``'s first truthy value, polled every ``step_s``; errors of the types in ``ignoring``
    count as not yet (the last one is shown if time runs out). ``what`` may be a callable, to describe
    the state at the time of giving up."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while True:
        try:
            got = predicate()
            if got:
                return got
        except ignoring as e:
            last = e
        if time.monotonic() >= deadline:
            seen = f" (last error: {type(last).__name__}: {last})" if last is not None else ""
            waited_for = what() if callable(what) else what
            raise AssertionError(f"gave up after {timeout_s:g} s waiting for {waited_for}{seen}")
        time.sleep(step_s)


def join(thread: threading.Thread, timeout_s: float, what: str) -> None:
    """``thread.join`` that fails, naming ``what``, if the thread is still running after ``timeout_s``."""
    thread.join(timeout_s)
    if thread.is_alive():
        raise AssertionError(f"gave up after {timeout_s:g} s waiting for {what} (thread {thread.name})")


def read_line(stream: IO[str], timeout_s: float, what: str) -> str:
    """The next line of a process's pipe, or an AssertionError naming ``what`` after ``timeout_s``
    (the reading thread is left to end when the pipe closes)."""
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(stream.readline()), daemon=True)
    reader.start()
    join(reader, timeout_s, what)
    return line[0]
