"""`edgeloop stream` as a process against the local stack's Mosquitto: results in order, metrics served."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import jsonschema

from edgeloop.local.stack import free_port
from edgeloop.stream.result import result_schema


def test_cli_publishes_every_frame_in_order_to_the_stack_broker(
    stack_settings, subscribe, tiny_model, videos, tmp_path
):
    host, port = stack_settings.mqtt_endpoint()
    prefix = stack_settings.mqtt.topic_prefix
    # the stack's broker takes no anonymous clients: read with its reader account
    sub = subscribe(
        host, port, f"{prefix}/cli-line/#", credentials=stack_settings.mqtt_credentials(reader=True)
    )
    metrics_port = free_port()
    summary_file = tmp_path / "summary.json"
    env = {**os.environ, "EDGELOOP_STATE_DIR": str(stack_settings.state_dir)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgeloop.cli",
            "stream",
            "--model",
            str(tiny_model),
            "--line",
            "cli-line",
            "--drop-policy",
            "block",
            "--metrics-port",
            str(metrics_port),
            "--outbox",
            str(tmp_path / "outbox"),
            "--summary-json",
            str(summary_file),
            f"cam1={videos['long']}",
            f"bad={tmp_path / 'missing.mp4'}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        metrics = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(metrics_url, timeout=1) as r:
                    metrics = r.read().decode()
                if 'edgeloop_stream_frames_processed_total{source="cam1"}' in metrics:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    for name in (
        "edgeloop_stream_frames_in_total",
        "edgeloop_stream_frames_dropped_total",
        "edgeloop_stream_queue_depth",
        "edgeloop_stream_latency_seconds_bucket",
        "edgeloop_stream_source_up",
    ):
        assert name in metrics, f"{name} not served at {metrics_url} within 20 s: {metrics[-1000:]!r}"
    assert "cam1" in out and "bad" in out and "missing.mp4 does not exist" in out
    summary = json.loads(summary_file.read_text())
    cam1 = next(s for s in summary["sources"] if s["source"] == "cam1")
    assert cam1["frames_processed"] == cam1["results_published"] == 60
    assert sub.wait_for(lambda s: len(s.messages) >= 60, what="60 results of cam1")
    assert [m["frame_index"] for m in sub.by_camera()["cam1"]] == list(range(60))
    for topic, msg in sub.messages:
        assert topic == f"{prefix}/cli-line/cam1"
        jsonschema.validate(msg, result_schema())
