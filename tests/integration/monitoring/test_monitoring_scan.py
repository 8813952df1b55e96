"""Scans on the real stack (Azurite payload log + Label Studio relabel queue)."""

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from edgeloop.core import labelstudio as lsx
from edgeloop.monitoring.scan import ScanOptions, scan_window
from edgeloop.monitoring.simulate import replay_images
from edgeloop.testing.stack import closed_port, settings_on


@pytest.fixture(scope="module")
def traffic(stack_settings, mon_assets):
    """Payload records for the in-distribution and the shifted variant, under their own model names."""
    ts = datetime.now(UTC)
    names = {}
    for variant in ("same", "shifted"):
        name = f"mon-{variant}-{uuid.uuid4().hex[:6]}"
        recs = replay_images(
            stack_settings, mon_assets.model_dir, mon_assets.images(variant), ts=ts, model_name=name
        )
        names[variant] = (
            name,
            {r.image_sha256: lbl for r, lbl in zip(recs, mon_assets.labels(variant), strict=True)},
        )
    return {"ts": ts, "start": ts - timedelta(minutes=5), "end": ts + timedelta(minutes=5), **names}


def _scan(settings, assets, traffic, variant, **kw):
    opts = ScanOptions(payload_model=traffic[variant][0], **kw)
    return scan_window(settings, assets.model_dir, traffic["start"], traffic["end"], opts)


def _project_tasks(settings):
    ls = lsx.client(settings)
    proj = lsx.find_project(ls, settings.labelstudio.project_title)
    return (ls, proj, lsx.tasks_by_sha(ls, proj.id)) if proj else (ls, None, {})


def test_shifted_traffic_is_drift_and_queues_at_most_k_with_predictions(
    stack_settings, mon_assets, traffic, tmp_path
):
    settings = settings_on(stack_settings, tmp_path / "state")
    budget = 6
    report = _scan(settings, mon_assets, traffic, "shifted", budget=budget)
    print(report.summary())
    assert report.drift
    by_name = {r.name: r for r in report.results}
    assert by_name["embedding_mmd"].is_drift and by_name["image_stats_ks"].is_drift
    assert report.records == len(mon_assets.images("shifted"))
    assert 0 < len(report.selected) <= budget
    assert report.delivery["delivered"] == len(report.selected) and not report.delivery["error"]

    ls, proj, tasks = _project_tasks(settings)
    assert set(tasks) == {s["sha256"] for s in report.selected}
    name = traffic["shifted"][0]
    for sha, task in tasks.items():
        data = task.data
        assert data["blob_uri"] == f"az://payloads/images/{sha}.png"
        assert data["flag_reason"] and data["flag_score"] > 0
        png = httpx.get(data["image"]).content  # the SAS URL a labeler's browser opens
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        preds = list(ls.predictions.list(task=task.id))
        assert len(preds) == 1
        assert preds[0].model_version == f"{name}:1"
        assert 0 < preds[0].score <= 1
        assert preds[0].result[0]["value"]["choices"][0] in mon_assets.labels("train")

    # the same window again: nothing new anywhere
    again = _scan(settings, mon_assets, traffic, "shifted", budget=budget)
    assert again.enqueue["enqueued"] == 0 and again.enqueue["already_delivered"] == len(report.selected)
    assert again.delivery["delivered"] == 0
    assert set(_project_tasks(settings)[2]) == set(tasks)


def test_in_distribution_traffic_is_not_drift(stack_settings, mon_assets, traffic, tmp_path):
    settings = settings_on(stack_settings, tmp_path / "state")
    report = _scan(settings, mon_assets, traffic, "same", budget=4, queue=False, deliver=False)
    print(report.summary())
    assert not report.drift, report.summary()
    assert all(not r.is_drift for r in report.results)
    assert report.records == len(mon_assets.images("same"))


def test_label_studio_down_queues_nothing_twice_and_delivers_when_back(
    stack_settings, mon_assets, traffic, tmp_path
):
    state = tmp_path / "state"
    up = settings_on(stack_settings, state)
    down = settings_on(
        stack_settings,
        state,
        ls_url=f"http://127.0.0.1:{closed_port()}",
        project=up.labelstudio.project_title,
    )
    budget = 5
    first = _scan(down, mon_assets, traffic, "shifted", budget=budget)
    k = len(first.selected)
    assert first.drift and k > 0
    assert first.delivery["delivered"] == 0 and "unreachable" in first.delivery["error"]
    assert first.outbox_size == k

    second = _scan(down, mon_assets, traffic, "shifted", budget=budget)  # still down: no duplicates
    assert second.enqueue["enqueued"] == 0 and second.enqueue["already_pending"] == k
    assert second.outbox_size == k
    assert _project_tasks(up)[1] is None  # nothing reached Label Studio

    # a task for one of the images already exists (an earlier delivery crashed after importing it)
    ls = lsx.client(up)
    proj = lsx.ensure_project(ls, up.labelstudio.project_title, mon_assets.labels("train"))
    crashed = first.selected[0]
    lsx.import_tasks(
        ls,
        proj.id,
        [{"image": "http://x/y.png", "blob_uri": crashed["blob_uri"], "sha256": crashed["sha256"]}],
    )

    back = _scan(up, mon_assets, traffic, "shifted", budget=budget)  # Label Studio is back
    assert back.enqueue["enqueued"] == 0
    assert back.delivery["delivered"] == k - 1 and back.delivery["already_in_project"] == 1
    assert back.outbox_size == 0
    tasks = _project_tasks(up)[2]
    assert set(tasks) == {s["sha256"] for s in first.selected}
    assert len(list(lsx.iter_tasks(ls, proj.id))) == k  # no duplicate task for any image

    final = _scan(up, mon_assets, traffic, "shifted", budget=budget)
    assert final.enqueue["enqueued"] == 0 and final.delivery["delivered"] == 0


