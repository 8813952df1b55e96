"""The relabel queue: flagged images become Label Studio tasks with the model's prediction.

Guarantees:

* **never twice** - an image (sha256) is queued once per project: a ledger records what was
  delivered, and before importing, delivery checks the project's existing tasks by
  ``data.sha256`` (so a crash between import and ledger write, a second machine, or an image
  that was seeded for training, does not make a duplicate). Deliveries are serialised by a
  lease: an fcntl lock on the outbox file (processes on one node) and a blob lease in the
  payloads container (:class:`BlobDeliveryLease`, processes on any node: an fcntl lock does
  not hold across nodes or on most network file systems; a blob lease does, and it expires
  on its own when a Job dies holding it). A scan that finds the lease taken leaves its items
  in the outbox for the next delivery.
* **nothing lost** - new items go to a persistent outbox (sqlite, under the state dir; on a
  cluster the state dir is a PersistentVolumeClaim, so a Job's end does not erase it) first;
  delivery imports what it can and leaves the rest for the next scan/run when Label Studio
  is unreachable (an outage does not count against an item).
* **one bad item blocks nothing** - an item that fails on its own (its link cannot be signed,
  the import rejects it, the task does not appear) is retried on later deliveries up to
  ``max_failures`` times, then moved to the dead letter table with its reason; the other
  items are delivered meanwhile. ``edgeloop monitor outbox --dead-letter`` lists them and
  :meth:`RelabelQueue.retry_dead_letters` puts them back.

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
from edgeloop.core.boxes import Box

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
CREATE TABLE IF NOT EXISTS dead_letter (
    project TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    item TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    reason TEXT NOT NULL,
    dead_at REAL NOT NULL,
    PRIMARY KEY (project, sha256)
);
"""
MAX_FAILURES = 5  # failures of an item itself (not outages) before it is dead-lettered
LEASE_BLOB = "monitoring/leases/relabel-delivery"


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
    # a detector's: its detections (label, score, x, y, width, height in the image's pixels) and
    # the image's size; the task is then a RectangleLabels task pre-annotated with those boxes
    detections: list[dict[str, Any]] | None = None
    width: int | None = None
    height: int | None = None

    @property
    def task_type(self) -> str:
        return lsx.CLASSIFICATION if self.detections is None else lsx.DETECTION

    def _prediction(self) -> dict[str, Any]:
        if self.detections is None:
            return {
                "result": lsx.choice_result(self.predicted_label),
                "score": float(self.score),
                "model_version": self.model_version,
            }
        if not (self.width and self.height):
            raise ItemError(f"image {self.sha256[:12]}: a box task needs the image's width and height")
        boxes = [
            Box(str(d["label"]), float(d["x"]), float(d["y"]), float(d["width"]), float(d["height"]))
            for d in self.detections
        ]
        result = lsx.rectangle_result(boxes, self.width, self.height)
        for region, d in zip(result, self.detections, strict=True):
            region["score"] = float(d["score"])
        return {"result": result, "score": float(self.score), "model_version": self.model_version}

    def task(self) -> dict[str, Any]:
        """The Label Studio import payload: data + prediction (the model's class, or its boxes as
        pre-annotated regions a labeler corrects), created in one request."""
        data = {
            "image": self.image_url,
            "blob_uri": self.blob_uri,
            "sha256": self.sha256,
            lsx.NOTE: lsx.relabel_note(
                self.flag_reason, self.flag_score, self.predicted_label, self.model_version, self.task_type
            ),
            "flag_reason": self.flag_reason,
            "flag_score": round(self.flag_score, 6),
            "model_version": self.model_version,
            "predicted_label": self.predicted_label,
            "source": self.metadata.get("source") or "relabel",
            **{k: v for k, v in self.metadata.items() if k != "source"},
        }
        if self.detections is not None:
            data |= {"width": self.width, "height": self.height}
        return {"data": data, "predictions": [self._prediction()]}


@dataclass
class EnqueueReport:
    offered: int = 0
    enqueued: int = 0
    already_delivered: int = 0
    already_pending: int = 0
    already_dead: int = 0  # dead-lettered earlier: not queued again (retry_dead_letters does that)
    enqueued_sha256: list[str] = field(default_factory=list)


