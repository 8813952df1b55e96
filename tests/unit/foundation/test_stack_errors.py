import socket

import pytest

from edgeloop.core.config import load_settings
from edgeloop.local.stack import MissingToolError, PortInUseError, Stack


def test_port_in_use_names_port_and_service(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        settings = load_settings(state_dir=tmp_path, stack={"ports": {"mosquitto": port}})
        with pytest.raises(PortInUseError) as e:
            Stack(settings).up(("mosquitto",), progress=lambda m: None)
    assert str(port) in str(e.value) and "mosquitto" in str(e.value)
    assert "EDGELOOP_STACK__PORTS__MOSQUITTO" in str(e.value)


def test_missing_azurite_names_the_fix(tmp_path):
    settings = load_settings(state_dir=tmp_path, stack={"node_modules": tmp_path / "no_node_modules"})
    with pytest.raises(MissingToolError, match="make setup"):
        Stack(settings).up(("azurite",), progress=lambda m: None)


def test_missing_node_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no node on PATH
    settings = load_settings(state_dir=tmp_path)
    with pytest.raises(MissingToolError, match="Node.js"):
        Stack(settings).up(("azurite",), progress=lambda m: None)


def test_status_of_a_never_started_stack(tmp_path):
    rows = Stack(load_settings(state_dir=tmp_path)).status()
    assert [r.name for r in rows] == ["azurite", "mlflow", "labelstudio", "mosquitto"]
    assert {r.state for r in rows} == {"stopped"}
