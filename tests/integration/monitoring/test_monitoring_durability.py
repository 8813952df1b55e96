"""Flags that follow drift, measured with the real scan; and a relabel queue that loses nothing on a cluster.

Acceptance figures (issue: flags follow drift / nothing lost): fresh in-distribution traffic
is no drift with <= 15 % of its images flagged; fresh traffic of a shifted site (seed 777) is
drift with >= 50 % flagged, and the labelers' budget goes to the images that carry the drift.
"""

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from edgeloop.core import labelstudio as lsx
from edgeloop.core.blob import BlobStore
from edgeloop.core.payload_log import records_blob_name
from edgeloop.monitoring.flags import OOD
from edgeloop.monitoring.relabel import BlobDeliveryLease, RelabelItem, RelabelQueue
from edgeloop.monitoring.scan import ScanOptions, scan_window
from edgeloop.monitoring.simulate import replay_images
from edgeloop.testing.stack import closed_port, settings_on


@pytest.fixture(scope="module")
def fresh_traffic(stack_settings, mon_assets):
    """200 fresh in-distribution images and 200 fresh images of a shifted site, served and logged."""
    ts = datetime.now(UTC)
    names = {}
    for variant in ("fresh", "fresh_shifted"):
        names[variant] = f"mon-{variant.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
        replay_images(
            stack_settings, mon_assets.model_dir, mon_assets.images(variant), ts=ts, model_name=names[variant]
        )
    return {"ts": ts, "start": ts - timedelta(minutes=5), "end": ts + timedelta(minutes=5), **names}


def _scan(settings, assets, traffic, variant, **kw):
    opts = ScanOptions(payload_model=traffic[variant], **kw)
    return scan_window(settings, assets.model_dir, traffic["start"], traffic["end"], opts)


def test_fresh_in_distribution_traffic_is_no_drift_and_few_images_are_flagged(
    stack_settings, mon_assets, fresh_traffic, tmp_path
):
    settings = settings_on(stack_settings, tmp_path / "state")
    report = _scan(settings, mon_assets, fresh_traffic, "fresh", queue=False, deliver=False)
    print(report.summary())
    assert report.images == len(mon_assets.images("fresh")) >= 200
    assert report.reference_images >= 200 and not report.warnings
    assert not report.drift
    assert report.flagged <= 0.15 * report.images
    assert sum(report.flag_reasons.values()) >= report.flagged  # per reason, an image may have several


def test_fresh_shifted_traffic_is_drift_and_the_budget_goes_to_its_images(
    stack_settings, mon_assets, fresh_traffic, tmp_path
):
    settings = settings_on(stack_settings, tmp_path / "state")
    budget = 12
    report = _scan(settings, mon_assets, fresh_traffic, "fresh_shifted", budget=budget)
    print(report.summary())
    assert report.images == len(mon_assets.images("fresh_shifted")) >= 200
    assert report.drift
    assert report.flagged >= 0.5 * report.images
    assert report.flag_reasons[OOD] >= 0.5 * report.images
    # the queue takes the budget from the images that carry the drift, and reports it per reason
    assert len(report.selected) == budget
    assert all(OOD in s["reason"] and s["priority"] == "drift" for s in report.selected)
    assert report.selected_reasons[OOD] == budget and report.queued_reasons[OOD] == budget
    assert report.delivery["delivered"] == budget
    assert "queued per reason: out_of_distribution 12" in report.summary()


def test_a_malformed_payload_line_is_skipped_and_counted(stack_settings, mon_assets, tmp_path):
    settings = settings_on(stack_settings, tmp_path / "state")
    ts = datetime.now(UTC)
    name = f"mon-bad-line-{uuid.uuid4().hex[:6]}"
    images = mon_assets.images("same")[:30]
    recs = replay_images(stack_settings, mon_assets.model_dir, images, ts=ts, model_name=name)
    store = BlobStore.from_settings(stack_settings)
    good = recs[0].model_copy(update={"id": uuid.uuid4().hex}).model_dump_json()
    blob = f"az://{settings.blob.payloads_container}/{records_blob_name(name, ts)}"
    store.upload(blob, f'{{"ts": "not a time", "truncated\n{good}\n\x00\x01garbage\n'.encode())
    opts = ScanOptions(payload_model=name, queue=False, deliver=False)
    report = scan_window(
        settings, mon_assets.model_dir, ts - timedelta(minutes=5), ts + timedelta(minutes=5), opts
    )
    assert report.records_malformed == 2
    assert report.records == len(recs) + 1  # the valid line of the damaged blob still counts
    assert "2 malformed payload-log lines" in report.summary()


