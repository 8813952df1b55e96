"""`edgeloop stream` as a user meets it: help, usage errors, a run with a bad source, the summary."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from edgeloop.cli import cli


def _invoke(*args: str):
    return CliRunner().invoke(cli, ["stream", *args], catch_exceptions=False)


def test_help_explains_sources_and_options():
    result = _invoke("--help")
    assert result.exit_code == 0
    for text in (
        "rtsp://",
        "image folder",
        "--fps",
        "--model",
        "--server",
        "--line",
        "--queue-size",
        "--drop-policy",
        "--batch-size",
        "--outbox",
        "--metrics-port",
        "--duration",
        "result.schema.json",
    ):
        assert text in result.output


def test_model_or_server_is_required(short_video: Path):
    result = _invoke(str(short_video))
    assert result.exit_code == 2
    assert "exactly one of --model DIR" in result.output


def test_a_model_directory_without_a_card_is_a_clear_error(tmp_path: Path, short_video: Path):
    result = CliRunner().invoke(cli, ["stream", "--model", str(tmp_path), "--no-mqtt", str(short_video)])
    assert result.exit_code == 2
    assert "no model_card.json in" in result.output


def test_run_prints_a_summary_and_bad_sources_do_not_stop_the_others(tiny_model, short_video, tmp_path):
    summary_file = tmp_path / "summary.json"
    result = CliRunner().invoke(
        cli,
        [
            "stream",
            "--model",
            str(tiny_model),
            "--no-mqtt",
            "--no-realtime",
            "--drop-policy",
            "block",
            "--fps",
            "5",
            "--summary-json",
            str(summary_file),
            f"good={short_video}",
            f"missing={tmp_path / 'nope.mp4'}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "good" in result.output and "finished" in result.output
    assert "missing: " in result.output and "nope.mp4 does not exist" in result.output
    summary = json.loads(summary_file.read_text())
    by = {s["source"]: s for s in summary["sources"]}
    assert by["good"]["frames_processed"] == 10
    assert by["missing"]["state"] == "failed" and by["missing"]["errors"] == {"not_found": 1}
    assert summary["model"] == {"name": "stream-test", "version": "1", "input_size": 64}


def test_all_sources_bad_exits_with_an_error(tiny_model, tmp_path):
    result = CliRunner().invoke(
        cli, ["stream", "--model", str(tiny_model), "--no-mqtt", str(tmp_path / "a.mp4")]
    )
    assert result.exit_code == 2
    assert "no source could be read" in result.output


def test_unknown_scheme_is_a_usage_error(tiny_model):
    result = CliRunner().invoke(cli, ["stream", "--model", str(tiny_model), "--no-mqtt", "ftp://h/x.mp4"])
    assert result.exit_code == 2
    assert "unsupported scheme 'ftp'" in result.output
