"""Label Studio conventions shared by the seeder, the label import and the relabel queue.

One image-classification project per site. A task's ``data`` holds:

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

Annotations use ``from_name="label"``, ``to_name="image"``, type ``choices``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import quoteattr

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

    from edgeloop.core.blob import BlobStore
    from edgeloop.core.config import Settings

FROM_NAME = "label"
TO_NAME = "image"
NOTE = "note"


def label_config(classes: Sequence[str]) -> str:
    choices = "".join(f"<Choice value={quoteattr(c)}/>" for c in classes)
    return (
        "<View>"
        f'<Image name="{TO_NAME}" value="$image" zoom="true"/>'
        f'<Header value="${NOTE}" size="5"/>'  # a visual tag: tasks without a note stay valid
        f'<Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="true">{choices}</Choices>'
        "</View>"
    )


def classes_of(config_xml: str) -> list[str]:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(config_xml)
    for choices in root.iter("Choices"):
        if choices.get("name") == FROM_NAME:
            return [c.get("value", "") for c in choices.iter("Choice")]
    return []


def choice_result(label: str) -> list[dict[str, Any]]:
    return [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [label]}}]


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


def ensure_project(ls: LabelStudio, title: str, classes: Sequence[str]) -> Any:
    """The project called ``title``; created with an image-classification config if missing.

    Classes new to an existing project are appended to its config (labelers may add classes; never drop any).
    """
    project: Any = find_project(ls, title)
    if project is None:
        return ls.projects.create(
            title=title,
            label_config=label_config(classes),
            description="edgeloop: inspection images to classify",
        )
    current = classes_of(project.label_config or "")
    missing = [c for c in classes if c not in current]
    if missing or f"${NOTE}" not in (project.label_config or ""):
        ls.projects.update(project.id, label_config=label_config([*current, *missing]))
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


def annotate(ls: LabelStudio, task_id: int, label: str, project_id: int | None = None) -> Any:
    """Submit a classification like a labeler would."""
    kwargs: dict[str, Any] = {"result": choice_result(label)}
    if project_id is not None:
        kwargs["project"] = project_id
    return ls.annotations.create(task_id, **kwargs)


def relabel_note(reason: str, score: float, predicted: str, model_version: str) -> str:
    """What a labeler reads above the choices of a relabel task."""
    return (
        f"Flagged for relabeling: {reason} (score {score:.3f}). "
        f"The model ({model_version}) predicted '{predicted}': choose the right label."
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