def _job_env(stack_settings, state_dir, ls_url, project):
    """The environment the drift CronJob gives its container (state dir = the PVC's mount)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}
    env.update(
        EDGELOOP_STATE_DIR=str(state_dir),
        EDGELOOP_BLOB__CONNECTION_STRING=stack_settings.blob_connection_string(),
        EDGELOOP_LABELSTUDIO__URL=ls_url,
        EDGELOOP_LABELSTUDIO__API_KEY=stack_settings.labelstudio_api_key(),
        EDGELOOP_LABELSTUDIO__PROJECT_TITLE=project,
        EDGELOOP_MLFLOW__TRACKING_URI=stack_settings.mlflow_tracking_uri(),
    )
    return env


def test_the_outbox_survives_across_two_job_runs(stack_settings, mon_assets, fresh_traffic, tmp_path):
    pvc = tmp_path / "pvc"  # what the PersistentVolumeClaim holds between Jobs
    project = f"relabel-{uuid.uuid4().hex[:8]}"
    args = [
        *("-m", "edgeloop.cli", "monitor", "scan", "--json"),
        *("--model-dir", str(mon_assets.model_dir), "--payload-model", fresh_traffic["fresh_shifted"]),
        *("--since", fresh_traffic["start"].isoformat(), "--until", fresh_traffic["end"].isoformat()),
        *("--budget", "5"),
    ]

    def job(ls_url):  # a new process each time, like a Job's pod; each run starts in a fresh working dir
        work = tmp_path / f"job-{uuid.uuid4().hex[:6]}"
        work.mkdir()
        res = subprocess.run(
            [sys.executable, *args],
            env=_job_env(stack_settings, pvc, ls_url, project),
            cwd=work,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        return json.loads(res.stdout)

    first = job(f"http://127.0.0.1:{closed_port()}")  # Label Studio is down during the first Job
    assert first["drift"] and first["enqueue"]["enqueued"] == 5
    assert first["delivery"]["delivered"] == 0 and first["outbox_size"] == 5

    second = job(stack_settings.labelstudio_url())  # the next Job: Label Studio is back
    assert second["enqueue"]["enqueued"] == 0 and second["enqueue"]["already_pending"] == 5
    assert second["delivery"]["delivered"] == 5 and second["outbox_size"] == 0

    up = settings_on(stack_settings, tmp_path / "other", project=project)
    ls = lsx.client(up)
    proj = lsx.find_project(ls, project)
    assert set(lsx.tasks_by_sha(ls, proj.id)) == {s["sha256"] for s in first["selected"]}
    third = job(stack_settings.labelstudio_url())
    assert third["enqueue"]["already_delivered"] == 5 and third["delivery"]["delivered"] == 0


def _items(recs, n):
    return [
        RelabelItem(
            sha256=r.image_sha256,
            blob_uri=r.image_uri,
            image_url="",
            predicted_label=r.label,
            score=r.score,
            model_version=f"{r.model}:{r.version}",
            flag_reason=OOD,
            flag_score=1.0,
            labels=["ok", "scratch", "dent", "stain"],
        )
        for r in recs[:n]
    ]


def test_a_failing_item_is_retried_then_dead_lettered_without_blocking_others(
    stack_settings, mon_assets, tmp_path
):
    settings = settings_on(stack_settings, tmp_path / "state")
    project = settings.labelstudio.project_title
    recs = replay_images(
        stack_settings, mon_assets.model_dir, mon_assets.images("same")[:4], model_name="mon-dead-letter"
    )
    good = _items(recs, 3)
    bad = _items(recs[3:], 1)[0]
    bad.blob_uri = "payloads/images/no-scheme.png"  # cannot be signed: fails on its own, every time
    queue = RelabelQueue.for_settings(settings, max_failures=2)
    queue.enqueue(project, [good[0], bad])

    first = queue.deliver(settings)
    assert first.delivered == 1 and first.failed == 1 and first.dead_lettered == 0
    assert [(i.sha256, attempts) for _, i, attempts, _ in queue.pending()] == [(bad.sha256, 1)]

    queue.enqueue(project, good[1:])
    second = queue.deliver(settings)  # the bad item does not hold back the new ones
    assert second.delivered == 2 and second.failed == 1 and second.dead_lettered == 1
    assert queue.outbox_size() == 0
    (dead,) = queue.dead_letters()
    assert dead["sha256"] == bad.sha256 and dead["failures"] == 2 and "not a blob URI" in dead["reason"]
    assert queue.enqueue(project, [bad]).already_dead == 1  # flagged again later: not queued again

    ls = lsx.client(settings)
    tasks = lsx.tasks_by_sha(ls, lsx.find_project(ls, project).id)
    assert set(tasks) == {g.sha256 for g in good}
    assert queue.retry_dead_letters() == 1 and queue.outbox_size() == 1  # an operator's retry


def test_two_deliveries_never_run_at_once_across_machines(stack_settings, mon_assets, tmp_path):
    settings = settings_on(stack_settings, tmp_path / "state")
    recs = replay_images(
        stack_settings, mon_assets.model_dir, mon_assets.images("same")[:2], model_name="mon-lease"
    )
    queue = RelabelQueue.for_settings(settings)
    queue.enqueue(settings.labelstudio.project_title, _items(recs, 2))
    other_node = BlobDeliveryLease(BlobStore.from_settings(settings), settings.blob.payloads_container)
    with other_node.hold():  # another scan, on another node, is delivering
        busy = queue.deliver(settings)
        assert busy.lease_busy and busy.delivered == 0 and busy.pending == 2
    done = queue.deliver(settings)
    assert not done.lease_busy and done.delivered == 2 and done.pending == 0
