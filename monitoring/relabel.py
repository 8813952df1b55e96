"""The relabel queue: flagged images become Label Studio tasks with the model's prediction.

Two guarantees:

* **never twice** - an image (sha256) is queued once per project: a local ledger records
  what was delivered, and before importing, delivery checks the project's existing tasks
  by ``data.sha256`` (so a crash between import and ledger write, a second machine, or an
  image that was seeded for training, does not make a duplicate);
* **nothing lost** - new items go to a persistent outbox (sqlite, under the state dir)
  first; delivery imports what it can and leaves the rest for the next scan/run when
  Label Studio is unreachable.

Tasks follow :mod:`edgeloop.core.labelstudio`'s conventions (``image`` SAS URL, ``blob_uri``,
``sha256``, plus ``flag_reason`` / ``flag_score``), so the label import treats a
relabeled image exactly like a seeded one. The prediction (label, score, model_version)
is imported with the task as a pre-annotation. This module never starts training.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.core import labelstudio as lsx
from edgeloop.core.blob import BlobStore

if TYPE_CHECKING:
    from edgeloop.core.config import Settings

log = logging.getLogger(__name__)

OUTBOX_FILE = "relabel.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    project TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    item TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_attempt_at REAL,
    PRIMARY KEY (project, sha256)
);
CREATE TABLE IF NOT EXISTS ledger (
    project TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    task_id INTEGER,
    outcome TEXT NOT NULL,
    queued_at REAL NOT NULL,
    delivered_at REAL NOT NULL,
    PRIMARY KEY (project, sha256)
);
"""


@dataclass
class RelabelItem:
    """One image to be labeled: the task data and the model's prediction for it."""

    sha256: str
    blob_uri: str  # az://payloads/images/<sha>.png
    image_url: str  # SAS URL a labeler's browser can open; re-signed when the task is delivered
    predicted_label: str
    score: float
    model_version: str
    flag_reason: str
    flag_score: float
    labels: list[str]  # the model's classes (the project's choices must include them)
    metadata: dict[str, Any] = field(default_factory=dict)

    def task(self) -> dict[str, Any]:
        """The Label Studio import payload: data + prediction, created in one request."""
        data = {
            "image": self.image_url,
            "blob_uri": self.blob_uri,
            "sha256": self.sha256,
            lsx.NOTE: lsx.relabel_note(
                self.flag_reason, self.flag_score, self.predicted_label, self.model_version
            ),
            "flag_reason": self.flag_reason,
            "flag_score": round(self.flag_score, 6),
            "model_version": self.model_version,
            "predicted_label": self.predicted_label,
            "source": self.metadata.get("source") or "relabel",
            **{k: v for k, v in self.metadata.items() if k != "source"},
        }
        prediction = {
            "result": lsx.choice_result(self.predicted_label),
            "score": float(self.score),
            "model_version": self.model_version,
        }
        return {"data": data, "predictions": [prediction]}


@dataclass
class EnqueueReport:
    offered: int = 0
    enqueued: int = 0
    already_delivered: int = 0
    already_pending: int = 0


