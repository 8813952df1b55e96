"""Label Studio conventions shared by the seeder, the label import and the relabel queue.

One project per site and task type (:data:`TASK_TYPES`): image classification (``Choices``) or
defect detection (``RectangleLabels``: a box and a class per defect); the project's label
config says which (:func:`task_of`). A task's ``data`` holds:

* ``image`` - a URL the labeler's browser can open: a read-only SAS URL of the blob, valid
  for hours, not months; :func:`refresh_image_links` re-signs links before they expire
  (blob storage answers the labeling page's origin with CORS headers: see ``edgeloop stack up``
  and ``edgeloop data allow-origin``);
* ``blob_uri`` - the canonical ``az://container/path`` of the image;
* ``sha256`` - the image's content digest: the identity used for de-duplication;
* ``note`` (optional) - shown above the choices: why a relabel task is there (flag reason,
  score, the model's prediction);
* optional metadata (``lighting``, ``camera``, ``variant``, ``source``) and, for
  relabel tasks, ``flag_reason`` / ``flag_score``.

* ``width`` / ``height`` (detection) - the image's size in pixels, so that boxes can be turned
  from Label Studio's percentages into pixels even for results without ``original_width``.

Annotations use ``from_name="label"``, ``to_name="image"``, type ``choices`` (classification) or
``rectanglelabels`` (detection: ``x``, ``y``, ``width``, ``height`` in percent of the image).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import quoteattr

from edgeloop.core.boxes import Box
from edgeloop.core.errors import EdgeloopError

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

    from edgeloop.core.blob import BlobStore
    from edgeloop.core.config import Settings

FROM_NAME = "label"
TO_NAME = "image"
NOTE = "note"
CLASSIFICATION = "classification"
DETECTION = "detection"
TASK_TYPES = (CLASSIFICATION, DETECTION)
#: The label config's control tag for each task type, and the tag of each of its classes.
_CONTROL = {CLASSIFICATION: ("Choices", "Choice"), DETECTION: ("RectangleLabels", "Label")}


class LabelingTaskError(EdgeloopError):
    """A project, annotation or box that does not fit the task type (classification or detection)."""


def check_task(task: str) -> str:
    if task not in TASK_TYPES:
        raise LabelingTaskError(f"unknown task type {task!r}; use one of {', '.join(TASK_TYPES)}")
    return task


def label_config(classes: Sequence[str], task: str = CLASSIFICATION) -> str:
    control, item = _CONTROL[check_task(task)]
    items = "".join(f"<{item} value={quoteattr(c)}/>" for c in classes)
    options = ' choice="single" showInline="true"' if task == CLASSIFICATION else ""
    return (
        "<View>"
        f'<Image name="{TO_NAME}" value="$image" zoom="true"/>'
        f'<Header value="${NOTE}" size="5"/>'  # a visual tag: tasks without a note stay valid
        f'<{control} name="{FROM_NAME}" toName="{TO_NAME}"{options}>{items}</{control}>'
        "</View>"
    )


def task_of(config_xml: str) -> str:
    """The task type of a project's label config: detection if its ``label`` control draws boxes."""
    import xml.etree.ElementTree as ET

    for el in ET.fromstring(config_xml).iter("RectangleLabels"):
        if el.get("name") == FROM_NAME:
            return DETECTION
    return CLASSIFICATION


def classes_of(config_xml: str) -> list[str]:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(config_xml)
    for control, item in _CONTROL.values():
        for el in root.iter(control):
            if el.get("name") == FROM_NAME:
                return [c.get("value", "") for c in el.iter(item)]
    return []


def choice_result(label: str) -> list[dict[str, Any]]:
    return [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [label]}}]


def rectangle_result(boxes: Sequence[Box], width: int, height: int) -> list[dict[str, Any]]:
    """Boxes in pixels as Label Studio regions (percent of the image, ``original_width``/``height`` set)."""
    return [
        {
            "id": f"box{i}",
            "from_name": FROM_NAME,
            "to_name": TO_NAME,
            "type": "rectanglelabels",
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": {
                "x": 100.0 * b.x / width,
                "y": 100.0 * b.y / height,
                "width": 100.0 * b.w / width,
                "height": 100.0 * b.h / height,
                "rotation": 0,
                "rectanglelabels": [b.label],
            },
        }
        for i, b in enumerate(boxes)
    ]


def boxes_of(
    result: Sequence[dict[str, Any]], width: int | None = None, height: int | None = None
) -> list[Box]:
    """The boxes of an annotation or prediction ``result``, in pixels, clipped to the image.

    Each region's own ``original_width``/``original_height`` win; ``width``/``height`` (the task's)
    are the fallback. Rotated boxes are refused: the model and COCO know only axis-aligned ones."""

    out = []
    for r in result:
        if r.get("type") != "rectanglelabels" or r.get("from_name", FROM_NAME) != FROM_NAME:
            continue
        v = r.get("value") or {}
        labels = v.get("rectanglelabels") or []
        if not labels:
            continue
        w, h = r.get("original_width") or width, r.get("original_height") or height
        if not w or not h:
            raise LabelingTaskError(
                f"box {r.get('id', '?')} has no image size (original_width/height) and the task has no "
                "width/height: re-seed the task or draw the box again in Label Studio"
            )
        if abs(float(v.get("rotation") or 0)) > 1e-6:
            raise LabelingTaskError(
                f"box {r.get('id', '?')} is rotated by {v['rotation']} degrees: draw it axis-aligned"
            )
        x0 = max(0.0, float(v["x"]) * w / 100)
        y0 = max(0.0, float(v["y"]) * h / 100)
        x1 = min(float(w), (float(v["x"]) + float(v["width"])) * w / 100)
        y1 = min(float(h), (float(v["y"]) + float(v["height"])) * h / 100)
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            continue  # a box outside the image or of no size: nothing a model can learn from
        out.append(Box(str(labels[0]), *(round(c, 2) for c in (x0, y0, x1 - x0, y1 - y0))))
    return out


