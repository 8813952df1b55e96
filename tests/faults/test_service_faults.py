"""SIGKILL of Label Studio, the monitor, MLflow, a pipeline step and Azurite in the middle of real work.

What a user must see: no flagged image queued twice or lost; a training run's metrics complete after
MLflow comes back; one registered version per model digest after a killed registration is re-run; a
blob that storage lost is reported by name. Azurite goes last: its SIGKILL may lose recent writes.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter

import pytest

from edgeloop.core import labelstudio as lsx
from edgeloop.monitoring.relabel import LEASE_BLOB, RelabelItem, RelabelQueue
from edgeloop.testing.faults import kill_service, restart_service
from edgeloop.testing.stack import settings_on
from edgeloop.testing.waits import join, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

LABELS = ["ok", "scratch", "dent"]


def _items(n: int) -> list[RelabelItem]:
    out = []
    for _ in range(n):
        sha = uuid.uuid4().hex * 2
        out.append(
            RelabelItem(
                sha256=sha,
                blob_uri=f"az://payloads/images/{sha}.png",
                image_url="",
                predicted_label="ok",
                score=0.5,
                model_version="faults:1",
                flag_reason="uncertain",
                flag_score=0.5,
                labels=LABELS,
            )
        )
    return out


def _tasks_per_sha(settings) -> Counter[str]:
    """How many tasks the project holds for each image (a duplicate shows as 2)."""
    ls = lsx.client(settings)
    project = lsx.find_project(ls, settings.labelstudio.project_title)
    if project is None:
        return Counter()
    return Counter((t.data or {}).get("sha256") for t in lsx.iter_tasks(ls, project.id))


def _assert_each_once(settings, queue: RelabelQueue, items: list[RelabelItem]) -> None:
    per_sha = _tasks_per_sha(settings)
    assert per_sha == Counter({i.sha256: 1 for i in items})  # every flagged image once: none lost, none twice
    assert queue.outbox_size() == 0 and not queue.dead_letters()
    assert set(queue.delivered(settings.labelstudio.project_title)) == {i.sha256 for i in items}


def test_label_studio_killed_mid_delivery(fault_stack, tmp_path, monkeypatch, fault_log):
    settings = settings_on(fault_stack, tmp_path / "state")
    queue = RelabelQueue.for_settings(settings)
    items = _items(20)
    queue.enqueue(settings.labelstudio.project_title, items)
    real_import = lsx.import_tasks
    chunks = []

    def import_then_kill(*args, **kwargs):
        ids = real_import(*args, **kwargs)
        chunks.append(len(ids))
        if len(chunks) == 2:  # tasks created, not yet in the ledger: the worst moment
            kill_service(fault_stack, "labelstudio")
        return ids

    monkeypatch.setattr(lsx, "import_tasks", import_then_kill)
    first = queue.deliver(settings, chunk=5)
    monkeypatch.setattr(lsx, "import_tasks", real_import)
    assert first.error and first.pending == 20 - first.delivered  # an outage: the rest waits
    restart_s = restart_service(fault_stack, "labelstudio")
    t0 = time.monotonic()
    second = queue.deliver(settings, chunk=5)
    deliver_s = time.monotonic() - t0
    assert second.error is None and second.pending == 0
    assert second.already_in_project == 5  # the chunk created before the kill was found, not re-imported
    _assert_each_once(settings, queue, items)
    fault_log.record(
        "label studio",
        outcome="delivery stops at the outage with every undelivered item in the outbox; the next delivery "
        "finds tasks created just before the kill by sha256 instead of importing them again",
        items=len(items),
        items_lost=0,
        items_duplicated=0,
        restart_s=round(restart_s, 2),
        redelivery_s=round(deliver_s, 2),
    )


_MONITOR = textwrap.dedent(
    """
    import os, signal, sys
    from edgeloop.core import labelstudio as lsx
    from edgeloop.core.config import load_settings
    from edgeloop.monitoring.relabel import RelabelQueue
    from edgeloop.testing.stack import settings_on

    stack_dir, state_dir, project = sys.argv[1:4]
    settings = settings_on(load_settings(state_dir=stack_dir), state_dir, project=project)
    real = lsx.import_tasks
    done = []

    def import_then_die(*args, **kwargs):
        ids = real(*args, **kwargs)
        done.append(ids)
        if len(done) == 2:  # Label Studio made the tasks; the ledger has not recorded them
            os.kill(os.getpid(), signal.SIGKILL)
        return ids

    lsx.import_tasks = import_then_die
    RelabelQueue.for_settings(settings, lease_s=15).deliver(settings, chunk=5)
    """
)


def test_monitor_killed_mid_delivery(fault_stack, tmp_path, fault_log):
    state = tmp_path / "state"
    settings = settings_on(fault_stack, state)
    project = settings.labelstudio.project_title
    queue = RelabelQueue.for_settings(settings, lease_s=15)  # the shortest lease Azure Blob allows
    items = _items(20)
    assert queue.enqueue(project, items).enqueued == 20
    killed = subprocess.run(
        [sys.executable, "-c", _MONITOR, str(fault_stack.state_dir), str(state), project],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert killed.returncode == -9, killed.stderr  # died by SIGKILL, mid-delivery
    assert sum(_tasks_per_sha(settings).values()) == 10  # two chunks reached Label Studio
    assert queue.enqueue(project, items).enqueued == 0  # the next scan flags them again: not queued twice
    waiting = queue.outbox_size()
    assert waiting == 15  # the first chunk was recorded before the kill
    t0 = time.monotonic()

    def deliver_once_the_lease_lapsed():  # the restarted monitor
        report = queue.deliver(settings, chunk=5)
        # the killed process held the cross-node delivery lease: it lapses on its own (lease_s at most)
        return None if report.lease_busy else report

    report = wait_until(
        deliver_once_the_lease_lapsed,
        120,
        f"the killed monitor's delivery lease on az://{settings.blob.payloads_container}/{LEASE_BLOB} to lapse",
        step_s=2,
    )
    deliver_s = time.monotonic() - t0
    assert report.pending == 0 and report.delivered + report.already_in_project == waiting
    assert report.already_in_project == 5  # the chunk the killed process never recorded
    _assert_each_once(settings, queue, items)
    fault_log.record(
        "monitor",
        outcome="items stay in the relabel outbox (sqlite, synchronous=FULL) until the ledger records "
        "them; the next delivery waits for the killed one's blob lease to lapse (15-60 s, here 15), then finds "
        "tasks by sha256, so nothing is queued twice or lost",
        items=len(items),
        items_lost=0,
        items_duplicated=0,
        found_already_in_project=report.already_in_project,
        kill_to_delivered_s=round(deliver_s, 2),
    )


def test_mlflow_killed_while_a_run_logs_metrics(fault_stack, fault_log):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(fault_stack.mlflow_tracking_uri())
    experiment = client.create_experiment(f"faults-{uuid.uuid4().hex[:8]}")
    run_id = client.create_run(experiment).info.run_id
    steps = 40
    logged: list[float] = []
    errors: list[BaseException] = []

    def train() -> None:
        try:
            for step in range(steps):
                client.log_metric(run_id, "loss", 1.0 / (step + 1), step=step)
                logged.append(time.monotonic())
                time.sleep(0.05)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    trainer = threading.Thread(target=train)
    trainer.start()
    mlflow_at = f"MLflow at {fault_stack.mlflow_tracking_uri()}"
    wait_until(
        lambda: len(logged) >= 10 or errors,
        60,
        lambda: f"10 metric steps logged to {mlflow_at} (got {len(logged)})",
        step_s=0.02,
    )
    kill_service(fault_stack, "mlflow")
    killed = time.monotonic()
    restart_s = restart_service(fault_stack, "mlflow")
    join(trainer, 300, f"the run to log its {steps} steps to the restarted {mlflow_at}")
    assert not trainer.is_alive() and not errors, errors
    resumed_s = min(t for t in logged if t > killed) - killed
    history = client.get_metric_history(run_id, "loss")
    assert Counter(m.step for m in history) == Counter(range(steps))  # every step once: none lost, none twice
    fault_log.record(
        "mlflow",
        outcome="the tracking client retries with back-off until the restarted server answers; "
        "metrics logged before the kill are in its database, none is lost or doubled",
        metric_steps=steps,
        steps_lost=0,
        restart_s=round(restart_s, 2),
        kill_to_logging_again_s=round(resumed_s, 2),
    )


_STEP = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from mlflow.tracking import MlflowClient
    from edgeloop.core.config import load_settings
    from edgeloop.pipelines import registry
    from edgeloop.pipelines.evaluation import EvaluationReport
    from edgeloop.pipelines.gate import GateDecision

    stack_dir, name, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    s = load_settings(state_dir=stack_dir)
    s = s.model_copy(update={"mlflow": s.mlflow.model_copy(update={"registered_model": name})})
    real = MlflowClient.create_model_version

    def create_then_die(self, *args, **kwargs):
        mv = real(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)  # the step dies right after the registry made the version

    MlflowClient.create_model_version = create_then_die
    report = EvaluationReport.model_validate_json((work / "report.json").read_text())
    decision = GateDecision.model_validate_json((work / "decision.json").read_text())
    registry.register_candidate(s, work / "model", report, decision, lineage={"pipeline_run": "run-1"})
    """
)


