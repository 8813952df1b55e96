import json
import os
import stat

import pytest

from edgeloop.core.config import StackNotRunningError, load_settings


def test_env_overrides_file(tmp_path, monkeypatch):
    cfg = tmp_path / "edgeloop.yaml"
    cfg.write_text("mlflow:\n  experiment: from-file\n  registered_model: file-model\n")
    monkeypatch.setenv("EDGELOOP_MLFLOW__EXPERIMENT", "from-env")
    s = load_settings(cfg, state_dir=tmp_path)
    assert s.mlflow.experiment == "from-env"
    assert s.mlflow.registered_model == "file-model"


def test_missing_config_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_settings(tmp_path / "nope.yaml")


def test_secrets_generated_once_private_and_masked(tmp_path):
    s = load_settings(state_dir=tmp_path)
    first = s.secrets()
    assert s.secrets() == first
    mode = stat.S_IMODE(os.stat(s.secrets_file).st_mode)
    assert mode == 0o600
    s2 = load_settings(state_dir=tmp_path, labelstudio={"api_key": "tok-secret-123"})
    dumped = json.dumps(s2.redacted(), default=str)
    assert "tok-secret-123" not in dumped
    assert first["azurite_key"] not in dumped


def test_endpoint_without_stack_says_how_to_start_it(tmp_path):
    s = load_settings(state_dir=tmp_path)
    with pytest.raises(StackNotRunningError, match="edgeloop stack up"):
        s.mlflow_tracking_uri()


def test_explicit_endpoints_win_over_stack(tmp_path):
    s = load_settings(
        state_dir=tmp_path,
        mlflow={"tracking_uri": "http://mlflow.example:5000"},
        blob={"connection_string": "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=b"},
    )
    assert s.mlflow_tracking_uri() == "http://mlflow.example:5000"
    assert s.blob_connection_string().startswith("DefaultEndpointsProtocol=https")
