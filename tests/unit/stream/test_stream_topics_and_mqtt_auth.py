"""A topic no result could be published under is a clear error at start; MQTT credentials come from
the flags or the settings, never a password on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeloop.cli import cli
from edgeloop.core.config import MQTT_PUBLISHER_USER, MQTT_READER_USER, load_settings
from edgeloop.core.errors import EdgeloopError
from edgeloop.stream.processor import StreamConfig, StreamProcessor
from edgeloop.stream.publisher import check_topic
from edgeloop.stream.result import check_topic_parts
from edgeloop.stream.sources import SourceSpec


@pytest.mark.parametrize("line", ["a/b", "line+1", "#", ""])
def test_a_bad_line_is_refused_before_anything_starts(line, tiny_model, short_video):
    result = CliRunner().invoke(
        cli, ["stream", "--model", str(tiny_model), "--no-mqtt", "--line", line, str(short_video)]
    )
    assert result.exit_code == 2, result.output
    assert "is not one MQTT topic level" in result.output


@pytest.mark.parametrize("prefix", ["", "/", "edgeloop//results", "edgeloop/+/results", "edgeloop/#"])
def test_a_bad_topic_prefix_is_refused_by_the_processor(prefix, short_video):
    with pytest.raises(EdgeloopError, match="topic prefix"):
        StreamProcessor(
            [SourceSpec.parse(str(short_video))], predictor=None, config=StreamConfig(topic_prefix=prefix)
        )


def test_good_topics_pass():
    check_topic_parts("edgeloop/results", "line-a")
    check_topic_parts("/plant-7/results/", "L1")
    assert check_topic("edgeloop/results/line-a/cam1") == "edgeloop/results/line-a/cam1"
    with pytest.raises(ValueError, match="wildcard"):
        check_topic("edgeloop/results/+/cam1")


def test_the_local_stack_brokers_accounts_come_from_its_secrets(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("EDGELOOP_MQTT__HOST", raising=False)
    settings = load_settings(state_dir=tmp_path / "state")
    user, password = settings.mqtt_credentials()
    reader, reader_password = settings.mqtt_credentials(reader=True)
    assert (user, reader) == (MQTT_PUBLISHER_USER, MQTT_READER_USER)
    assert len(password) >= 24 and password != reader_password
    assert settings.mqtt_credentials() == (user, password)  # generated once, then kept
    assert (settings.secrets_file.stat().st_mode & 0o777) == 0o600


def test_secrets_added_later_are_generated_into_an_existing_file(tmp_path: Path):
    settings = load_settings(state_dir=tmp_path)
    settings.secrets_file.write_text(json.dumps({"azurite_key": "k", "labelstudio_token": "t"}))
    values = settings.secrets()
    assert values["azurite_key"] == "k" and values["labelstudio_token"] == "t"  # kept
    assert {"mqtt_stream_password", "mqtt_reader_password", "labelstudio_password"} <= set(values)
    assert json.loads(settings.secrets_file.read_text()) == values


def test_a_broker_of_your_own_uses_the_configured_account(tmp_path: Path):
    own = load_settings(state_dir=tmp_path, mqtt={"host": "broker.plant", "port": 8883})
    assert own.mqtt_credentials() is None
    named = load_settings(
        state_dir=tmp_path,
        mqtt={"host": "broker.plant", "port": 8883, "username": "cam-gw", "password": "pw"},
    )
    assert named.mqtt_credentials() == ("cam-gw", "pw")
    assert not (tmp_path / "secrets.json").exists()  # nothing generated for someone else's broker


def test_the_mqtt_password_is_read_from_a_file_only():
    result = CliRunner().invoke(cli, ["stream", "--help"])
    assert "--mqtt-password-file" in result.output and "--mqtt-username" in result.output
    assert "--mqtt-password " not in result.output
