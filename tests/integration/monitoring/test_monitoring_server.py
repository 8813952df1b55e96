"""End to end through the real model server: its payload log feeds the scan, the scan queues relabel tasks."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from edgeloop.core import labelstudio as lsx
from edgeloop.core.config import load_settings
from edgeloop.monitoring.scan import ScanOptions, scan_window

launcher = pytest.importorskip("edgeloop.serving.launcher")


def test_served_shifted_traffic_is_scanned_and_queued(stack_settings, mon_assets, tmp_path):
    settings = load_settings(
        state_dir=tmp_path / "state",
        blob={"connection_string": stack_settings.blob_connection_string()},
        labelstudio={
            "url": stack_settings.labelstudio_url(),
            "api_key": stack_settings.labelstudio_api_key(),
            "project_title": f"served-{uuid.uuid4().hex[:8]}",
        },
    )
    name = f"served-{uuid.uuid4().hex[:6]}"
    pngs = [p.read_bytes() for p in mon_assets.images("shifted")]
    start = datetime.now(UTC) - timedelta(seconds=5)
    with launcher.running_server(
        [mon_assets.model_dir], settings, extra_args=["--payload_log_rate", "1", "--model_name", name]
    ) as srv:
        client = srv.rest_client(name)
        for i in range(0, len(pngs), 16):
            # half the clients ask for embeddings (logged with the record), half do not (the scan computes them)
            client.infer_images(pngs[i : i + 16], embedding=(i // 16) % 2 == 0)
    # leaving the block stops the server, which flushes its payload log
    end = datetime.now(UTC) + timedelta(seconds=5)

    report = scan_window(
        settings, mon_assets.model_dir, start, end, ScanOptions(budget=4, payload_model=name)
    )
    print(report.summary())
    assert report.records == len(pngs)
    assert report.drift
    assert 0 < len(report.selected) <= 4 and report.delivery["delivered"] == len(report.selected)
    ls = lsx.client(settings)
    proj = lsx.find_project(ls, settings.labelstudio.project_title)
    tasks = lsx.tasks_by_sha(ls, proj.id)
    assert set(tasks) == {s["sha256"] for s in report.selected}
    for task in tasks.values():
        (pred,) = ls.predictions.list(task=task.id)
        assert pred.model_version.startswith(f"{name}:")
