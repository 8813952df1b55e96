"""SIGKILL in the middle of streaming: the broker, the stream process itself, the model server.

What a user must see: every frame's result arrives (deduplicated on ``message_id``) or is counted
(dropped with a reason, or lost in a killed run's memory), and the loop resumes on its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgeloop.stream.predictors import GrpcPredictor, OnnxPredictor
from edgeloop.stream.processor import StreamConfig, StreamProcessor
from edgeloop.stream.publisher import CountingSink, MqttPublisher
from edgeloop.stream.queues import DropPolicy
from edgeloop.stream.sources import ReaderConfig, SourceSpec
from edgeloop.testing.faults import kill_group, kill_service, restart_service
from edgeloop.testing.waits import join, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def test_broker_killed_mid_stream_loses_no_result(
    fault_stack, subscribe, tiny_model, fault_videos, tmp_path, fault_log
):
    host, port = fault_stack.mqtt_endpoint()
    prefix = fault_stack.mqtt.topic_prefix
    topic = f"{prefix}/faults-broker/#"
    reader = fault_stack.mqtt_credentials(reader=True)
    before = subscribe(host, port, topic, reader)
    proc = StreamProcessor(
        [SourceSpec.parse(f"cam={fault_videos['long']}")],
        OnnxPredictor(tiny_model),
        None,
        StreamConfig(line="faults-broker", topic_prefix=prefix, drop_policy=DropPolicy.BLOCK),
    )
    user, password = fault_stack.mqtt_credentials()
    sink = MqttPublisher(
        host,
        port,
        tmp_path / "outbox",
        stats_for=proc.stats_for,
        metrics=proc.metrics,
        username=user,
        password=password,
    )
    proc.sink = sink
    sink.start()
    broker = f"the broker at {host}:{port}"
    assert sink.wait_connected(10), f"the publisher did not connect to {broker} within 10 s"
    proc.start()
    stats = proc.stats["cam"]
    wait_until(lambda: stats.published >= 15, 20, f"15 results of cam published to {broker}", step_s=0.02)

    kill_service(fault_stack, "mosquitto")
    killed = time.monotonic()
    # the broker loses its sessions with the SIGKILL: a consumer subscribes again as soon as it is back
    consumers = []

    def resubscribe() -> None:
        while not consumers and time.monotonic() - killed < 60:
            try:
                consumers.append(subscribe(host, port, topic, reader))
            except OSError:
                time.sleep(0.02)

    time.sleep(1.0)  # results keep coming while the broker is gone
    waiter = threading.Thread(target=resubscribe)
    waiter.start()
    restart_s = restart_service(fault_stack, "mosquitto")
    join(waiter, 90, f"a consumer to subscribe again to {topic} at {broker}")
    assert consumers, f"no consumer got a subscription to {topic} from {broker} within 60 s of the kill"
    (after,) = consumers
    wait_until(lambda: sink.connected, 30, f"the publisher to reconnect to {broker}", step_s=0.02)
    reconnected_s = time.monotonic() - killed
    wait_until(proc.sources_done, 30, f"the source cam={fault_videos['long']} to be read to its end")
    summary = proc.stop()
    drained_s = time.monotonic() - killed
    s = summary.sources[0]

    frames = s["frames_in"]
    assert frames == 120 and s["frames_processed"] == frames and s["dropped_total"] == 0
    assert s["results_outboxed"] > 0, "results made while the broker was down wait in the outbox"
    assert s["results_published"] == frames and summary.outbox_depth == 0

    def received() -> dict[str, dict]:
        return before.unique_ids() | after.unique_ids()

    wait_until(
        lambda: len(received()) >= frames,
        20,
        lambda: f"{frames} distinct results on {topic} at {broker} (got {len(received())})",
        step_s=0.02,
    )
    got = received()
    run = summary.run_id
    assert set(got) == {f"{run}:cam:{i}" for i in range(frames)}  # each frame once, by message id
    # each consumer sees a copy twice at most where QoS 1 re-sent it; it drops those by message_id
    duplicates = sum(len(sub.messages) - len(sub.unique_ids()) for sub in (before, after))
    fault_log.record(
        "mosquitto",
        outcome="results wait in the outbox, replayed in order after reconnect; consumers dedupe on message_id",
        frames=frames,
        frames_lost=frames - len(got),
        results_outboxed=s["results_outboxed"],
        duplicates_delivered=duplicates,
        broker_restart_s=round(restart_s, 2),
        kill_to_reconnected_s=round(reconnected_s, 2),
        kill_to_all_delivered_s=round(drained_s, 2),
    )


def _stream_cli(settings, model: Path, outbox: Path, video: Path, summary: Path, *extra: str):
    return subprocess.Popen(
        [sys.executable, "-m", "edgeloop.cli", "stream", "--model", str(model), "--line", "faults-kill"]
        + ["--drop-policy", "block", "--outbox", str(outbox), "--summary-json", str(summary), *extra]
        + [f"cam={video}"],
        env={**os.environ, "EDGELOOP_STATE_DIR": str(settings.state_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        text=True,
    )


def test_stream_process_killed_counts_every_frame_on_restart(
    fault_stack, subscribe, tiny_model, fault_videos, tmp_path, fault_log
):
    host, port = fault_stack.mqtt_endpoint()
    sub = subscribe(
        host,
        port,
        f"{fault_stack.mqtt.topic_prefix}/faults-kill/#",
        fault_stack.mqtt_credentials(reader=True),
    )
    outbox = tmp_path / "outbox"
    first = _stream_cli(fault_stack, tiny_model, outbox, fault_videos["long"], tmp_path / "first.json")
    results = f"results of `edgeloop stream --line faults-kill` on {sub.topic} at {host}:{port}"
    try:
        wait_until(
            lambda: len(sub.unique_ids()) >= 20 or first.poll() is not None, 60, f"20 {results}", step_s=0.01
        )
        assert first.poll() is None, first.communicate(timeout=30)[1]
    finally:
        kill_group(first.pid)
        first.wait(5)
    killed_run = {m["run_id"] for m in sub.unique_ids().values()}
    assert len(killed_run) == 1
    (run,) = killed_run

    restarted = time.monotonic()
    second = _stream_cli(
        fault_stack, tiny_model, outbox, fault_videos["short"], tmp_path / "second.json", "--no-realtime"
    )
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    summary = json.loads((tmp_path / "second.json").read_text())
    (lost,) = [e for e in summary["lost_in_killed_runs"] if e["run_id"] == run]
    assert f"{run} was killed: cam lost {lost['lost']} frames" in out  # said, not only counted

    def of_run(r: str) -> dict[int, dict]:
        return {m["frame_index"]: m for m in sub.unique_ids().values() if m["run_id"] == r}

    new_run = summary["run_id"]
    wait_until(lambda: len(of_run(new_run)) >= 30, 20, f"30 {results} from run {new_run}", step_s=0.02)
    recovered_s = time.monotonic() - restarted
    wait_until(
        lambda: len(of_run(run)) >= lost["results_durable"],
        20,
        f"the {lost['results_durable']} durable {results} from the killed run {run}",
        step_s=0.02,
    )
    # the killed run: every result kept durable was delivered (some only by the restart), frames 0..k-1
    # in order; the frames after them were only in memory and are counted lost; no frame is unaccounted
    assert sorted(of_run(run)) == list(range(lost["results_durable"]))
    assert lost["frames_dropped"] == 0 and lost["results_dropped"] == 0  # --drop-policy block
    assert lost["results_durable"] + lost["lost"] == lost["frames_in"]
    assert sorted(of_run(new_run)) == list(range(30))
    assert summary["outbox_depth"] == 0
    fault_log.record(
        "stream process",
        outcome="results durable in the outbox are sent by the next run; frames only in memory are "
        "counted lost by it (summary, log, edgeloop_stream_frames_lost)",
        frames_in_killed_run=lost["frames_in"],
        results_kept=lost["results_durable"],
        frames_lost=lost["lost"],
        restart_to_first_new_result_s=round(recovered_s, 2),
    )


def test_model_server_killed_under_load_errors_only_in_flight_then_resumes(
    tiny_model, fault_videos, fault_log
):
    from edgeloop.serving.launcher import running_server

    sink = CountingSink(keep=True)
    with running_server([tiny_model]) as first:
        ports = (first.http_port, first.grpc_port)
        proc = StreamProcessor(
            [SourceSpec.parse(f"cam={fault_videos['long']}")],
            GrpcPredictor(first.grpc_target, "stream-test", timeout_s=2.0),
            sink,
            StreamConfig(line="faults-server", reader=ReaderConfig(loop=True)),  # a camera: never ends
        )
        sink._stats_for = proc.stats_for
        proc.start()
        stats = proc.stats["cam"]
        wait_until(
            lambda: stats.processed >= 20, 30, f"20 frames answered by {first.grpc_target}", step_s=0.02
        )
        kill_group(first.process.pid)
        killed = time.monotonic()
        at_kill = stats.processed
    restart_t0 = time.monotonic()
    with running_server([tiny_model], http_port=ports[0], grpc_port=ports[1]):
        ready_s = time.monotonic() - restart_t0
        wait_until(
            lambda: stats.processed > at_kill + 5,
            30,
            f"the processor to resume on the restarted server at {first.grpc_target}",
            step_s=0.02,
        )
        resumed_s = time.monotonic() - killed
        summary = proc.stop()
    s = summary.sources[0]
    # every frame is accounted for: a result, or dropped with the reason
    assert s["frames_in"] == s["frames_processed"] + s["dropped_total"]
    assert set(s["frames_dropped"]) <= {"inference_error", "queue_full"}
    assert s["frames_dropped"].get("inference_error", 0) > 0  # the batches in flight and during the outage
    assert s["frames_processed"] > at_kill + 5  # and it resumed on the restarted server, same address
    assert len(sink.messages) == s["frames_processed"]
    fault_log.record(
        "model server",
        outcome="batches in flight and during the outage fail and are counted (inference_error), "
        "the gRPC channel reconnects to the restarted server on its own",
        frames=s["frames_in"],
        frames_dropped=s["frames_dropped"],
        server_restart_s=round(ready_s, 2),
        kill_to_resumed_s=round(resumed_s, 2),
    )