@dataclass
class DeliveryReport:
    attempted: int = 0
    delivered: int = 0  # new tasks created
    already_in_project: int = 0  # a task with that sha256 existed: recorded, not re-imported
    pending: int = 0  # still in the outbox after this delivery
    error: str | None = None
    task_ids: list[int] = field(default_factory=list)
    links_refreshed: int = 0  # task image links re-signed because they were about to expire

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RelabelQueue:
    """Outbox + ledger in one sqlite file; delivery into one Label Studio project per title."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(_SCHEMA)

    @classmethod
    def for_settings(cls, settings: Settings) -> RelabelQueue:
        return cls(settings.state_dir / "monitoring" / OUTBOX_FILE)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _delivery_lock(self) -> Iterator[None]:
        """One delivery at a time across processes (a cron scan and `monitor run` may overlap)."""
        with open(self.path.with_suffix(".lock"), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- queue --------------------------------------------------------------
    def known(self, project: str) -> set[str]:
        """sha256 of every image delivered to or waiting for ``project``."""
        with self._db() as db:
            rows = db.execute(
                "SELECT sha256 FROM ledger WHERE project=? UNION SELECT sha256 FROM outbox "
                "WHERE project=?",
                (project, project),
            ).fetchall()
        return {r[0] for r in rows}

    def enqueue(self, project: str, items: Sequence[RelabelItem]) -> EnqueueReport:
        report = EnqueueReport(offered=len(items))
        now = time.time()
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            for item in items:
                if db.execute(
                    "SELECT 1 FROM ledger WHERE project=? AND sha256=?", (project, item.sha256)
                ).fetchone():
                    report.already_delivered += 1
                    continue
                cur = db.execute(
                    "INSERT OR IGNORE INTO outbox (project, sha256, item, created_at) VALUES (?,?,?,?)",
                    (project, item.sha256, json.dumps(asdict(item)), now),
                )
                if cur.rowcount:
                    report.enqueued += 1
                else:
                    report.already_pending += 1
            db.execute("COMMIT")
        return report

    def pending(self, project: str | None = None) -> list[tuple[str, RelabelItem, int, str | None]]:
        """(project, item, attempts, last_error) for everything not yet delivered, oldest first."""
        q = "SELECT project, item, attempts, last_error FROM outbox"
        args: tuple[Any, ...] = ()
        if project is not None:
            q += " WHERE project=?"
            args = (project,)
        with self._db() as db:
            rows = db.execute(q + " ORDER BY created_at, sha256", args).fetchall()
        return [(p, RelabelItem(**json.loads(item)), attempts, err) for p, item, attempts, err in rows]

    def outbox_size(self, project: str | None = None) -> int:
        return len(self.pending(project))

    def delivered(self, project: str) -> dict[str, int | None]:
        """sha256 -> Label Studio task id of what the ledger records as delivered."""
        with self._db() as db:
            rows = db.execute("SELECT sha256, task_id FROM ledger WHERE project=?", (project,)).fetchall()
        return dict(rows)

    # -- delivery -----------------------------------------------------------
    def deliver(self, settings: Settings, project: str | None = None, chunk: int = 100) -> DeliveryReport:
        """Import pending items into Label Studio. Never raises for an unreachable server: the items
        stay in the outbox with the error recorded, and the next call tries again."""
        report = DeliveryReport()
        with self._delivery_lock():
            by_project: dict[str, list[RelabelItem]] = {}
            for proj, item, _, _ in self.pending(project):
                by_project.setdefault(proj, []).append(item)
            for proj, items in by_project.items():
                report.attempted += len(items)
                try:
                    self._deliver_project(settings, proj, items, chunk, report)
                except Exception as e:  # any failure: keep the items, record why, retry next time
                    msg = f"{type(e).__name__}: {e}"[:500]
                    report.error = msg
                    log.warning(
                        "relabel delivery to %r failed (%s); %d items stay in the outbox",
                        proj,
                        msg,
                        len(items),
                    )
                    self._record_failure(proj, [i.sha256 for i in items], msg)
            report.pending = self.outbox_size(project)
        for proj in dict.fromkeys([*by_project, project or settings.labelstudio.project_title]):
            report.links_refreshed += self._refresh_links(settings, proj)
        return report

    @staticmethod
    def _refresh_links(settings: Settings, project: str) -> int:
        """Re-sign the project's expiring image links (the sync that keeps links short-lived)."""
        try:
            ls = lsx.client(settings)
            proj = lsx.find_project(ls, project)
            if proj is None:
                return 0
            store = BlobStore.from_settings(settings)
            return lsx.refresh_image_links(ls, proj.id, store, settings.labelstudio.link_ttl_hours).refreshed
        except Exception as e:  # the next delivery tries again; delivery itself must not fail for this
            log.warning("could not refresh image links of %r: %s: %s", project, type(e).__name__, e)
            return 0

    def _deliver_project(
        self, settings: Settings, project: str, items: list[RelabelItem], chunk: int, report: DeliveryReport
    ) -> None:
        _check_reachable(settings)
        ls = lsx.client(settings)
        labels: list[str] = []
        for item in items:
            labels.extend(c for c in item.labels if c not in labels)
        proj = lsx.ensure_project(ls, project, labels)
        existing = {sha: t.id for sha, t in lsx.tasks_by_sha(ls, proj.id).items()}
        todo = []
        for item in items:
            if item.sha256 in existing:
                self._record_delivered(project, item.sha256, existing[item.sha256], "existing")
                report.already_in_project += 1
            else:
                todo.append(item)
        store = BlobStore.from_settings(settings)
        for item in todo:  # links are short-lived: mint them now, not when the item was flagged
            item.image_url = store.sas_url(item.blob_uri, hours=settings.labelstudio.link_ttl_hours)
        for i in range(0, len(todo), chunk):
            part = todo[i : i + chunk]
            lsx.import_tasks(ls, proj.id, [it.task() for it in part], chunk=chunk)
            after = {sha: t.id for sha, t in lsx.tasks_by_sha(ls, proj.id).items()}
            for item in part:
                task_id = after.get(item.sha256)
                if task_id is None:  # the import did not create it: leave it for the next try
                    self._record_failure(project, [item.sha256], "import returned but the task is missing")
                    continue
                self._record_delivered(project, item.sha256, task_id, "created")
                report.delivered += 1
                report.task_ids.append(task_id)

    def _record_delivered(self, project: str, sha: str, task_id: int | None, outcome: str) -> None:
        now = time.time()
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "SELECT created_at FROM outbox WHERE project=? AND sha256=?", (project, sha)
            ).fetchone()
            db.execute(
                "INSERT OR REPLACE INTO ledger (project, sha256, task_id, outcome, queued_at, delivered_at) "
                "VALUES (?,?,?,?,?,?)",
                (project, sha, task_id, outcome, row[0] if row else now, now),
            )
            db.execute("DELETE FROM outbox WHERE project=? AND sha256=?", (project, sha))
            db.execute("COMMIT")

    def _record_failure(self, project: str, shas: Sequence[str], error: str) -> None:
        now = time.time()
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "UPDATE outbox SET attempts=attempts+1, last_error=?, last_attempt_at=? "
                "WHERE project=? AND sha256=?",
                [(error, now, project, s) for s in shas],
            )
            db.execute("COMMIT")


class LabelStudioUnreachable(ConnectionError):
    """Label Studio did not answer its health check; relabel items wait in the outbox."""


def _check_reachable(settings: Settings, timeout_s: float = 5.0) -> None:
    """Fail fast when the server is down (the SDK would retry with back-off for seconds first)."""
    import httpx

    url = settings.labelstudio_url()
    try:
        httpx.get(f"{url}/health/", timeout=timeout_s).raise_for_status()
    except httpx.HTTPError as e:
        raise LabelStudioUnreachable(f"Label Studio at {url} is unreachable ({type(e).__name__}: {e})") from e
