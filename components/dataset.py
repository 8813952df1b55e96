"""Build a versioned, content-addressed image dataset from a label manifest.

* Images are fetched from blob storage in parallel, retried, verified against the
  manifest's sha256 and decoded once; a corrupt or undecodable image is reported
  and left out, never a crash.
* The split is a pure function of the image's content hash (:func:`assign_split`):
  an image never changes split between runs, and adding images only adds rows.
  Each class gets the configured fractions in expectation (every image draws its
  bucket independently); the per-class counts are in :class:`DatasetInfo`.
* The dataset version is a digest of the resolved manifest (sha256 + label of
  every included image, plus the split settings): unchanged labels give the same
  version. Annotation times and annotators do not enter it.

Layout of ``out_dir``: ``images/<sha256>.<ext>``, ``index.jsonl`` (one row per
image: sha256, file, label, split, image URI, metadata; for detection the boxes and
the image size instead of a label), ``dataset.json`` (:class:`DatasetInfo`), a copy
of the manifest and, for detection, one COCO file per split (``coco_<split>.json``,
boxes in pixels: what COCO evaluation reads). These files are uploaded to
``az://<datasets container>/<version>/``; the images stay where they are
(content-addressed, immutable) and are referenced by URI.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.components.defaults import SPLIT_FRACTIONS
from edgeloop.components.errors import DatasetError
from edgeloop.components.labels import ManifestRow, read_manifest
from edgeloop.core.boxes import Box, box_counts, coco_document
from edgeloop.core.labelstudio import CLASSIFICATION, DETECTION
from edgeloop.core.model_card import sha256_bytes, sha256_file

if TYPE_CHECKING:
    from edgeloop.core.blob import BlobStore
    from edgeloop.core.config import Settings

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = SPLIT_FRACTIONS
SPLIT_SALT = "edgeloop-split-v1"
INDEX_FILE = "index.jsonl"
INFO_FILE = "dataset.json"
MANIFEST_FILE = "manifest.jsonl"


@dataclass
class DatasetRow:
    sha256: str
    file: str  # relative to the dataset directory
    label: str
    split: str
    image: str  # az:// URI it came from
    metadata: dict[str, Any] = field(default_factory=dict)
    boxes: list[dict[str, Any]] | None = None  # detection: Box.as_dict() per defect (pixels)
    width: int | None = None  # detection
    height: int | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.boxes is None:  # classification rows stay byte for byte what they were
            for k in ("boxes", "width", "height"):
                d.pop(k)
        return d

    def box_list(self) -> list[Box]:
        return [Box.from_dict(b) for b in self.boxes or []]


def coco_file(split: str) -> str:
    return f"coco_{split}.json"


@dataclass
class DatasetInfo:
    version: str
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> images
    fractions: tuple[float, float, float]
    split_salt: str
    manifest_sha256: str
    images: int
    excluded: list[dict[str, str]] = field(default_factory=list)  # {"image", "sha256", "reason"}
    warnings: list[str] = field(default_factory=list)
    directory: str = ""
    blob_uri: str = ""
    downloaded: int = 0
    cached: int = 0
    seconds: float = 0.0
    task: str = CLASSIFICATION  # detection: ``counts`` are boxes per class
    images_per_split: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, directory: Path) -> Path:
        path = Path(directory) / INFO_FILE
        path.write_text(json.dumps(self.as_dict(), indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, directory: Path) -> DatasetInfo:
        path = Path(directory) / INFO_FILE
        if not path.exists():
            raise DatasetError(f"{directory} holds no {INFO_FILE}: build it with `edgeloop dataset build`")
        d = json.loads(path.read_text())
        d["fractions"] = tuple(d["fractions"])
        return cls(**d)

    def summary(self) -> str:
        if self.task == DETECTION:
            boxes = {c: sum(self.counts[s].get(c, 0) for s in SPLITS) for c in self.classes}
            return (
                f"detection dataset {self.version}: {self.images} images, boxes {boxes}, "
                f"split {self.images_per_split}; {len(self.excluded)} excluded"
            )
        per_split = {s: sum(self.counts.get(s, {}).values()) for s in SPLITS}
        return (
            f"dataset {self.version}: {self.images} images, {len(self.classes)} classes {self.classes}, "
            f"split {per_split}; {len(self.excluded)} excluded"
        )


def assign_split(
    sha256: str, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, salt: str = SPLIT_SALT
) -> str:
    """The split of an image: a pure function of its content hash (and the split settings)."""
    if abs(sum(fractions) - 1.0) > 1e-6 or any(f < 0 for f in fractions):
        raise DatasetError(f"split fractions {fractions} must be >= 0 and sum to 1")
    u = int(hashlib.sha256(f"{salt}:{sha256}".encode()).hexdigest()[:15], 16) / 16**15
    acc = 0.0
    for name, frac in zip(SPLITS, fractions, strict=True):
        acc += frac
        if u < acc:
            return name
    return SPLITS[-1]


def dataset_version(
    rows: list[tuple[str, str]],
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    salt: str = SPLIT_SALT,
) -> str:
    """Digest of the resolved manifest: (sha256, label) pairs in any order plus the split settings."""
    h = hashlib.sha256()
    h.update(f"split:{salt}:{','.join(f'{f:.6f}' for f in fractions)}\n".encode())
    for sha, label in sorted(rows):
        h.update(f"{sha}\t{label}\n".encode())
    return "ds-" + h.hexdigest()[:16]


def _ext(uri: str) -> str:
    suffix = Path(uri.split("?", 1)[0]).suffix.lower()
    return suffix if suffix and len(suffix) <= 6 else ".img"


def _check_image(data: bytes) -> str | None:
    """None if ``data`` decodes as an image, else the reason."""
    from edgeloop.core.preprocessing import ImageDecodeError, decode_image

    try:
        img = decode_image(data)
    except ImageDecodeError as e:
        return f"undecodable: {e}"
    if min(img.size) < 8:
        return f"too small: {img.size[0]}x{img.size[1]} pixels"
    return None


def _fetch(store: BlobStore, row: ManifestRow, dest: Path, retries: int) -> tuple[str | None, str, bool]:
    """Download (or reuse) one image: (sha256 or None, reason if excluded, downloaded?)."""
    if row.sha256 and dest.exists() and sha256_file(dest) == row.sha256:
        return row.sha256, "", False
    from edgeloop.core.blob import BlobNotFoundError

    last = ""
    for attempt in range(retries + 1):
        try:
            data = store.download(row.image)
        except BlobNotFoundError:
            return None, "missing from blob storage", True
        except Exception as e:  # network hiccups: retry with backoff
            last = f"download failed: {type(e).__name__}: {e}"
            time.sleep(min(0.2 * 2**attempt, 2.0))
            continue
        sha = sha256_bytes(data)
        if row.sha256 and sha != row.sha256:
            last = f"sha256 mismatch: manifest {row.sha256[:12]}..., blob {sha[:12]}..."
            continue  # a truncated transfer retries; a changed blob stays excluded
        reason = _check_image(data)
        if reason:
            return sha, reason, True
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{sha}.tmp")
        tmp.write_bytes(data)
        tmp.replace(dest)
        return sha, "", True
    return None, last, True


def build_dataset(
    settings: Settings | None,
    manifest: Path,
    out_dir: Path,
    *,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    split_salt: str = SPLIT_SALT,
    workers: int = 8,
    retries: int = 3,
    upload: bool = True,
    mlflow_run_id: str | None = None,
    log_mlflow: bool = True,
    store: BlobStore | None = None,
) -> DatasetInfo:
    """Fetch, verify and split the manifest's images into ``out_dir``; store the index and log it.

    ``settings`` may be ``None`` when ``store`` is given and ``upload``/``log_mlflow`` are off (tests).
    """
    t0 = time.perf_counter()
    manifest, out_dir = Path(manifest), Path(out_dir)
    rows = read_manifest(manifest)
    if not rows:
        raise DatasetError(f"manifest {manifest} has no labeled images; label some in Label Studio first")
    if store is None:
        if settings is None:
            raise DatasetError("build_dataset needs settings or a BlobStore")
        from edgeloop.core.blob import BlobStore

        store = BlobStore.from_settings(settings)
    assign_split("0", fractions, split_salt)  # validates the fractions before any download
    out_dir.mkdir(parents=True, exist_ok=True)

    def job(row: ManifestRow) -> tuple[ManifestRow, str | None, str, bool]:
        dest = (
            out_dir
            / "images"
            / f"{row.sha256 or hashlib.sha256(row.image.encode()).hexdigest()}{_ext(row.image)}"
        )
        sha, reason, downloaded = _fetch(store, row, dest, retries)
        if sha and not reason and dest.name != f"{sha}{_ext(row.image)}":  # manifest had no sha256
            final = dest.with_name(f"{sha}{_ext(row.image)}")
            dest.replace(final)
        return row, sha, reason, downloaded

    included: list[DatasetRow] = []
    excluded: list[dict[str, str]] = []
    downloaded = cached = 0
    seen: set[str] = set()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for row, sha, reason, was_downloaded in pool.map(job, rows):
            downloaded += int(was_downloaded)
            cached += int(not was_downloaded)
            if reason or sha is None:
                excluded.append(
                    {"image": row.image, "sha256": row.sha256 or "", "reason": reason or "unknown"}
                )
                log.warning("excluded %s: %s", row.image, reason)
                continue
            if sha in seen:
                excluded.append({"image": row.image, "sha256": sha, "reason": "duplicate content"})
                continue
            seen.add(sha)
            included.append(
                DatasetRow(
                    sha256=sha,
                    file=f"images/{sha}{_ext(row.image)}",
                    label=row.label,
                    split=assign_split(sha, fractions, split_salt),
                    image=row.image,
                    metadata=dict(row.metadata or {}),
                    boxes=row.boxes,
                    width=row.width,
                    height=row.height,
                )
            )
    if not included:
        raise DatasetError(
            f"none of the {len(rows)} images in {manifest} could be used; see the exclusions: "
            f"{excluded[:3]}"
        )
    included.sort(key=lambda r: r.sha256)
    detection = any(r.boxes is not None for r in included)
    if detection and any(r.boxes is None for r in included):
        raise DatasetError(
            f"{manifest} mixes classification labels and boxes; import one project per task type"
        )
    classes, counts, warnings = (_box_counts if detection else _class_counts)(included)
    version = dataset_version([(r.sha256, _version_label(r)) for r in included], fractions, split_salt)

    with open(out_dir / INDEX_FILE, "w") as fh:
        for r in included:
            fh.write(json.dumps(r.as_dict(), sort_keys=True) + "\n")
    if manifest.resolve() != (out_dir / MANIFEST_FILE).resolve():
        shutil.copyfile(manifest, out_dir / MANIFEST_FILE)
    files = [INDEX_FILE, INFO_FILE, MANIFEST_FILE]
    if detection:
        for split in SPLITS:
            rows_of = [r for r in included if r.split == split]
            doc = coco_document(
                [(r.file, r.width or 0, r.height or 0, r.box_list()) for r in rows_of], classes
            )
            (out_dir / coco_file(split)).write_text(json.dumps(doc, sort_keys=True) + "\n")
            files.append(coco_file(split))
    info = DatasetInfo(
        version=version,
        classes=classes,
        counts=counts,
        fractions=fractions,
        split_salt=split_salt,
        manifest_sha256=sha256_file(manifest),
        images=len(included),
        excluded=excluded,
        warnings=warnings,
        directory=str(out_dir),
        downloaded=downloaded,
        cached=cached,
        task=DETECTION if detection else CLASSIFICATION,
        images_per_split={s: sum(1 for r in included if r.split == s) for s in SPLITS},
    )
    if upload and settings is not None:
        container = settings.blob.datasets_container
        store.ensure_container(container)
        info.blob_uri = f"az://{container}/{version}/"
        info.save(out_dir)
        for name in files:
            store.upload_file(f"{info.blob_uri}{name}", out_dir / name)
    info.seconds = round(time.perf_counter() - t0, 3)
    info.save(out_dir)
    if log_mlflow and settings is not None:
        log_dataset(settings, info, out_dir, run_id=mlflow_run_id)
    return info


def _version_label(r: DatasetRow) -> str:
    """What of a row enters the dataset version: its label, or its boxes (and the size they refer to)."""
    if r.boxes is None:
        return r.label
    boxes = sorted((b.label, b.x, b.y, b.w, b.h) for b in r.box_list())
    return json.dumps({"size": [r.width, r.height], "boxes": boxes}, separators=(",", ":"))


def _class_counts(rows: list[DatasetRow]) -> tuple[list[str], dict[str, dict[str, int]], list[str]]:
    classes = sorted({r.label for r in rows})
    if len(classes) < 2:
        raise DatasetError(f"the manifest has only the class(es) {classes}; a classifier needs at least two")
    counts = _per_split(classes, ((r.split, {r.label: 1}) for r in rows))
    return classes, counts, _gaps(counts, "image", "label more images of it", "its accuracy")


def _box_counts(rows: list[DatasetRow]) -> tuple[list[str], dict[str, dict[str, int]], list[str]]:
    """Detection: the classes boxed anywhere, boxes per split and class."""
    classes = sorted({b.label for r in rows for b in r.box_list()})
    if not classes:
        raise DatasetError(
            "the manifest holds no box at all; a detector needs labeled defects: draw some boxes"
        )
    counts = _per_split(classes, ((r.split, box_counts(r.box_list())) for r in rows))
    return classes, counts, _gaps(counts, "box", "box more defects of it", "its AP")


def _per_split(classes: list[str], items: Iterable[tuple[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {s: {c: 0 for c in classes} for s in SPLITS}
    for split, per_class in items:
        for c, n in per_class.items():
            counts[split][c] += n
    return counts


def _gaps(counts: dict[str, dict[str, int]], unit: str, fix: str, metric: str) -> list[str]:
    """Warnings for classes without training or validation examples."""
    warnings = []
    for c in counts["train"]:
        if counts["train"][c] == 0:
            warnings.append(f"class '{c}' has no training {unit}: {fix}")
        if counts["val"][c] == 0:
            warnings.append(f"class '{c}' has no validation {unit}: {metric} is not measured")
    return warnings


def load_rows(directory: Path, split: str | None = None) -> list[DatasetRow]:
    rows = []
    for line in (Path(directory) / INDEX_FILE).read_text().splitlines():
        if line.strip():
            r = DatasetRow(**json.loads(line))
            if split is None or r.split == split:
                rows.append(r)
    return rows


def split_counts(rows: list[DatasetRow]) -> dict[str, dict[str, int]]:
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        out[r.split][r.label] += 1
    return {s: dict(sorted(c.items())) for s, c in sorted(out.items())}


def log_dataset(settings: Settings, info: DatasetInfo, directory: Path, run_id: str | None = None) -> str:
    """Record the dataset in an MLflow run (as its input, params and artifacts); returns the run id."""
    from edgeloop.components.tracking import mlflow_run

    with mlflow_run(settings, run_id) as run:
        import mlflow
        from mlflow.data.http_dataset_source import HTTPDatasetSource
        from mlflow.data.meta_dataset import MetaDataset

        source_url = info.blob_uri or Path(directory).resolve().as_uri()
        if info.blob_uri:
            from edgeloop.core.blob import BlobStore

            try:  # a plain (unsigned) URL: where it lives, not a credential
                source_url = (
                    BlobStore.from_settings(settings).client.url.rstrip("/")
                    + "/"
                    + info.blob_uri[len("az://") :]
                    + INDEX_FILE
                )
            except Exception:
                pass
        mlflow.log_input(
            MetaDataset(  # type: ignore[abstract]
                HTTPDatasetSource(source_url), name="edgeloop-images", digest=info.version
            ),
            context="training",
        )
        mlflow.set_tag("dataset_version", info.version)
        mlflow.log_params(
            {
                "dataset_version": info.version,
                "dataset_images": info.images,
                "dataset_classes": ",".join(info.classes),
                "dataset_uri": info.blob_uri or str(directory),
                "dataset_excluded": len(info.excluded),
                "split_fractions": ",".join(map(str, info.fractions)),
                **{f"dataset_{s}": sum(info.counts[s].values()) for s in SPLITS},
            }
        )
        for name in (INFO_FILE, INDEX_FILE, MANIFEST_FILE, *(coco_file(s) for s in SPLITS)):
            if (Path(directory) / name).exists():
                mlflow.log_artifact(str(Path(directory) / name), artifact_path="dataset")
        return run.info.run_id
