"""``edgeloop stream``: classify live video from N sources and publish one MQTT result per frame."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from edgeloop.core.errors import EdgeloopError, user_errors

log = logging.getLogger(__name__)


def _host_port(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise click.BadParameter(f"{what} must be HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


@click.command("stream", context_settings={"show_default": True})
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Model directory (model.onnx + model_card.json): run ONNX Runtime in this process.",
)
@click.option("--server", help="Model server HOST:PORT (OIP v2 gRPC), instead of --model.")
@click.option(
    "--tls-ca",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="PEM CA of the model server's certificate: connect to --server over TLS.",
)
@click.option(
    "--tls-cert",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="This client's PEM certificate, for a server with mutual TLS (--tls-client-ca). Needs --tls-key.",
)
@click.option("--tls-key", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option(
    "--auth-token-file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="File holding the model server's bearer token (its --auth-token-file).",
)
@click.option(
    "--model-name", help="Model name on the server [default: the registered model name from settings]."
)
@click.option("--model-version", help="Model version or alias on the server [default: the server's default].")
@click.option(
    "--input-size",
    type=click.IntRange(8, 4096),
    help="Frame size to send to the server [default: from the model's metadata].",
)
@click.option(
    "--fps",
    type=click.FloatRange(min=0.01),
    help="Target frames per second per source [default: every frame].",
)
@click.option(
    "--resize",
    type=click.Choice(["auto", "ffmpeg", "shared"]),
    default="auto",
    help="Where frames are resized to the model's input: in FFmpeg (fast) or by the shared preprocessing. "
    "auto: FFmpeg when the model card's staging agreement allows it (>= 0.995 top-1), else shared.",
)
@click.option(
    "--decode-threads",
    type=click.IntRange(1, 64),
    default=1,
    help="Decoder threads per source (many cameras scale best with 1 each; more lowers one camera's latency).",
)
@click.option(
    "--hwaccel",
    type=click.Choice(["auto", "none", "cuda", "vaapi"]),
    default="auto",
    help="Hardware decode: NVDEC (cuda) or VA-API where FFmpeg and the device have it; auto picks one "
    "if present, else software. The summary says which was used.",
)
@click.option(
    "--keyframes-only",
    is_flag=True,
    help="Decode key frames only (other frames are skipped unread and counted): for --fps at or below "
    "the cameras' key-frame rate.",
)
@click.option("--line", default="line1", help="Production line: the middle level of the MQTT topic.")
@click.option(
    "--queue-size", type=click.IntRange(1, 10_000), default=8, help="Frames held per source before dropping."
)
@click.option(
    "--drop-policy",
    type=click.Choice(["drop-oldest", "drop-newest", "block"]),
    default="drop-oldest",
    help="What a full queue does: drop its oldest frame, refuse the newest, or make the reader wait "
    "(block: for files; a live camera must not be blocked).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 256),
    default=8,
    help="Most frames per inference call, taken round-robin across sources.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    help="Inference calls in flight; with --model-dir, one ONNX Runtime session each with cores/N "
    "threads (N = cores is fastest beside decoders). Results stay in order.",
)
@click.option(
    "--max-age-ms", type=click.FloatRange(min=1), help="Drop frames older than this before inference."
)
@click.option(
    "--realtime/--no-realtime",
    default=True,
    help="Pace files and image directories to their timestamps, as a camera would deliver them.",
)
@click.option("--loop", is_flag=True, help="Restart files and image directories when they end.")
@click.option(
    "--max-retries",
    type=click.IntRange(min=0),
    default=0,
    help="Give up on a network source after this many failed reconnects in a row (0: never).",
)
@click.option(
    "--outbox",
    "outbox_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where results wait while the broker is away [default: <state_dir>/stream/outbox].",
)
@click.option(
    "--outbox-max",
    type=click.IntRange(min=1),
    default=500_000,
    help="Most results the outbox holds while the broker is away; beyond it new results are dropped "
    "and counted (edgeloop_stream_results_dropped{reason=outbox_full}).",
)
@click.option("--mqtt", "mqtt_addr", help="MQTT broker HOST:PORT [default: from settings / the local stack].")
@click.option(
    "--mqtt-username",
    help="MQTT username [default: settings mqtt.username; the local stack's publisher account].",
)
@click.option(
    "--mqtt-password-file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="File holding the MQTT password (never a flag: ps and shell history show flags).",
)
@click.option(
    "--mqtt-tls-ca",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="PEM CA of the broker's certificate: connect over TLS [default: settings mqtt.tls_ca].",
)
@click.option("--mqtt-tls-cert", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option(
    "--mqtt-tls-key",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Client certificate key, with --mqtt-tls-cert, for a broker that asks for one.",
)
@click.option("--no-mqtt", is_flag=True, help="Publish nothing; only count results (for measuring).")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Serve Prometheus metrics on this port (0: off).",
)
@click.option(
    "--metrics-addr", default="127.0.0.1", help="Address for the metrics endpoint (0.0.0.0 to scrape)."
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=0,
    help="Stop after this many seconds (0: when every source has ended, or on Ctrl-C).",
)
@click.option(
    "--summary-json",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the final summary as JSON to this file.",
)
@click.pass_context
@user_errors
def stream(
    ctx: click.Context,
    sources: tuple[str, ...],
    model_dir: Path | None,
    server: str | None,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    auth_token_file: Path | None,
    model_name: str | None,
    model_version: str | None,
    input_size: int | None,
    fps: float | None,
    resize: str,
    decode_threads: int,
    hwaccel: str,
    keyframes_only: bool,
    line: str,
    queue_size: int,
    drop_policy: str,
    batch_size: int,
    workers: int,
    max_age_ms: float | None,
    realtime: bool,
    loop: bool,
    max_retries: int,
    outbox_dir: Path | None,
    outbox_max: int,
    mqtt_addr: str | None,
    mqtt_username: str | None,
    mqtt_password_file: Path | None,
    mqtt_tls_ca: Path | None,
    mqtt_tls_cert: Path | None,
    mqtt_tls_key: Path | None,
    no_mqtt: bool,
    metrics_port: int,
    metrics_addr: str,
    duration: float,
    summary_json: Path | None,
) -> None:
    """Classify frames from every SOURCE at once and publish one MQTT message per frame.

    \b
    SOURCE is [NAME=]URI; NAME (default: file stem or host/path) is the camera in
    the topic <prefix>/<line>/<camera>. URI is one of:
      video file     clip.mp4, /data/cam1.mkv (read once, paced to real time)
      network stream rtsp://cam1/stream, http(s)://host/live.ts (reconnected with backoff)
      image folder   /data/frames/ (images in name order, at --fps or 10 fps)

    \b
    Frames are decoded, sampled to --fps (frames left out are counted as skipped,
    apart from drops), resized to the model's input (in FFmpeg where the model
    card's staging agreement allows it: --resize), queued per
    source (bounded: --queue-size, --drop-policy) and classified in batches across
    sources, in process (--model DIR) or by the model server (--server HOST:PORT).
    Every dropped frame is counted per source and reason. Results (JSON, see
    stream/result.schema.json) are written to an on-disk outbox, then go out with
    QoS 1, each with a message_id to deduplicate on; while the broker is
    unreachable they wait there and are replayed in order. If the process is
    killed, the next run on the same outbox sends what was kept and counts the
    frames that were only in memory. A summary per source is printed at exit.

    \b
    Examples:
      edgeloop stream --model models/m1 cam1=rtsp://10.0.0.5/live cam2=rtsp://10.0.0.6/live
      edgeloop stream --server 127.0.0.1:8081 --fps 5 --metrics-port 9108 line-a.mp4 --loop
    """
    from edgeloop.stream.processor import StreamConfig, StreamProcessor
    from edgeloop.stream.publisher import CountingSink, MqttPublisher, ResultSink
    from edgeloop.stream.queues import DropPolicy
    from edgeloop.stream.resize import ResizeMode
    from edgeloop.stream.sources import ReaderConfig, SourceSpec
    from edgeloop.stream.stats import StreamMetrics

    if (model_dir is None) == (server is None):
        raise click.UsageError("give exactly one of --model DIR (in process) or --server HOST:PORT (gRPC)")
    specs = [SourceSpec.parse(s) for s in sources]
    from edgeloop.core.config import load_settings

    settings = ctx.obj.settings if ctx.obj is not None else load_settings()
    from edgeloop.stream.result import check_topic_parts

    check_topic_parts(settings.mqtt.topic_prefix, line)  # before anything connects or starts
    security = None
    if tls_ca or tls_cert or tls_key or auth_token_file:
        if server is None:
            raise click.UsageError("--tls-ca, --tls-cert, --tls-key and --auth-token-file go with --server")
        from edgeloop.serving.client import ClientSecurity

        try:
            security = ClientSecurity.from_files(tls_ca, tls_cert, tls_key, auth_token_file)
        except ValueError as e:
            raise click.UsageError(str(e)) from e
    predictor = _predictor(
        model_dir, server, model_name, model_version, input_size, settings, security, workers
    )

    config = StreamConfig(
        line=line,
        queue_size=queue_size,
        drop_policy=DropPolicy(drop_policy),
        batch_size=batch_size,
        workers=workers,
        max_age_s=max_age_ms / 1e3 if max_age_ms else None,
        topic_prefix=settings.mqtt.topic_prefix,
        reader=ReaderConfig(
            fps=fps,
            realtime=realtime,
            loop=loop,
            max_retries=max_retries,
            decode_threads=decode_threads,
            hwaccel=hwaccel,
            keyframes_only=keyframes_only,
        ),
        resize=ResizeMode(resize),
    )
    metrics = StreamMetrics()
    processor = StreamProcessor(specs, predictor, None, config, metrics)
    click.echo(f"resize: {processor.resize_choice.path.value} ({processor.resize_choice.reason})", err=True)
    sink: ResultSink
    if no_mqtt:
        sink = CountingSink(processor.stats_for)
    else:
        host, port = _host_port(mqtt_addr, "--mqtt") if mqtt_addr else settings.mqtt_endpoint()
        username, password, tls = _mqtt_auth(
            settings,
            from_settings=mqtt_addr is None,
            username=mqtt_username,
            password_file=mqtt_password_file,
            tls=(mqtt_tls_ca, mqtt_tls_cert, mqtt_tls_key),
        )
        outbox = outbox_dir or settings.state_dir / "stream" / "outbox"
        sink = MqttPublisher(
            host,
            port,
            outbox,
            stats_for=processor.stats_for,
            metrics=metrics,
            username=username,
            password=password,
            tls=tls,
            outbox_max=outbox_max,
        )
        click.echo(
            f"publishing to mqtt{'s' if tls else ''}://{host}:{port}/{config.topic_prefix}/{line}/<camera> "
            f"as {username or 'anonymous'} (outbox {outbox})",
            err=True,
        )
    processor.sink = sink
    sink.start()

    http = None
    if metrics_port:
        from prometheus_client import start_http_server

        http, _ = start_http_server(metrics_port, addr=metrics_addr, registry=metrics.registry)
        click.echo(f"metrics on http://{metrics_addr}:{metrics_port}/metrics", err=True)

    def _on_signal(signum: int, frame: Any) -> None:
        click.echo(f"\n{signal.Signals(signum).name}: stopping (again to abort)", err=True)
        signal.signal(signum, signal.SIG_DFL)
        processor.request_stop()

    old = {}
    if threading.current_thread() is threading.main_thread():  # signals can only be caught there
        old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = processor.run(duration_s=duration or None)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if http is not None:
            http.shutdown()
    click.echo(summary.table())
    if summary_json:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps(summary.to_dict(), indent=2))
    if all(s["state"] == "failed" for s in summary.sources):
        raise EdgeloopError("no source could be read (see the errors above)")


def _mqtt_auth(
    settings: Any,
    from_settings: bool,
    username: str | None,
    password_file: Path | None,
    tls: tuple[Path | None, Path | None, Path | None],
) -> tuple[str | None, str | None, Any]:
    """Username, password and TLS for the broker: the flags, else the settings (and, for the local
    stack's broker, its generated publisher account)."""
    from edgeloop.stream.publisher import MqttTls

    password = password_file.read_text().strip() if password_file else None
    if password_file and not username:
        raise click.UsageError("--mqtt-password-file goes with --mqtt-username")
    if not username and from_settings:
        creds = settings.mqtt_credentials()
        if creds:
            username, password = creds
    m = settings.mqtt
    ca, cert, key = tls
    if not (ca or cert or key) and from_settings:
        ca, cert, key = m.tls_ca, m.tls_cert, m.tls_key
    if bool(cert) != bool(key):
        raise click.UsageError(
            "an MQTT client certificate needs its key: give --mqtt-tls-cert and --mqtt-tls-key"
        )
    use_tls = bool(ca or cert) or (from_settings and m.tls)
    return username, password, (MqttTls(ca, cert, key) if use_tls else None)


def _predictor(
    model_dir: Path | None,
    server: str | None,
    model_name: str | None,
    model_version: str | None,
    input_size: int | None,
    settings: Any,
    security: Any = None,
    workers: int = 1,
) -> Any:
    if model_dir is not None:
        from edgeloop.stream.predictors import OnnxPredictor

        return OnnxPredictor(model_dir, sessions=workers)
    from edgeloop.stream.predictors import GrpcPredictor

    assert server is not None
    _host_port(server, "--server")
    name = model_name or settings.mlflow.registered_model
    return GrpcPredictor(server, name, model_version=model_version, input_size=input_size, security=security)


if __name__ == "__main__":  # pragma: no cover
    stream(sys.argv[1:])
