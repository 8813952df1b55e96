"""Label Studio conventions shared by the seeder, the label import and the relabel queue.

One image-classification project per site. A task's ``data`` holds:

* ``image`` - a URL the labeler's browser can open (a read-only SAS URL of the blob);
* ``blob_uri`` - the canonical ``az://container/path`` of the image;
* ``sha256`` - the image's content digest: the identity used for de-duplication;
* optional metadata (``lighting``, ``camera``, ``variant``, ``source``) and, for
  relabel tasks, ``flag_reason`` / ``flag_score``.

Annotations use ``from_name="label"``, ``to_name="image"``, type ``choices``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

    from edgeloop.core.config import Settings

FROM_NAME = "label"
TO_NAME = "image"


def label_config(classes: Sequence[str]) -> str:
    choices = "".join(f"<Choice value={quoteattr(c)}/>" for c in classes)
    return (
        "<View>"
        f'<Image name="{TO_NAME}" value="$image" zoom="true"/>'
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
    if missing:
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