@dataclass
class DeliveryReport:
    attempted: int = 0
    delivered: int = 0  # new tasks created
    already_in_project: int = 0  # a task with that sha256 existed: recorded, not re-imported
    pending: int = 0  # still in the outbox after this delivery
    error: str | None = None
    task_ids: list[int] = field(default_factory=list)
    links_refreshed: int = 0  # task image links re-signed because they were about to expire
    failed: int = 0  # items that failed on their own this time (retried next time, up to the cap)
    failed_sha256: list[str] = field(default_factory=list)
    dead_lettered: int = 0  # items moved to the dead letter table this time
    lease_busy: bool = False  # another process held the delivery lease: nothing delivered

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ItemError(Exception):
    """One relabel item failed on its own (not an outage): it counts towards the item's cap."""


class LeaseBusy(Exception):
    """Another process holds the delivery lease."""


class BlobDeliveryLease:
    """A cross-node mutex for deliveries: a lease on one blob (Azure Blob Storage or Azurite).

    Held for ``duration_s`` and renewed while delivering; a holder that dies lets it lapse,
    so a crashed Job never blocks deliveries for longer than ``duration_s``.
    """

    def __init__(self, store: BlobStore, container: str, name: str = LEASE_BLOB, duration_s: int = 60):
        if not 15 <= duration_s <= 60:
            raise ValueError("a blob lease lasts 15 to 60 seconds")
        self.store, self.container, self.name, self.duration_s = store, container, name, duration_s
        self._lease: Any = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[BlobDeliveryLease]:
        """Acquire, yield, release; raises :class:`LeaseBusy` when someone else holds it."""
        from azure.core.exceptions import HttpResponseError, ResourceExistsError

        blob = self.store.client.get_blob_client(self.container, self.name)
        try:
            blob.upload_blob(b"", overwrite=False)
        except ResourceExistsError:
            pass
        except HttpResponseError as e:
            if e.status_code == 404:  # no container yet
                self.store.ensure_container(self.container)
                blob.upload_blob(b"", overwrite=False)
            elif e.status_code != 412:  # 412: leased by someone else while we create it
                raise
        try:
            self._lease = blob.acquire_lease(lease_duration=self.duration_s)
        except HttpResponseError as e:
            if e.status_code == 409:  # LeaseAlreadyPresent
                raise LeaseBusy(
                    f"another process is delivering (lease on az://{self.container}/{self.name})"
                ) from e
            raise
        try:
            yield self
        finally:
            lease, self._lease = self._lease, None
            try:
                lease.release()
            except Exception as e:  # it lapses on its own within duration_s
                log.warning("could not release the delivery lease: %s", e)

    def renew(self) -> None:
        if self._lease is not None:
            self._lease.renew()


