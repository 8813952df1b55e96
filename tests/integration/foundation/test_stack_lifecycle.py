"""A separate stack: up, write data, down (no process left), up again (data survives), down."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _edgeloop(state: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGELOOP_STATE_DIR": str(state)}
    return subprocess.run(
        [sys.executable, "-m", "edgeloop.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def _pids_alive(pgids):
    from edgeloop.core.processes import group_members

    return [m for pgid in pgids for m in group_members(pgid)]


def test_restart_keeps_data_and_leaves_no_process(tmp_path):
    from edgeloop.core import labelstudio as lsx
    from edgeloop.core.blob import BlobStore
    from edgeloop.core.config import load_settings

    state = tmp_path / "state"
    r = _edgeloop(state, "stack", "up")
    assert r.returncode == 0, r.stderr
    status = json.loads(_edgeloop(state, "stack", "status", "--json").stdout)
    assert {s["name"]: s["state"] for s in status} == dict.fromkeys(
        ["azurite", "mlflow", "labelstudio", "mosquitto"], "ready"
    )
    assert all(s["url"].startswith(("http://127.0.0.1:", "mqtt://127.0.0.1:")) for s in status)

    again = _edgeloop(state, "stack", "up")  # second up: a no-op
    assert again.returncode == 0 and "starting" not in again.stderr

    settings = load_settings(state_dir=state)
    BlobStore.from_settings(settings).upload("az://images/keep/me.txt", b"still here")
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri())
    exp = mlflow.create_experiment("survives-restart")
    ls = lsx.client(settings)
    project = lsx.ensure_project(ls, "survives", ["ok", "scratch"])

    pids = [s["pid"] for s in status]
    r = _edgeloop(state, "stack", "down")
    assert r.returncode == 0, r.stderr
    assert _pids_alive(pids) == []
    assert {s["state"] for s in json.loads(_edgeloop(state, "stack", "status", "--json").stdout)} == {
        "stopped"
    }

    r = _edgeloop(state, "stack", "up")
    assert r.returncode == 0, r.stderr
    try:
        settings = load_settings(state_dir=state)
        assert BlobStore.from_settings(settings).download("az://images/keep/me.txt") == b"still here"
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri())
        assert mlflow.get_experiment(exp).name == "survives-restart"
        assert lsx.find_project(lsx.client(settings), "survives").id == project.id
    finally:
        _edgeloop(state, "stack", "down")


def test_cli_help_explains_itself():
    out = subprocess.run(
        [sys.executable, "-m", "edgeloop.cli", "stack", "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    assert "Azurite" in out and "EDGELOOP_STACK__PORTS__" in out


def test_a_test_stack_that_fails_to_get_ready_leaves_no_process(tmp_path):
    """The tests' stack fixture: services started before the failure are stopped, not left running."""
    from edgeloop.core.config import load_settings
    from edgeloop.local.stack import Stack
    from edgeloop.testing.stack import running_stack

    settings = load_settings(state_dir=tmp_path / "state", stack={"ready_timeout_s": 0.2})
    with pytest.raises(Exception, match="not ready after"), running_stack(settings, "doomed stack"):
        pass
    state = json.loads((tmp_path / "state" / "stack" / "state.json").read_text())
    assert _pids_alive(state["pids"].values()) == []
    assert {s.state for s in Stack(settings).status()} == {"stopped"}
