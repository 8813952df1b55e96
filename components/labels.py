"""Import annotations from Label Studio into a label manifest (JSONL, one row per labeled image).

A full project export (annotations *and* full predictions) is requested through
label-studio-sdk 2.x, polled until ready and downloaded. Each task may carry
several annotations; :func:`resolve_task` reduces them to one label with a policy:

* ``latest``   - the most recently updated valid annotation wins;
* ``majority`` - the most frequent label wins; a tie is *flagged* (listed in the
  report, left out of the manifest: an ambiguous image is better relabeled than
  guessed).

Cancelled ("skipped") annotations and annotations without a choice are ignored
and counted.

A detection project (``RectangleLabels``, see :mod:`edgeloop.core.labelstudio`) gives rows
with ``boxes`` (pixels, COCO order) and the image size instead of a label; a submitted
annotation without boxes is a valid "no defects". Boxes are not voted on: detection takes
the ``latest`` policy only. A task whose boxes cannot be turned into pixels is left out and
listed with the reason (``invalid_tasks``). The manifest is sorted by content sha256, so the same labels give
byte-identical manifests.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.components.errors import LabelImportError
from edgeloop.core import labelstudio as lsx
from edgeloop.core.boxes import Box, box_counts
from edgeloop.core.model_card import sha256_file

if TYPE_CHECKING:
    from edgeloop.core.config import Settings

METADATA_KEYS = ("lighting", "camera", "variant", "source", "source_file")


class LabelPolicy(str, Enum):
    LATEST = "latest"
    MAJORITY = "majority"


@dataclass
class ManifestRow:
    """One labeled image: what :func:`edgeloop.components.dataset.build_dataset` needs to fetch and verify it."""

    image: str  # az://container/path
    sha256: str | None
    label: str  # classification; "" for detection
    annotator: str
    annotated_at: str
    task_id: int
    annotation_id: int | None
    n_annotations: int
    agreement: float  # share of valid annotations that agree with the chosen label
    metadata: dict[str, Any] = field(default_factory=dict)
    prediction: dict[str, Any] | None = None
    boxes: list[dict[str, Any]] | None = None  # detection: Box.as_dict() per defect (pixels)
    width: int | None = None  # detection: the image size the boxes refer to
    height: int | None = None

    def to_json(self) -> str:
        d = asdict(self)
        if self.boxes is None:  # classification rows stay byte for byte what they were
            for k in ("boxes", "width", "height"):
                d.pop(k)
        return json.dumps(d, sort_keys=True)

    def box_list(self) -> list[Box]:
        return [Box.from_dict(b) for b in self.boxes or []]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ManifestRow:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})  # type: ignore[arg-type]


@dataclass
class TaskResolution:
    row: ManifestRow | None
    valid: int = 0
    cancelled: int = 0
    empty: int = 0
    tie: list[str] | None = None  # labels tied for the majority


@dataclass
class ImportReport:
    project_id: int = 0
    project_title: str = ""
    policy: str = LabelPolicy.LATEST.value
    export_id: int | None = None
    tasks: int = 0
    labeled_images: int = 0
    unlabeled_tasks: int = 0
    annotations: int = 0
    cancelled_annotations: int = 0
    empty_annotations: int = 0
    multi_annotated_tasks: int = 0
    disagreeing_tasks: int = 0
    tied_tasks: list[int] = field(default_factory=list)
    missing_image: list[int] = field(default_factory=list)
    invalid_tasks: list[dict[str, Any]] = field(default_factory=list)  # {"task_id", "reason"}
    task: str = lsx.CLASSIFICATION
    box_counts: dict[str, int] = field(default_factory=dict)  # detection: boxes per class
    images_without_defects: int = 0  # detection
    duplicate_images: int = 0
    label_counts: dict[str, int] = field(default_factory=dict)
    manifest_path: str = ""
    manifest_sha256: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.task == lsx.DETECTION:
            return (
                f"project '{self.project_title}' (id {self.project_id}, detection): {self.tasks} tasks -> "
                f"{self.labeled_images} labeled images ({self.images_without_defects} without defects), "
                f"boxes {self.box_counts}; {self.unlabeled_tasks} unlabeled, {self.cancelled_annotations} "
                f"cancelled annotations skipped, {len(self.invalid_tasks)} tasks with unusable boxes left out"
            )
        return (
            f"project '{self.project_title}' (id {self.project_id}), policy {self.policy}: "
            f"{self.tasks} tasks -> {self.labeled_images} labeled images {self.label_counts}; "
            f"{self.unlabeled_tasks} unlabeled, {self.cancelled_annotations} cancelled and "
            f"{self.empty_annotations} empty annotations skipped, {len(self.tied_tasks)} ties flagged, "
            f"{self.disagreeing_tasks} tasks with disagreeing annotators"
        )


def _choice(annotation: Mapping[str, Any]) -> str | None:
    for result in annotation.get("result") or []:
        if result.get("type") == "choices" and result.get("from_name", lsx.FROM_NAME) == lsx.FROM_NAME:
            choices = (result.get("value") or {}).get("choices") or []
            if choices:
                return str(choices[0])
    return None


def _annotator(annotation: Mapping[str, Any], users: Mapping[int, str]) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):
        return str(who.get("email") or who.get("id") or "")
    if who is None:
        return ""
    return users.get(int(who), str(who))


def _when(annotation: Mapping[str, Any]) -> str:
    return str(annotation.get("updated_at") or annotation.get("created_at") or "")


def _image_size(data: Mapping[str, Any]) -> tuple[int | None, int | None]:
    w, h = data.get("width"), data.get("height")
    return (int(w) if w else None, int(h) if h else None)


def _prediction(task: Mapping[str, Any], detection: bool = False) -> dict[str, Any] | None:
    preds = [p for p in task.get("predictions") or [] if isinstance(p, Mapping)]
    if not preds:
        return None
    latest = max(preds, key=lambda p: (str(p.get("created_at") or ""), p.get("id") or 0))
    out = {
        "label": _choice(latest),
        "score": latest.get("score"),
        "model_version": latest.get("model_version"),
    }
    if detection:
        size = _image_size(task.get("data") or {})
        try:
            out["boxes"] = [b.as_dict() for b in lsx.boxes_of(latest.get("result") or [], *size)]
        except lsx.LabelingTaskError:
            out["boxes"] = None  # the prediction is context for labelers, not a label: keep the row
    return out


def _check_policy(policy: LabelPolicy, detection: bool) -> None:
    if detection and policy is not LabelPolicy.LATEST:
        raise LabelImportError(
            f"label policy '{policy.value}' votes on one class per image; a detection project's boxes are "
            "not voted on: use --label-policy latest (label_policy=latest)"
        )


def resolve_task(
    task: Mapping[str, Any],
    policy: LabelPolicy | str = LabelPolicy.LATEST,
    users: Mapping[int, str] | None = None,
    detection: bool = False,
) -> TaskResolution:
    """Reduce one exported task's annotations to a manifest row (or ``None`` with the reason counted).

    ``detection``: the newest submitted annotation's boxes (raises ``LabelingTaskError`` for boxes
    that cannot be turned into pixels)."""
    policy = LabelPolicy(policy)
    _check_policy(policy, detection)
    users = users or {}
    if detection:
        return _resolve_boxes(task, users)
    valid: list[tuple[str, Mapping[str, Any]]] = []
    cancelled = empty = 0
    for ann in task.get("annotations") or []:
        if ann.get("was_cancelled"):
            cancelled += 1
            continue
        label = _choice(ann)
        if label is None:
            empty += 1
            continue
        valid.append((label, ann))
    res = TaskResolution(row=None, valid=len(valid), cancelled=cancelled, empty=empty)
    if not valid:
        return res
    # newest first: updated_at, then annotation id as the tie-break
    valid.sort(key=lambda la: (_when(la[1]), la[1].get("id") or 0), reverse=True)
    counts = Counter(label for label, _ in valid)
    if policy is LabelPolicy.LATEST:
        label, chosen = valid[0]
    else:
        top = counts.most_common()
        best = top[0][1]
        tied = sorted(lbl for lbl, n in top if n == best)
        if len(tied) > 1:
            res.tie = tied
            return res
        label = top[0][0]
        chosen = next(a for lbl, a in valid if lbl == label)  # newest annotation with the winning label
    data = task.get("data") or {}
    res.row = ManifestRow(
        image=str(data.get("blob_uri") or data.get("image") or ""),
        sha256=data.get("sha256"),
        label=label,
        annotator=_annotator(chosen, users),
        annotated_at=_when(chosen),
        task_id=int(task.get("id") or 0),
        annotation_id=chosen.get("id"),
        n_annotations=len(valid),
        agreement=round(counts[label] / len(valid), 4),
        metadata={k: data[k] for k in METADATA_KEYS if k in data},
        prediction=_prediction(task),
    )
    return res


def _resolve_boxes(task: Mapping[str, Any], users: Mapping[int, str]) -> TaskResolution:
    submitted = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    res = TaskResolution(
        row=None, valid=len(submitted), cancelled=len(task.get("annotations") or []) - len(submitted)
    )
    if not submitted:
        return res
    chosen = max(submitted, key=lambda a: (_when(a), a.get("id") or 0))
    data = task.get("data") or {}
    width, height = _image_size(data)
    boxes = lsx.boxes_of(chosen.get("result") or [], width, height)
    for r in chosen.get("result") or []:  # the region's own size is the one the boxes were drawn on
        width, height = r.get("original_width") or width, r.get("original_height") or height
    res.row = ManifestRow(
        image=str(data.get("blob_uri") or data.get("image") or ""),
        sha256=data.get("sha256"),
        label="",
        annotator=_annotator(chosen, users),
        annotated_at=_when(chosen),
        task_id=int(task.get("id") or 0),
        annotation_id=chosen.get("id"),
        n_annotations=len(submitted),
        agreement=1.0,
        metadata={k: data[k] for k in METADATA_KEYS if k in data},
        prediction=_prediction(task, detection=True),
        boxes=[b.as_dict() for b in boxes],
        width=width,
        height=height,
    )
    return res


def resolve_export(
    tasks: Iterable[Mapping[str, Any]],
    policy: LabelPolicy | str = LabelPolicy.LATEST,
    users: Mapping[int, str] | None = None,
    report: ImportReport | None = None,
    detection: bool = False,
) -> tuple[list[ManifestRow], ImportReport]:
    """All tasks of an export -> manifest rows sorted by sha256 (then URI), plus the counts."""
    report = report or ImportReport()
    report.policy = LabelPolicy(policy).value
    report.task = lsx.DETECTION if detection else lsx.CLASSIFICATION
    _check_policy(LabelPolicy(policy), detection)
    rows: dict[str, ManifestRow] = {}
    for task in tasks:
        report.tasks += 1
        try:
            res = resolve_task(task, policy, users, detection)
        except lsx.LabelingTaskError as e:
            report.invalid_tasks.append({"task_id": int(task.get("id") or 0), "reason": str(e)})
            continue
        report.annotations += res.valid + res.cancelled + res.empty
        report.cancelled_annotations += res.cancelled
        report.empty_annotations += res.empty
        report.multi_annotated_tasks += int(res.valid > 1)
        if res.tie:
            report.tied_tasks.append(int(task.get("id") or 0))
            report.disagreeing_tasks += 1
            continue
        if res.row is None:
            report.unlabeled_tasks += 1
            continue
        report.disagreeing_tasks += int(res.row.agreement < 1.0)
        if not res.row.image:
            report.missing_image.append(res.row.task_id)
            continue
        key = res.row.sha256 or res.row.image
        if key in rows:  # the same image in two tasks: keep the most recent label
            report.duplicate_images += 1
            if rows[key].annotated_at >= res.row.annotated_at:
                continue
        rows[key] = res.row
    out = sorted(rows.values(), key=lambda r: (r.sha256 or "", r.image))
    _count(out, report)
    return out, report


def _count(rows: list[ManifestRow], report: ImportReport) -> None:
    report.labeled_images = len(rows)
    if report.task == lsx.DETECTION:
        report.box_counts = box_counts([b for r in rows for b in r.box_list()])
        report.images_without_defects = sum(1 for r in rows if not r.boxes)
        report.label_counts = {}
    else:
        report.label_counts = dict(sorted(Counter(r.label for r in rows).items()))


def write_manifest(rows: Iterable[ManifestRow], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for row in rows:
            fh.write(row.to_json() + "\n")
    return path


def read_manifest(path: Path) -> list[ManifestRow]:
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(ManifestRow.from_dict(json.loads(line)))
        except (ValueError, TypeError) as e:
            raise LabelImportError(
                f"{path}:{n} is not a manifest row ({e}); re-run `edgeloop labels import`"
            ) from e
    return rows


def export_project(ls: Any, project_id: int, timeout_s: float = 300.0) -> tuple[int, list[dict[str, Any]]]:
    """A full JSON export of the project, with full predictions: (export id, tasks)."""
    snap = ls.projects.exports.create(project_id, serialization_options={"predictions": {"only_id": False}})
    deadline = time.monotonic() + timeout_s
    while snap.status != "completed":
        if snap.status == "failed":
            raise LabelImportError(
                f"Label Studio export {snap.id} of project {project_id} failed; "
                "check the Label Studio log and retry"
            )
        if time.monotonic() > deadline:
            raise LabelImportError(
                f"Label Studio export {snap.id} not ready after {timeout_s:.0f} s; "
                "retry, or raise the timeout for large projects"
            )
        time.sleep(0.5)
        snap = ls.projects.exports.get(project_id, snap.id)
    data = b"".join(ls.projects.exports.download(project_id, snap.id, export_type="JSON"))
    tasks = json.loads(data)
    if not isinstance(tasks, list):
        raise LabelImportError(f"unexpected export payload from Label Studio (a {type(tasks).__name__})")
    return int(snap.id), tasks


def _users(ls: Any) -> dict[int, str]:
    try:
        return {int(u.id): str(u.email or u.username or u.id) for u in ls.users.list()}
    except Exception:  # listing users may be forbidden for the token: fall back to ids
        return {}


def import_labels(
    settings: Settings, project: str | None, out_path: Path, policy: LabelPolicy | str = LabelPolicy.LATEST
) -> ImportReport:
    """Export the project's annotations from Label Studio and write the label manifest to ``out_path``."""
    t0 = time.perf_counter()
    title = project or settings.labelstudio.project_title
    ls = lsx.client(settings)
    proj = lsx.find_project(ls, title)
    if proj is None:
        raise LabelImportError(
            f"no Label Studio project titled '{title}'; seed one with `edgeloop data seed` "
            "or pass --project"
        )
    detection = lsx.task_of(proj.label_config or "<View/>") == lsx.DETECTION
    _check_policy(LabelPolicy(policy), detection)
    export_id, tasks = export_project(ls, int(proj.id))
    report = ImportReport(project_id=int(proj.id), project_title=title, export_id=export_id)
    rows, report = resolve_export(tasks, policy, _users(ls), report, detection=detection)
    # a task made by hand may hold only a SAS URL: turn it back into an az:// URI of this account
    needs_uri = [r for r in rows if not r.image.startswith("az://")]
    if needs_uri:
        from edgeloop.core.blob import BlobStore

        store = BlobStore.from_settings(settings)
        for r in needs_uri:
            try:
                r.image = str(store.uri_from_url(r.image))
            except ValueError:
                report.missing_image.append(r.task_id)
        rows = [r for r in rows if r.image.startswith("az://")]
        _count(rows, report)
    write_manifest(rows, out_path)
    report.manifest_path = str(out_path)
    report.manifest_sha256 = sha256_file(Path(out_path))
    report.seconds = round(time.perf_counter() - t0, 3)
    return report
