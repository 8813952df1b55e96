"""`edgeloop monitor scan|run|deliver|outbox`: drift scans and the relabel queue, usable as CronJobs."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import click

from edgeloop.core.errors import EdgeloopError, user_errors

log = logging.getLogger(__name__)


class MonitorError(EdgeloopError):
    """Monitoring cannot run as asked (no model, bad window, ...); the message says what to change."""


def resolve_model_dir(settings: Any, model_dir: Path | None, model: str | None, alias: str) -> Path:
    """``--model-dir`` as given, or the registered model ``NAME@ALIAS`` fetched from MLflow (cached
    under the state dir); either way verified against its card (:mod:`edgeloop.core.model_loader`)."""
    from edgeloop.core.errors import ModelError, ModelFetchError
    from edgeloop.core.model_loader import fetch_model, verify_model

    if model_dir is not None:
        if not (model_dir / "model_card.json").exists():
            raise MonitorError(f"{model_dir} holds no model_card.json: pass an exported model directory")
        directory = model_dir
    elif not model:
        raise MonitorError("name the model: --model-dir DIR (an exported model) or --model NAME (registered)")
    else:
        try:
            fetched = fetch_model(
                f"models:/{model}@{alias}", settings, settings.state_dir / "monitoring" / "models"
            )
        except ModelFetchError as e:
            raise MonitorError(f"{e}; use --alias or --model-dir") from e
        directory = fetched.directory
    try:
        verify_model(directory)
    except ModelError as e:
        raise MonitorError(str(e)) from e  # names the directory and what to do
    return directory


def _options(kw: dict[str, Any]) -> Any:
    """ScanOptions from the shared options (popped from ``kw``)."""
    from edgeloop.monitoring.scan import ScanOptions

    no_queue = kw.pop("no_queue")
    return ScanOptions(
        budget=kw.pop("budget"),
        alpha=kw.pop("alpha"),
        n_permutations=kw.pop("permutations"),
        any_version=kw.pop("any_version"),
        version=kw.pop("payload_version"),
        queue=not no_queue,
        deliver=not no_queue,
        project_title=kw.pop("project"),
        payload_model=kw.pop("payload_model"),
    )


def _common(fn: Any) -> Any:
    opts = [
        click.option(
            "--model-dir",
            type=click.Path(path_type=Path, file_okay=False),
            default=None,
            help="Exported model directory (model.onnx, model_card.json, reference_profile.npz).",
        ),
        click.option(
            "--model", "model_name", default=None, help="Registered model name (MLflow), with --alias."
        ),
        click.option(
            "--alias", default="champion", show_default=True, help="Registry alias of the served version."
        ),
        click.option("--window", default="1h", show_default=True, help="Window length: 30m, 1h, 1d, ..."),
        click.option(
            "--budget", default=20, show_default=True, help="At most this many images queued per window."
        ),
        click.option(
            "--alpha",
            default=0.05,
            show_default=True,
            help="Family-wise significance over all drift detectors.",
        ),
        click.option("--permutations", default=200, show_default=True, help="Permutations of the MMD test."),
        click.option("--any-version", is_flag=True, help="Include records served by other model versions."),
        click.option("--no-queue", is_flag=True, help="Report only: queue and deliver nothing."),
        click.option(
            "--project", default=None, help="Label Studio project (default: labelstudio.project_title)."
        ),
        click.option(
            "--payload-model",
            default=None,
            help="Model name in the payload log (default: the model card's name).",
        ),
        click.option(
            "--payload-version",
            default=None,
            help="Model version in the payload log (default: the model card's version).",
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


@click.group()
def monitor() -> None:
    """Drift scans over the payload log and the relabel queue into Label Studio."""


@monitor.command()
@_common
@click.option("--since", default=None, help="Window start: ISO time (UTC if naive) or a duration ago (2h).")
@click.option("--until", default=None, help="Window end: ISO time, 'now' (default) or a duration ago.")
@click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write an HTML drift report (plots, flagged images) here.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the scan report as JSON.")
@click.option(
    "--metrics", "print_metrics", is_flag=True, help="Print the Prometheus metrics after the report."
)
@click.option(
    "--metrics-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the metrics for node-exporter's textfile collector.",
)
@click.option(
    "--pushgateway", default=None, help="Push the metrics to this Prometheus Pushgateway (host:port)."
)
@click.option("--fail-on-drift", is_flag=True, help="Exit 1 when drift is detected (for CI / alerting).")
@click.pass_obj
@user_errors
def scan(
    obj,
    model_dir,
    model_name,
    alias,
    window,
    since,
    until,
    report_path,
    as_json,
    print_metrics,
    metrics_file,
    pushgateway,
    fail_on_drift,
    **kw,
) -> None:
    """Scan one window: drift report, flagged images queued for labeling (at most --budget)."""
    from edgeloop.monitoring.metrics import MonitorMetrics
    from edgeloop.monitoring.scan import resolve_window, scan_window

    settings = obj.settings
    directory = resolve_model_dir(settings, model_dir, model_name, alias)
    try:
        start, end = resolve_window(window, since, until)
    except ValueError as e:
        raise MonitorError(str(e)) from e
    metrics = MonitorMetrics()
    report = scan_window(
        settings, directory, start, end, _options(kw), report_path=report_path, metrics=metrics
    )
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else report.summary())
    if print_metrics:
        click.echo(metrics.text())
    if metrics_file:
        metrics.write_textfile(str(metrics_file))
    if pushgateway:
        metrics.push(pushgateway)
    if fail_on_drift and report.drift:
        raise SystemExit(1)


@monitor.command()
@_common
@click.option("--interval", default="10m", show_default=True, help="Time between scans.")
@click.option(
    "--metrics-port",
    default=9108,
    show_default=True,
    type=int,
    help="Serve Prometheus metrics on this port (0: do not serve).",
)
@click.option("--metrics-host", default="0.0.0.0", show_default=True)
@click.option(
    "--report-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Write each scan's HTML report here (latest.html plus one per scan).",
)
@click.option(
    "--iterations", default=0, show_default=True, help="Stop after this many scans (0: run forever)."
)
@click.pass_obj
@user_errors
def run(
    obj,
    model_dir,
    model_name,
    alias,
    window,
    interval,
    metrics_port,
    metrics_host,
    report_dir,
    iterations,
    **kw,
) -> None:
    """Scan the last --window every --interval, serving metrics; retries the relabel outbox each time."""
    from edgeloop.monitoring.metrics import MonitorMetrics
    from edgeloop.monitoring.scan import parse_duration, resolve_window, scan_window

    settings = obj.settings
    metrics = MonitorMetrics()
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=metrics_host, registry=metrics.registry)
        click.echo(f"metrics on http://{metrics_host}:{metrics_port}/metrics")
    try:
        every = parse_duration(interval).total_seconds()
    except ValueError as e:
        raise MonitorError(str(e)) from e
    options = _options(kw)
    done = 0
    while True:
        t0 = time.monotonic()
        try:  # the champion may change between scans: resolve each time
            directory = resolve_model_dir(settings, model_dir, model_name, alias)
            start, end = resolve_window(window)
            report_path = None
            if report_dir is not None:
                report_path = report_dir / f"drift-{end:%Y%m%dT%H%M%SZ}.html"
            report = scan_window(
                settings, directory, start, end, options, report_path=report_path, metrics=metrics
            )
            if report_path is not None:
                (report_dir / "latest.html").write_text(report_path.read_text())
            click.echo(report.summary())
        except MonitorError as e:
            if done == 0:  # a configuration error: say so and stop
                raise
            click.echo(f"scan skipped: {e}", err=True)  # e.g. the registry is briefly unreachable
        except Exception as e:  # a failed scan (storage briefly down) must not end the loop
            log.exception("scan failed")
            click.echo(f"scan failed: {type(e).__name__}: {e}", err=True)
        done += 1
        if iterations and done >= iterations:
            return
        time.sleep(max(0.0, every - (time.monotonic() - t0)))


@monitor.command()
@click.option("--project", default=None, help="Only this Label Studio project.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@user_errors
def deliver(obj, project: str | None, as_json: bool) -> None:
    """Deliver the relabel outbox to Label Studio now (scans do this too)."""
    from edgeloop.monitoring.relabel import RelabelQueue

    report = RelabelQueue.for_settings(obj.settings).deliver(obj.settings, project)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    click.echo(
        f"delivered {report.delivered} tasks ({report.already_in_project} already in the project); "
        f"{report.pending} waiting"
        + (f"; {report.failed} failed, {report.dead_lettered} dead-lettered" if report.failed else "")
        + (f"; error: {report.error}" if report.error else "")
    )


@monitor.command()
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--dead-letter", is_flag=True, help="List the items given up on (failed too often) and why, instead."
)
@click.option("--retry-dead-letters", is_flag=True, help="Put the dead-lettered items back in the outbox.")
@click.pass_obj
@user_errors
def outbox(obj, as_json: bool, dead_letter: bool, retry_dead_letters: bool) -> None:
    """List relabel items waiting for Label Studio (or dead-lettered ones)."""
    from edgeloop.monitoring.relabel import RelabelQueue

    queue = RelabelQueue.for_settings(obj.settings)
    if retry_dead_letters:
        click.echo(f"{queue.retry_dead_letters()} dead-lettered items back in the outbox")
        return
    if dead_letter:
        dead = [
            {k: v for k, v in d.items() if k != "item"} | {"flag_reason": d["item"].flag_reason}
            for d in queue.dead_letters()
        ]
        if as_json:
            click.echo(json.dumps(dead, indent=2))
            return
        if not dead:
            click.echo("no dead letters")
        for d in dead:
            click.echo(f"{d['project']}  {d['sha256'][:12]}  after {d['failures']} failures: {d['reason']}")
        return
    rows: list[dict[str, Any]] = [
        {"project": p, "sha256": i.sha256, "reason": i.flag_reason, "attempts": a, "last_error": err}
        for p, i, a, err in queue.pending()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("outbox empty")
    for r in rows:
        click.echo(
            f"{r['project']}  {r['sha256'][:12]}  {r['reason']:<30} attempts {r['attempts']}"
            + (f"  last error: {r['last_error']}" if r["last_error"] else "")
        )