def test_cli_scan_writes_report_json_and_metrics(stack_settings, mon_assets, traffic, tmp_path):
    import yaml
    from click.testing import CliRunner

    from edgeloop.cli import cli

    settings = settings_on(stack_settings, tmp_path / "state")
    config = tmp_path / "edgeloop.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(settings.state_dir),
                "blob": {"connection_string": stack_settings.blob_connection_string()},
                "labelstudio": {
                    "url": settings.labelstudio.url,
                    "api_key": stack_settings.labelstudio_api_key(),
                    "project_title": settings.labelstudio.project_title,
                },
            }
        )
    )
    html, prom = tmp_path / "drift.html", tmp_path / "monitor.prom"
    args = [
        "--config",
        str(config),
        "monitor",
        "scan",
        "--model-dir",
        str(mon_assets.model_dir),
        "--payload-model",
        traffic["shifted"][0],
        "--since",
        traffic["start"].isoformat(),
        "--until",
        traffic["end"].isoformat(),
        "--budget",
        "3",
        "--report",
        str(html),
        "--json",
        "--metrics-file",
        str(prom),
    ]
    t0 = time.perf_counter()
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    wall = time.perf_counter() - t0
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    print(
        f"cli scan wall {wall:.1f}s; results {[(r['name'], r['p_val'], r['distance']) for r in report['results']]}"
    )
    assert report["drift"] is True and len(report["selected"]) <= 3
    page = html.read_text()
    assert "embedding_mmd" in page and "Selected for labeling" in page
    assert page.count("data:image/png;base64,") >= 3 + len(report["selected"])  # 3 plots + thumbnails
    metrics = prom.read_text()
    assert 'edgeloop_drift_p_value{detector="embedding_mmd"' in metrics
    assert "edgeloop_relabel_outbox_size 0.0" in metrics

    # an unreadable window is a user error (exit 2, one line), not a traceback
    bad = CliRunner().invoke(cli, [*args[:4], "--model-dir", str(tmp_path), "--window", "1h"])
    assert bad.exit_code == 2 and "model_card.json" in bad.output


def test_monitor_run_serves_metrics(stack_settings, mon_assets, traffic, tmp_path):
    from click.testing import CliRunner

    from edgeloop.cli import cli

    settings = settings_on(stack_settings, tmp_path / "state")
    port = closed_port()
    env = {
        "EDGELOOP_STATE_DIR": str(settings.state_dir),
        "EDGELOOP_BLOB__CONNECTION_STRING": stack_settings.blob_connection_string(),
        "EDGELOOP_LABELSTUDIO__URL": settings.labelstudio.url,
        "EDGELOOP_LABELSTUDIO__API_KEY": stack_settings.labelstudio_api_key(),
        "EDGELOOP_LABELSTUDIO__PROJECT_TITLE": settings.labelstudio.project_title,
    }
    result = CliRunner(env=env).invoke(
        cli,
        [
            "monitor",
            "run",
            "--model-dir",
            str(mon_assets.model_dir),
            "--payload-model",
            traffic["same"][0],
            "--window",
            "30m",
            "--interval",
            "1s",
            "--iterations",
            "1",
            "--metrics-port",
            str(port),
            "--metrics-host",
            "127.0.0.1",
            "--budget",
            "2",
            "--report-dir",
            str(tmp_path / "reports"),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "DRIFT: no" in result.output
    body = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert (
        f'edgeloop_monitor_window_records{{model="{traffic["same"][0]}"}} {float(len(mon_assets.images("same")))}'
        in body
    )
    assert (tmp_path / "reports" / "latest.html").exists()


def test_model_by_registry_alias_is_downloaded_and_verified(stack_settings, mon_assets, tmp_path):
    import mlflow

    from edgeloop.monitoring.cli import resolve_model_dir
    from edgeloop.monitoring.profile import PROFILE_FILE

    settings = settings_on(stack_settings, tmp_path / "state")
    name = f"mon-registry-{uuid.uuid4().hex[:6]}"
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri())
    mlflow.set_experiment("monitoring-tests")
    client = mlflow.MlflowClient()
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(mon_assets.model_dir), "model")
    client.create_registered_model(name)
    mv = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", mv.version)

    directory = resolve_model_dir(settings, None, name, "champion")
    assert (directory / "model_card.json").exists() and (directory / PROFILE_FILE).exists()
    assert str(settings.state_dir) in str(directory)  # cached under the state dir
    assert resolve_model_dir(settings, None, name, "champion") == directory  # second call: from the cache