class RelabelQueue:
    """Outbox, ledger and dead letters in one sqlite file; delivery into one Label Studio project per title."""

    def __init__(
        self,
        path: Path | str,
        max_failures: int = MAX_FAILURES,
        use_blob_lease: bool = True,
        lease_s: int = 60,
    ):
        """``lease_s``: how long the delivery lease lasts unless renewed (15-60 s): how long a delivery
        killed while holding it keeps the others waiting."""
        self.path = Path(path)
        self.max_failures = max_failures
        self.use_blob_lease = use_blob_lease
        self.lease_s = lease_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(_SCHEMA)
            cols = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
            if "failures" not in cols:  # outboxes written before dead-lettering existed
                db.execute("ALTER TABLE outbox ADD COLUMN failures INTEGER NOT NULL DEFAULT 0")

    @classmethod
    def for_settings(cls, settings: Settings, **kw: Any) -> RelabelQueue:
        return cls(settings.state_dir / "monitoring" / OUTBOX_FILE, **kw)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an enqueue report or a ledger row means: on disk
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
                "WHERE project=? UNION SELECT sha256 FROM dead_letter WHERE project=?",
                (project, project, project),
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
                if db.execute(
                    "SELECT 1 FROM dead_letter WHERE project=? AND sha256=?", (project, item.sha256)
                ).fetchone():
                    report.already_dead += 1
                    continue
                cur = db.execute(
                    "INSERT OR IGNORE INTO outbox (project, sha256, item, created_at) VALUES (?,?,?,?)",
                    (project, item.sha256, json.dumps(asdict(item)), now),
                )
                if cur.rowcount:
                    report.enqueued += 1
                    report.enqueued_sha256.append(item.sha256)
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

    def dead_letters(self, project: str | None = None) -> list[dict[str, Any]]:
        """Items given up on: project, sha256, reason, attempts, failures, dead_at, item."""
        q = "SELECT project, sha256, reason, attempts, failures, dead_at, item FROM dead_letter"
        args: tuple[Any, ...] = ()
        if project is not None:
            q += " WHERE project=?"
            args = (project,)
        with self._db() as db:
            rows = db.execute(q + " ORDER BY dead_at, sha256", args).fetchall()
        keys = ("project", "sha256", "reason", "attempts", "failures", "dead_at", "item")
        return [dict(zip(keys, r, strict=True)) | {"item": RelabelItem(**json.loads(r[-1]))} for r in rows]

    def retry_dead_letters(self, project: str | None = None) -> int:
        """Put dead-lettered items back in the outbox (failures reset); returns how many."""
        where, args = ("WHERE project=?", (project,)) if project is not None else ("", ())
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute(
                "INSERT OR IGNORE INTO outbox (project, sha256, item, created_at, attempts, last_error) "
                f"SELECT project, sha256, item, created_at, attempts, reason FROM dead_letter {where}",
                args,
            )
            db.execute(f"DELETE FROM dead_letter {where}", args)
            db.execute("COMMIT")
        return cur.rowcount

    def delivered(self, project: str) -> dict[str, int | None]:
        """sha256 -> Label Studio task id of what the ledger records as delivered."""
        with self._db() as db:
            rows = db.execute("SELECT sha256, task_id FROM ledger WHERE project=?", (project,)).fetchall()
        return dict(rows)

    # -- delivery -----------------------------------------------------------
    def deliver(self, settings: Settings, project: str | None = None, chunk: int = 100) -> DeliveryReport:
        """Import pending items into Label Studio. Never raises for an unreachable server: the items
        stay in the outbox with the error recorded, and the next call tries again. An item that fails
        on its own is retried up to ``max_failures`` deliveries, then dead-lettered; it never holds
        back the others. Only one process delivers at a time (see the module docstring)."""
        report = DeliveryReport()
        by_project: dict[str, list[RelabelItem]] = {}
        with self._delivery_lock():
            for proj, item, _, _ in self.pending(project):
                by_project.setdefault(proj, []).append(item)
            if by_project:
                try:
                    _check_reachable(settings)  # fail fast, before taking the cross-node lease
                    with self._lease(settings) as lease:
                        for proj, items in by_project.items():
                            report.attempted += len(items)
                            try:
                                self._deliver_project(settings, proj, items, chunk, report, lease)
                            except Exception as e:  # an outage mid-way: keep the rest, retry next time
                                self._outage(report, proj, [i.sha256 for i in items], e)
                except LeaseBusy as e:
                    report.lease_busy = True
                    report.error = str(e)
                    log.info("%s; %d items stay in the outbox", e, sum(map(len, by_project.values())))
                except Exception as e:  # Label Studio or blob storage unreachable: an outage for all
                    for proj, items in by_project.items():
                        self._outage(report, proj, [i.sha256 for i in items], e)
            report.pending = self.outbox_size(project)
        for proj in dict.fromkeys([*by_project, project or settings.labelstudio.project_title]):
            report.links_refreshed += self._refresh_links(settings, proj)
        return report

    def _outage(self, report: DeliveryReport, project: str, shas: Sequence[str], e: Exception) -> None:
        msg = f"{type(e).__name__}: {e}"[:500]
        report.error = msg
        pending = {i.sha256 for _, i, _, _ in self.pending(project)}
        shas = [s for s in shas if s in pending]
        log.warning(
            "relabel delivery to %r failed (%s); %d items stay in the outbox", project, msg, len(shas)
        )
        self._record_failure(project, shas, msg)

    @contextlib.contextmanager
    def _lease(self, settings: Settings) -> Iterator[BlobDeliveryLease | None]:
        if not self.use_blob_lease:
            yield None
            return
        lease = BlobDeliveryLease(
            BlobStore.from_settings(settings), settings.blob.payloads_container, duration_s=self.lease_s
        )
        with lease.hold():
            yield lease

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
        self,
        settings: Settings,
        project: str,
        items: list[RelabelItem],
        chunk: int,
        report: DeliveryReport,
        lease: BlobDeliveryLease | None = None,
    ) -> None:
        ls = lsx.client(settings)
        labels: list[str] = []
        for item in items:
            labels.extend(c for c in item.labels if c not in labels)
        kinds = {item.task_type for item in items}
        if len(kinds) > 1:
            raise lsx.LabelingTaskError(
                f"project '{project}' was offered class and box tasks at once: one task type per project "
                "(queue a detector's flagged images for a project of their own)"
            )
        proj = lsx.ensure_project(ls, project, labels, task=kinds.pop() if kinds else lsx.CLASSIFICATION)
        existing = {sha: t.id for sha, t in lsx.tasks_by_sha(ls, proj.id).items()}
        store = BlobStore.from_settings(settings)
        todo: list[tuple[RelabelItem, dict[str, Any]]] = []
        failed = report.failed_sha256  # items that failed on their own during this delivery
        for item in items:
            if item.sha256 in existing:
                self._record_delivered(project, item.sha256, existing[item.sha256], "existing")
                report.already_in_project += 1
                continue
            try:  # links are short-lived: mint them now, not when the item was flagged
                item.image_url = store.sas_url(item.blob_uri, hours=settings.labelstudio.link_ttl_hours)
                todo.append((item, item.task()))
            except Exception as e:
                self._item_failed(report, project, item.sha256, e)
        for i in range(0, len(todo), chunk):
            if lease is not None:
                lease.renew()
            part = todo[i : i + chunk]
            try:
                lsx.import_tasks(ls, proj.id, [task for _, task in part], chunk=chunk)
            except Exception:
                _check_reachable(settings)  # an outage: raises, and every item stays as it is
                for item, task in part:  # the server is up: find the item(s) it rejects, import the rest
                    try:
                        lsx.import_tasks(ls, proj.id, [task], chunk=1)
                    except Exception as e:
                        _check_reachable(settings)
                        self._item_failed(report, project, item.sha256, e)
            after = {sha: t.id for sha, t in lsx.tasks_by_sha(ls, proj.id).items()}
            for item, _ in part:
                task_id = after.get(item.sha256)
                if task_id is not None:
                    self._record_delivered(project, item.sha256, task_id, "created")
                    report.delivered += 1
                    report.task_ids.append(task_id)
                elif item.sha256 not in failed:  # accepted, yet no task: count it against the item
                    self._item_failed(
                        report, project, item.sha256, ItemError("import returned but the task is missing")
                    )

    def _item_failed(self, report: DeliveryReport, project: str, sha: str, error: Exception) -> None:
        """One failure of the item itself; at ``max_failures`` it moves to the dead letter table."""
        msg = f"{type(error).__name__}: {error}"[:500]
        report.failed += 1
        report.failed_sha256.append(sha)
        now = time.time()
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "UPDATE outbox SET attempts=attempts+1, failures=failures+1, last_error=?, last_attempt_at=? "
                "WHERE project=? AND sha256=?",
                (msg, now, project, sha),
            )
            row = db.execute(
                "SELECT item, created_at, attempts, failures FROM outbox WHERE project=? AND sha256=?",
                (project, sha),
            ).fetchone()
            dead = row is not None and row[3] >= self.max_failures
            if dead:
                db.execute(
                    "INSERT OR REPLACE INTO dead_letter "
                    "(project, sha256, item, created_at, attempts, failures, reason, dead_at) "
                    "VALUES (?,?,?,?,?,?,?,?)",
                    (project, sha, row[0], row[1], row[2], row[3], msg, now),
                )
                db.execute("DELETE FROM outbox WHERE project=? AND sha256=?", (project, sha))
            db.execute("COMMIT")
        if dead:
            report.dead_lettered += 1
            log.warning("relabel item %s dead-lettered after %d failures: %s", sha[:12], row[3], msg)
        else:
            log.warning("relabel item %s failed (%s); retried on the next delivery", sha[:12], msg)

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