def client(settings: Settings) -> LabelStudio:
    from label_studio_sdk import LabelStudio

    return LabelStudio(
        base_url=settings.labelstudio_url(), api_key=settings.labelstudio_api_key(), timeout=60
    )


def find_project(ls: LabelStudio, title: str) -> Any | None:
    projects: Any = ls.projects.list()
    for project in projects:
        if project.title == title:
            return project
    return None


def ensure_project(ls: LabelStudio, title: str, classes: Sequence[str], task: str = CLASSIFICATION) -> Any:
    """The project called ``title``; created with a config for ``task`` (classification or detection) if missing.

    Classes new to an existing project are appended to its config (labelers may add classes; never drop any).
    A project of the other task type is an error: its labels cannot be turned into the other kind.
    """
    check_task(task)
    project: Any = find_project(ls, title)
    if project is None:
        what = "to classify" if task == CLASSIFICATION else "with defects to box"
        return ls.projects.create(
            title=title,
            label_config=label_config(classes, task),
            description=f"edgeloop: inspection images {what}",
        )
    found = task_of(project.label_config or "<View/>")
    if found != task:
        raise LabelingTaskError(
            f"Label Studio project '{title}' is a {found} project, not {task}: "
            "pick another project title (--project) for this task type"
        )
    current = classes_of(project.label_config or "")
    missing = [c for c in classes if c not in current]
    if missing or f"${NOTE}" not in (project.label_config or ""):
        ls.projects.update(project.id, label_config=label_config([*current, *missing], task))
        project = ls.projects.get(project.id)
    return project


def iter_tasks(ls: LabelStudio, project_id: int) -> Iterable[Any]:
    """Every task of the project with its annotations (page by page)."""
    yield from ls.tasks.list(project=project_id, fields="all", page_size=500)


def tasks_by_sha(ls: LabelStudio, project_id: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for task in iter_tasks(ls, project_id):
        sha = (task.data or {}).get("sha256")
        if sha:
            out[sha] = task
    return out


def import_tasks(
    ls: LabelStudio, project_id: int, tasks: list[dict[str, Any]], chunk: int = 200
) -> list[int]:
    ids: list[int] = []
    for i in range(0, len(tasks), chunk):
        batch: Any = tasks[i : i + chunk]
        resp = ls.projects.import_tasks(project_id, request=batch, return_task_ids=True)
        ids.extend(getattr(resp, "task_ids", None) or [])
    return ids


def annotate(
    ls: LabelStudio, task_id: int, label: str | list[dict[str, Any]], project_id: int | None = None
) -> Any:
    """Submit a classification (a label) or a ready ``result`` (e.g. :func:`rectangle_result`; ``[]``: an
    image without defects) like a labeler would."""
    kwargs: dict[str, Any] = {"result": choice_result(label) if isinstance(label, str) else label}
    if project_id is not None:
        kwargs["project"] = project_id
    return ls.annotations.create(task_id, **kwargs)


def relabel_note(
    reason: str, score: float, predicted: str, model_version: str, task: str = CLASSIFICATION
) -> str:
    """What a labeler reads above the choices (or the box labels) of a relabel task."""
    todo = (
        "correct the boxes: move or delete the model's, draw one per defect it missed; submit none if the tag is clean"
        if task == DETECTION
        else "choose the right label"
    )
    return (
        f"Flagged for relabeling: {reason} (score {score:.3f}). "
        f"The model ({model_version}) predicted '{predicted}': {todo}."
    )


@dataclass
class LinkRefresh:
    """What :func:`refresh_image_links` did to a project's tasks."""

    tasks: int = 0
    refreshed: int = 0
    still_valid: int = 0
    no_blob_uri: int = 0  # tasks whose image is not one of ours: left as they are, counted

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def link_expiry(url: str) -> datetime | None:
    """The expiry (``se``) of a SAS URL, or None when it has none."""
    values = parse_qs(urlsplit(url).query).get("se")
    if not values:
        return None
    try:
        return datetime.fromisoformat(values[0].replace("Z", "+00:00"))
    except ValueError:
        return None


def refresh_image_links(
    ls: LabelStudio, project_id: int, store: BlobStore, ttl_hours: float, now: datetime | None = None
) -> LinkRefresh:
    """Re-sign every task image link that expires within half of ``ttl_hours`` (or has no expiry).

    Links are minted from the task's ``blob_uri``; nothing else in the task changes.
    """
    now = now or datetime.now(UTC)
    margin = timedelta(hours=ttl_hours / 2)
    report = LinkRefresh()
    for task in iter_tasks(ls, project_id):
        data = dict(task.data or {})
        report.tasks += 1
        uri = data.get("blob_uri")
        if not uri:
            report.no_blob_uri += 1
            continue
        expiry = link_expiry(str(data.get("image", "")))
        if expiry is not None and expiry - now > margin:
            report.still_valid += 1
            continue
        data["image"] = store.sas_url(uri, hours=ttl_hours)
        ls.tasks.update(str(task.id), data=data)
        report.refreshed += 1
    return report