def test_pipeline_step_killed_then_rerun_registers_one_version(fault_stack, tmp_path, fault_log):
    import numpy as np
    from mlflow.tracking import MlflowClient

    from edgeloop.core.blob import BlobStore
    from edgeloop.core.model_card import ModelCard
    from edgeloop.pipelines import registry
    from edgeloop.pipelines.evaluation import evaluate_predictions
    from edgeloop.pipelines.gate import GateThresholds, evaluate_rules
    from edgeloop.testing.models import build_linear_model_dir

    name = f"faults-{uuid.uuid4().hex[:8]}"
    settings = fault_stack.model_copy(
        update={"mlflow": fault_stack.mlflow.model_copy(update={"registered_model": name})}
    )
    work = tmp_path / "step"
    model = build_linear_model_dir(work / "model", seed=0, name=name)
    y = [0, 1, 2, 3] * 60
    probs = np.full((len(y), 4), 0.05)
    probs[np.arange(len(y)), y] = 0.85
    report = evaluate_predictions(["ok", "scratch", "dent", "stain"], y, probs, reference_probs=probs)
    decision = evaluate_rules(report, None, GateThresholds(min_class_recall=0.0))
    (work / "report.json").write_text(report.model_dump_json())
    (work / "decision.json").write_text(decision.model_dump_json())

    killed = subprocess.run(
        [sys.executable, "-c", _STEP, str(fault_stack.state_dir), name, str(work)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr
    t0 = time.monotonic()
    again = registry.register_candidate(settings, model, report, decision, lineage={"pipeline_run": "run-2"})
    rerun_s = time.monotonic() - t0

    digest = ModelCard.load(model).digest()
    client = MlflowClient(settings.mlflow_tracking_uri())
    versions = client.search_model_versions(f"name = '{name}'")
    assert [v.tags.get(registry.MODEL_DIGEST) for v in versions] == [digest]  # one version, this digest
    assert again.version == str(versions[0].version)
    store = BlobStore.from_settings(settings)
    prefix = f"{name}/{digest[:16]}/"
    files = sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file())
    container = settings.blob.models_container
    assert sorted(n[len(prefix) :] for n in store.list(container, prefix)) == files  # one set of blobs
    assert [n for n in store.list(container, f"{name}/") if not n.startswith(prefix)] == []  # no orphans
    fault_log.record(
        "pipeline step",
        outcome="the re-run finds the version the killed step registered (tag edgeloop.model_digest) and "
        "links to it; model blobs are content-addressed, so the re-upload overwrites the same set",
        registered_versions=len(versions),
        rerun_s=round(rerun_s, 2),
    )
    tags = versions[0].tags
    if tags.get(registry.GATE) == "passed" and tags.get(registry.APPROVAL) == registry.PENDING:
        # Killed between create_model_version and the alias: the re-run finishes the step.
        aliases = client.get_registered_model(name).aliases or {}
        assert str(aliases.get(registry.CANDIDATE)) == again.version


def test_azurite_killed_right_after_a_write(fault_stack, fault_log):
    from edgeloop.core.blob import BlobNotFoundError, BlobStore

    store = BlobStore.from_settings(fault_stack)
    uri = f"az://{fault_stack.blob.payloads_container}/faults/{uuid.uuid4().hex}.png"
    store.upload(uri, b"\x89PNG fault test")
    kill_service(fault_stack, "azurite")
    restart_s = restart_service(fault_stack, "azurite")
    t0 = time.monotonic()
    try:
        data = store.download(uri, referenced_by="payload record r-1")
        outcome, lost = ("the write survived", 0) if data == b"\x89PNG fault test" else ("corrupt", 1)
    except BlobNotFoundError as e:
        message = str(e)
        assert uri in message and "payload record r-1" in message  # named, with what points to it
        outcome, lost = "lost by storage; the reader names the missing blob", 1
    assert outcome != "corrupt"
    read_s = time.monotonic() - t0
    store.upload(uri, b"again")  # storage works again after the restart
    assert store.download(uri) == b"again"
    fault_log.record(
        "azurite",
        outcome=outcome,
        blobs_lost=lost,
        restart_s=round(restart_s, 2),
        missing_reported_in_s=round(read_s, 2),
    )
