"""`edgeloop data seed`: put a folder of images into blob storage and Label Studio, idempotently.

Class sub-folders (``DIR/<class>/*.png``) become tasks with an annotation, as a
labeler would submit it; loose images (``DIR/*.jpg``) become unlabeled tasks.
A folder with a COCO ``annotations.json`` is a detection folder: its images go to a
``RectangleLabels`` project, each listed image with its boxes as an annotation (none: an
image without defects), images the file does not list as unlabeled tasks.
Images are content-addressed (``az://images/<source>/<sha256>.<ext>``) and tasks
are keyed by sha256, so re-running creates no duplicates.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.core import labelstudio as lsx
from edgeloop.core.boxes import Box
from edgeloop.core.model_card import sha256_bytes

if TYPE_CHECKING:
    from edgeloop.core.config import Settings

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class SeedReport:
    project_id: int = 0
    project_title: str = ""
    task: str = lsx.CLASSIFICATION
    images_found: int = 0
    uploaded: int = 0
    already_in_storage: int = 0
    tasks_created: int = 0
    tasks_existing: int = 0
    annotations_created: int = 0
    unlabeled_tasks: int = 0
    skipped_files: list[str] = field(default_factory=list)
    duplicate_images: int = 0
    links_refreshed: int = 0  # image links of existing tasks re-signed before they expire

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Image:
    path: Path
    rel: str
    label: str | None
    sha256: str
    data: bytes
    meta: dict[str, Any]
    boxes: list[Box] | None = None  # detection: the labeled boxes (None: not labeled)
    size: tuple[int, int] | None = None  # detection: width, height

    @property
    def labeled(self) -> bool:
        return self.label is not None or self.boxes is not None


def scan_directory(directory: Path) -> tuple[list[_Image], list[str], int]:
    """Images under ``directory`` (class = first sub-folder, or boxes from a COCO ``annotations.json``),
    skipped non-image files, duplicate count."""
    from edgeloop.local.sample_data import COCO_FILE, read_coco_boxes

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory of images")
    coco = read_coco_boxes(directory)
    meta_by_file: dict[str, dict[str, Any]] = {}
    meta_path = directory / "metadata.jsonl"
    if meta_path.exists():
        for line in meta_path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                meta_by_file[row.pop("file")] = row
    images: list[_Image] = []
    skipped: list[str] = []
    seen: set[str] = set()
    duplicates = 0
    for path in sorted(directory.rglob("*")):
        if not path.is_file() or path.name in ("metadata.jsonl", COCO_FILE) or path.name.startswith("."):
            continue
        rel = path.relative_to(directory).as_posix()
        if path.suffix.lower() not in IMAGE_EXTS:
            skipped.append(rel)
            continue
        parts = rel.split("/")
        label = parts[0] if len(parts) > 1 else None
        data = path.read_bytes()
        sha = sha256_bytes(data)
        if sha in seen:
            duplicates += 1
            continue
        seen.add(sha)
        meta = {k: v for k, v in meta_by_file.get(rel, {}).items() if k != "label"}
        if coco is None:
            images.append(_Image(path, rel, label, sha, data, meta))
            continue
        width, height, boxes = coco.get(rel, (0, 0, None))
        if not width:
            from PIL import Image

            with Image.open(path) as im:
                width, height = im.size
        images.append(_Image(path, rel, None, sha, data, meta, boxes, (width, height)))
    return images, skipped, duplicates


def seed_directory(
    settings: Settings,
    directory: Path,
    source: str | None = None,
    project_title: str | None = None,
    progress: bool = True,
) -> SeedReport:
    from tqdm import tqdm

    from edgeloop.core.blob import BlobStore, BlobUri

    directory = Path(directory)
    source = source or directory.name
    title = project_title or settings.labelstudio.project_title
    images, skipped, duplicates = scan_directory(directory)
    report = SeedReport(
        project_title=title, images_found=len(images), skipped_files=skipped, duplicate_images=duplicates
    )
    store = BlobStore.from_settings(settings)
    container = settings.blob.images_container
    store.ensure_container(container)

    def upload(img: _Image) -> tuple[_Image, BlobUri, bool]:
        uri = BlobUri(container, f"{source}/{img.sha256}{img.path.suffix.lower()}")
        if store.exists(uri):
            return img, uri, False
        store.upload(uri, img.data, metadata={"source_file": img.rel[:200]})
        return img, uri, True

    uploaded: list[tuple[_Image, BlobUri]] = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        for img, uri, new in tqdm(
            pool.map(upload, images),
            total=len(images),
            desc="uploading images",
            unit="img",
            disable=not progress,
        ):
            uploaded.append((img, uri))
            report.uploaded += int(new)
            report.already_in_storage += int(not new)

    detection = any(img.size for img in images)
    if detection:
        from edgeloop.local.sample_data import DEFECT_CLASSES

        report.task = lsx.DETECTION
        found = {b.label for img in images for b in img.boxes or []}
        classes = [*DEFECT_CLASSES, *sorted(found - set(DEFECT_CLASSES))]
    else:
        classes = sorted({img.label for img in images if img.label}) or ["ok"]
    ls = lsx.client(settings)
    project = lsx.ensure_project(ls, title, classes, report.task)
    report.project_id = project.id
    existing = lsx.tasks_by_sha(ls, project.id)

    new_tasks = []
    for img, uri in uploaded:
        if img.sha256 in existing:
            continue
        new_tasks.append(
            {
                "image": store.sas_url(uri, hours=settings.labelstudio.link_ttl_hours),
                "blob_uri": str(uri),
                "sha256": img.sha256,
                "source": source,
                "source_file": img.rel,
                **({"width": img.size[0], "height": img.size[1]} if img.size else {}),
                **img.meta,
            }
        )
    lsx.import_tasks(ls, project.id, new_tasks)
    report.links_refreshed = lsx.refresh_image_links(
        ls, project.id, store, settings.labelstudio.link_ttl_hours
    ).refreshed
    report.tasks_created = len(new_tasks)
    report.tasks_existing = len(uploaded) - len(new_tasks)

    tasks = lsx.tasks_by_sha(ls, project.id) if new_tasks else existing
    to_label: list[tuple[int, str | list[dict[str, Any]]]] = []
    for img, _ in uploaded:
        task = tasks.get(img.sha256)
        if task is None:
            continue
        if not img.labeled:
            report.unlabeled_tasks += int(not task.annotations)
        elif not task.annotations:  # already labeled (by a person or an earlier seed): never overwrite
            if img.label is not None:
                to_label.append((task.id, img.label))
            else:
                assert img.boxes is not None and img.size is not None
                to_label.append((task.id, lsx.rectangle_result(img.boxes, *img.size)))
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = pool.map(lambda t: lsx.annotate(ls, t[0], t[1], project.id), to_label)
        for _ in tqdm(done, total=len(to_label), desc="submitting labels", unit="task", disable=not progress):
            report.annotations_created += 1
    return report
