"""The test kit's bounded waits: they return what they waited for, or fail naming it."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from edgeloop.testing.waits import join, read_line, wait_until


def test_wait_until_returns_the_first_truthy_value():
    calls = iter([0, None, "ready"])
    assert wait_until(lambda: next(calls), 5, "the third call", step_s=0) == "ready"


def test_wait_until_names_what_it_waited_for_and_the_last_error_it_ignored():
    def broken():
        raise ConnectionError("refused")

    with pytest.raises(AssertionError, match=r"gave up after 0.1 s waiting for port 9 .*refused"):
        wait_until(broken, 0.1, "port 9", step_s=0.01, ignoring=(OSError,))
    with pytest.raises(ConnectionError):
        wait_until(broken, 0.1, "port 9")
    with pytest.raises(AssertionError, match="waiting for 3 results, got 1"):
        wait_until(lambda: False, 0.05, lambda: "3 results, got 1", step_s=0.01)


def test_join_fails_naming_the_thread_still_running():
    release = threading.Event()
    t = threading.Thread(target=release.wait, args=(10,), name="stuck")
    t.start()
    with pytest.raises(AssertionError, match=r"waiting for the stuck worker \(thread stuck\)"):
        join(t, 0.05, "the stuck worker")
    release.set()
    join(t, 10, "the released worker")


def test_read_line_gives_a_line_or_fails_naming_it():
    def python(code: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)

    quiet = python("import time; time.sleep(60)")
    try:
        with pytest.raises(AssertionError, match="waiting for the server's URL"):
            read_line(quiet.stdout, 0.1, "the server's URL")
    finally:
        quiet.kill()
        quiet.wait(30)
    talking = python("print('http://127.0.0.1:1')")
    assert read_line(talking.stdout, 60, "the server's URL") == "http://127.0.0.1:1\n"
    assert talking.wait(30) == 0
