"""One drift scan over a window of served traffic, and the relabel queueing that follows it.

``scan_window`` reads the payload log for the window, compares it with the model's
reference profile (embedding MMD, confidence PSI, image-statistics KS, predicted-class
chi-square), flags images, selects at most ``budget`` of them (when the window drifts, the
out-of-distribution images that carry the drift first), puts them in the relabel outbox and
delivers the outbox to Label Studio (whatever an earlier scan could not deliver included).
A malformed payload-log line is skipped and counted (``records_malformed``), never fatal.
It never starts training.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeloop.core.payload_log import PayloadRecord, read_window
from edgeloop.monitoring.drift import CategoricalDrift, DriftResult, KSDrift, MMDDrift, PSIDrift
from edgeloop.monitoring.flags import Flag, flag_images, select_for_labeling
from edgeloop.monitoring.profile import (
    DETECTION,
    IMAGE_STAT_NAMES,
    MIN_REFERENCE_IMAGES,
    NO_EMBEDDING,
    ReferenceProfile,
    confidence_and_margin,
    detection_summary,
    image_stats,
)

if TYPE_CHECKING:
    from edgeloop.core.blob import BlobStore
    from edgeloop.core.config import Settings
    from edgeloop.monitoring.relabel import DeliveryReport, EnqueueReport

log = logging.getLogger(__name__)


@dataclass
class ScanOptions:
    budget: int = 20  # at most this many images queued for labeling per window
    alpha: float = 0.05  # family-wise significance over all detectors (Bonferroni)
    n_permutations: int = 200
    max_stat_images: int = 200  # images downloaded for image statistics (seeded sample)
    seed: int = 0
    version: str | None = None  # model version in the payload log; default: the model card's version
    any_version: bool = False  # include records of other model versions (embeddings may not be comparable)
    queue: bool = True  # put selected images in the relabel outbox
    deliver: bool = True  # deliver the outbox to Label Studio after queueing
    project_title: str | None = None  # default: settings.labelstudio.project_title
    payload_model: str | None = None  # model name in the payload log; default: the model card's name


@dataclass
class Window:
    """The records of one window as arrays (rows aligned with ``records``)."""

    records: list[PayloadRecord]
    probabilities: np.ndarray
    embeddings: np.ndarray
    stats: np.ndarray  # image statistics of a sample of rows
    stats_rows: list[int]
    other_versions: int = 0
    images: dict[str, np.ndarray] = field(default_factory=dict)  # sha -> image, for the rows downloaded
    records_dropped: int = 0  # no embedding logged and no image to compute one from
    images_missing: int = 0  # images the payload log names but storage could not return
    records_malformed: int = 0  # payload-log lines that are not valid records (skipped)
    score_threshold: float | None = None  # set: a detector's window (its records carry detections)

    @property
    def detector(self) -> bool:
        return self.score_threshold is not None

    def confidence_margin(self) -> tuple[np.ndarray, np.ndarray]:
        """Per record: (confidence, margin), a classifier's top-1 / top-1 minus top-2, a detector's
        top score / distance of its least certain detection from the threshold."""
        if self.detector:
            conf, margin, _ = detection_summary(self._detections(), self.score_threshold or 0.5)
            return conf, margin
        return confidence_and_margin(self.probabilities)

    @property
    def predicted(self) -> np.ndarray:
        """A classifier's top-1 class per record; a detector's box-count bucket (0, 1, 2, 3+)."""
        if self.detector:
            return detection_summary(self._detections(), self.score_threshold or 0.5)[2]
        return self.probabilities.argmax(axis=1) if len(self.probabilities) else np.zeros(0, int)

    def _detections(self) -> list[list[dict[str, Any]]]:
        return [r.detections or [] for r in self.records]


@dataclass
class ScanReport:
    model: str
    version: str | None
    start: str
    end: str
    records: int
    images: int
    other_versions: int
    drift: bool
    results: list[DriftResult]
    flagged: int
    flag_reasons: dict[str, int]
    selected: list[dict[str, Any]]
    enqueue: dict[str, Any] | None
    delivery: dict[str, Any] | None
    outbox_size: int | None
    wall_s: float
    report_path: str | None = None
    records_dropped: int = 0
    images_missing: int = 0
    records_malformed: int = 0
    selected_reasons: dict[str, int] = field(default_factory=dict)  # per reason, among the selected
    queued_reasons: dict[str, int] = field(default_factory=dict)  # per reason, newly put in the outbox
    reference_images: int = 0  # embeddings in the kNN / MMD reference
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["results"] = [r.as_dict() for r in self.results]
        return d

    def summary(self) -> str:
        lines = [
            f"model {self.model} v{self.version}: window {self.start} .. {self.end}: "
            f"{self.records} records, {self.images} distinct images"
            + (f" ({self.other_versions} records of other versions ignored)" if self.other_versions else ""),
            f"DRIFT: {'yes' if self.drift else 'no'}",
        ]
        if self.records_dropped or self.images_missing or self.records_malformed:
            lines.append(
                f"  not scanned: {self.records_dropped} records without embedding or image, "
                f"{self.images_missing} images missing from storage, "
                f"{self.records_malformed} malformed payload-log lines"
            )
        lines.extend(f"  warning: {w}" for w in self.warnings)
        for r in self.results:
            if "skipped" in r.extra:
                lines.append(f"  {r.name:<16} skipped: {r.extra['skipped']}")
                continue
            extra = ""
            if r.extra.get("drifted_features"):
                extra = f"  features: {', '.join(r.extra['drifted_features'])}"
            lines.append(
                f"  {r.name:<16} {'DRIFT' if r.is_drift else 'ok   '}  p={r.p_val:.4g} "
                f"(threshold {r.threshold:.4g})  distance={r.distance:.4g}{extra}"
            )

        def per_reason(counts: dict[str, int]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"

        share = f" of {self.images} ({self.flagged / self.images:.0%})" if self.images else ""
        lines.append(f"flagged {self.flagged}{share} images ({per_reason(self.flag_reasons)})")
        lines.append(f"selected {len(self.selected)} for labeling ({per_reason(self.selected_reasons)})")
        if self.enqueue is not None:
            lines.append(f"queued per reason: {per_reason(self.queued_reasons)}")
        if self.enqueue is not None:
            e = self.enqueue
            lines.append(
                f"relabel queue: {e['enqueued']} new, {e['already_delivered']} already delivered, "
                f"{e['already_pending']} already waiting"
            )
        if self.delivery is not None:
            d = self.delivery
            msg = (
                f"delivered {d['delivered']} tasks to Label Studio ({d['already_in_project']} already there)"
            )
            if d.get("failed"):
                msg += f"; {d['failed']} items failed ({d['dead_lettered']} dead-lettered)"
            if d.get("lease_busy"):
                msg += "; another scan is delivering: items wait in the outbox"
            elif d.get("error"):
                msg += f"; delivery failed: {d['error']}"
            lines.append(msg)
        if self.outbox_size is not None:
            lines.append(f"outbox: {self.outbox_size} waiting")
        if self.report_path:
            lines.append(f"report: {self.report_path}")
        lines.append(f"scan took {self.wall_s:.1f} s")
        return "\n".join(lines)


def parse_duration(text: str) -> timedelta:
    """'90s', '10m', '1h', '2d' (or a plain number of seconds) -> timedelta."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            return timedelta(seconds=float(text[:-1]) * units[text[-1]])
        return timedelta(seconds=float(text))
    except ValueError:
        raise ValueError(f"{text!r} is not a duration; use e.g. 30s, 10m, 1h, 2d") from None


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """ISO 8601 (naive = UTC), 'now', or a duration ago ('2h' = two hours before now)."""
    now = now or datetime.now(UTC)
    if text.strip().lower() == "now":
        return now
    try:
        t = datetime.fromisoformat(text)
        return t if t.tzinfo else t.replace(tzinfo=UTC)
    except ValueError:
        return now - parse_duration(text)


def resolve_window(
    window: str | timedelta = "1h", since: str | datetime | None = None, until: str | datetime | None = None
) -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    end = until if isinstance(until, datetime) else parse_time(until, now) if until else now
    length = window if isinstance(window, timedelta) else parse_duration(window)
    start = since if isinstance(since, datetime) else parse_time(since, now) if since else end - length
    if start >= end:
        raise ValueError(f"empty window: {start.isoformat()} is not before {end.isoformat()}")
    return start, end


def _download_images(store: BlobStore, records: list[PayloadRecord]) -> dict[str, np.ndarray]:
    from edgeloop.core.payload_log import load_image

    unique = {r.image_sha256: r for r in records}

    def get(rec: PayloadRecord) -> tuple[str, np.ndarray | None]:
        try:
            return rec.image_sha256, load_image(store, rec)
        except Exception as e:  # a missing image must not stop the scan; it only drops out of the stats
            log.warning("could not load %s: %s", rec.image_uri, e)
            return rec.image_sha256, None

    with ThreadPoolExecutor(max_workers=8) as pool:
        return {sha: img for sha, img in pool.map(get, unique.values()) if img is not None}


def load_window(
    store: BlobStore,
    container: str,
    model: str,
    start: datetime,
    end: datetime,
    version: str | None,
    runner: Any = None,
    max_stat_images: int = 200,
    seed: int = 0,
    stats_size: int = 128,
    score_threshold: float | None = None,
) -> Window:
    """Read the window's records (of ``version`` unless None), fill in missing embeddings with
    ``runner`` (a :class:`edgeloop.monitoring.model.ModelRunner`), and compute image statistics on a sample.
    Malformed payload-log lines are skipped and counted. ``score_threshold``: a detector's window
    (no embeddings; its records' detections, judged at that threshold)."""
    malformed: list[tuple[str, int]] = []

    def skip(blob: str, line: int, error: Exception) -> None:
        if not malformed:
            log.warning("skipping malformed payload-log line %s:%d (%s)", blob, line, str(error)[:200])
        malformed.append((blob, line))

    all_records = list(read_window(store, container, model, start, end, on_malformed=skip))
    records = [r for r in all_records if version is None or r.version == version]
    other = len(all_records) - len(records)
    n = len(records)
    rng = np.random.default_rng(seed)
    by_sha: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_sha.setdefault(r.image_sha256, []).append(i)
    shas = sorted(by_sha)
    sample = (
        sorted(rng.choice(len(shas), size=min(len(shas), max_stat_images), replace=False).tolist())
        if shas
        else []
    )
    # a detector's records carry no embedding: its image statistics stand in (every image is needed)
    detector = score_threshold is not None
    need = set(shas) if detector else {shas[i] for i in sample}
    need |= {r.image_sha256 for r in records if r.embedding is None and not detector}
    images = _download_images(store, [records[by_sha[s][0]] for s in sorted(need)])
    images_missing = len(need) - len(images)

    probs: np.ndarray = np.array([r.probabilities for r in records], dtype=np.float64).reshape(n, -1)
    missing = [] if detector else [i for i, r in enumerate(records) if r.embedding is None]
    if missing and runner is None:
        raise ValueError("payload records carry no embeddings and no model was given to compute them")
    dim = len(next((r.embedding for r in records if r.embedding is not None), [])) or None
    computed: dict[int, np.ndarray] = {}
    if missing:
        have = [i for i in missing if records[i].image_sha256 in images]
        out = runner.run([images[records[i].image_sha256] for i in have])
        dim = dim or out.embeddings.shape[1]
        computed = dict(zip(have, out.embeddings, strict=True))
    stats_of: dict[str, np.ndarray] = {}
    if detector:
        dim = len(IMAGE_STAT_NAMES)
        stats_of = {sha: image_stats(images[sha], stats_size) for sha in shas if sha in images}
    emb: np.ndarray = np.zeros((n, dim or 0))
    for i, r in enumerate(records):
        if detector:
            emb[i] = stats_of.get(r.image_sha256, np.nan)
        elif r.embedding is not None:
            emb[i] = r.embedding
        elif i in computed:
            emb[i] = computed[i]
        else:
            emb[i] = np.nan
    keep = np.asarray(~np.isnan(emb).any(axis=1), dtype=bool) if n else np.zeros(0, bool)
    dropped = int((~keep).sum()) if n else 0
    if dropped:
        log.warning("%d records dropped: no embedding and no image to compute one", int((~keep).sum()))
        records = [r for r, k in zip(records, keep.tolist(), strict=True) if k]
        probs, emb = probs[keep], emb[keep]
    stat_rows, stats = [], []
    row_of = {r.image_sha256: i for i, r in enumerate(records)}
    for s in (shas[i] for i in sample):
        if s in images and s in row_of:
            stat_rows.append(row_of[s])
            stats.append(image_stats(images[s], stats_size))
    stats_arr = np.vstack(stats) if stats else np.zeros((0, len(IMAGE_STAT_NAMES)))
    if len(malformed) > 1:
        log.warning("%d malformed payload-log lines skipped in all", len(malformed))
    return Window(
        records,
        probs,
        emb,
        stats_arr,
        stat_rows,
        other,
        images,
        dropped,
        images_missing,
        len(malformed),
        score_threshold,
    )


def detectors(profile: ReferenceProfile, options: ScanOptions) -> list[Any]:
    """The detectors of a scan; each at ``alpha / n`` so the scan's false-alarm rate stays at ``alpha``."""
    level = options.alpha / 4
    return [
        MMDDrift(profile.embeddings, p_val=level, n_permutations=options.n_permutations, seed=options.seed),
        PSIDrift(profile.confidence, p_val=level),
        KSDrift(profile.image_stats, p_val=level, feature_names=IMAGE_STAT_NAMES),
        CategoricalDrift(profile.predicted, len(profile.labels), p_val=level, labels=profile.labels),
    ]


def run_detectors(profile: ReferenceProfile, window: Window, options: ScanOptions) -> list[DriftResult]:
    conf, _ = window.confidence_margin()
    mmd, psi, ks, cat = detectors(profile, options)
    embedding = (
        mmd.predict(window.embeddings)
        if profile.has_embeddings
        else DriftResult(
            mmd.name,
            False,
            float("nan"),
            mmd.p_val,
            float("nan"),
            0,
            len(window.records),
            {"skipped": f"off: {NO_EMBEDDING}"},
        )
    )
    return [
        embedding,
        psi.predict(conf),
        ks.predict(window.stats),
        cat.predict(window.predicted),
    ]


def scan_window(
    settings: Settings,
    model_dir: Path | str,
    start: datetime,
    end: datetime,
    options: ScanOptions | None = None,
    report_path: Path | str | None = None,
    store: BlobStore | None = None,
    metrics: Any = None,
) -> ScanReport:
    """Scan one window for ``model_dir``'s model: drift, flags, relabel queue; see the module docstring."""
    from edgeloop.core.blob import BlobStore
    from edgeloop.core.model_card import ModelCard
    from edgeloop.monitoring.model import ModelRunner
    from edgeloop.monitoring.relabel import RelabelQueue

    t0 = time.perf_counter()
    options = options or ScanOptions()
    model_dir = Path(model_dir)
    card = ModelCard.load(model_dir)
    profile = ReferenceProfile.load(model_dir)
    store = store or BlobStore.from_settings(settings)
    container = settings.blob.payloads_container
    payload_model = options.payload_model or card.name
    version = None if options.any_version else (options.version or card.version)
    runner = _LazyRunner(lambda: ModelRunner(model_dir))
    window = load_window(
        store,
        container,
        payload_model,
        start,
        end,
        version,
        runner=runner,
        max_stat_images=options.max_stat_images,
        seed=options.seed,
        stats_size=profile.stats_size,
        score_threshold=profile.score_threshold if profile.task == DETECTION else None,
    )
    results = run_detectors(profile, window, options)

    shas = [r.image_sha256 for r in window.records]
    drift = any(r.is_drift for r in results)
    flags = flag_images(
        profile, window.probabilities, window.embeddings, shas, confidence_margin=window.confidence_margin()
    )
    selected = select_for_labeling(flags, window.embeddings, options.budget, drift=drift)
    distinct = {f.sha256: f for f in flags}  # an image served twice is flagged (and counted) once
    reasons = _count_reasons(distinct.values())
    warnings = []
    if not profile.has_embeddings:
        warnings.append(f"detectors off: embedding_mmd and the out_of_distribution flag: {NO_EMBEDDING}")
    elif len(profile.embeddings) < MIN_REFERENCE_IMAGES:
        warnings.append(
            f"the reference profile holds {len(profile.embeddings)} embeddings (< {MIN_REFERENCE_IMAGES}): "
            "kNN flags and MMD are noisy; rebuild it from more held-out images"
        )

    enqueue_report: EnqueueReport | None = None
    delivery: DeliveryReport | None = None
    outbox_size: int | None = None
    queued: set[str] = set()
    queue = RelabelQueue.for_settings(settings)
    project = options.project_title or settings.labelstudio.project_title
    if options.queue and selected:
        items = [_relabel_item(store, card, window.records[f.index], f, window) for f in selected]
        enqueue_report = queue.enqueue(project, items)
        queued = set(enqueue_report.enqueued_sha256)
    if options.deliver:
        delivery = queue.deliver(settings)  # also what earlier scans could not deliver
    outbox_size = queue.outbox_size()

    selected_rows = [_selected_row(window.records[f.index], f) for f in selected]
    report = ScanReport(
        model=payload_model,
        version=card.version,
        start=start.isoformat(),
        end=end.isoformat(),
        records=len(window.records),
        images=len(set(shas)),
        other_versions=window.other_versions,
        records_dropped=window.records_dropped,
        images_missing=window.images_missing,
        records_malformed=window.records_malformed,
        drift=drift,
        results=results,
        flagged=len(distinct),
        flag_reasons=reasons,
        selected_reasons=_count_reasons(selected),
        queued_reasons=_count_reasons(f for f in selected if f.sha256 in queued),
        reference_images=len(profile.embeddings),
        warnings=warnings,
        selected=selected_rows,
        enqueue=asdict(enqueue_report) if enqueue_report else None,
        delivery=delivery.as_dict() if delivery else None,
        outbox_size=outbox_size,
        wall_s=0.0,
    )
    if report_path is not None:
        from edgeloop.monitoring.report import write_html_report

        thumbs = _images_for(store, window, selected)
        write_html_report(Path(report_path), report, profile, window, selected, thumbs)
        report.report_path = str(report_path)
    report.wall_s = time.perf_counter() - t0
    if metrics is not None:
        metrics.observe_scan(report)
    return report


def _count_reasons(flags: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in flags:
        for reason in f.reasons:
            counts[reason] = counts.get(reason, 0) + 1
    return counts


class _LazyRunner:
    """Builds the ONNX session only if some record lacks an embedding."""

    def __init__(self, factory: Any):
        self._factory = factory
        self._runner: Any = None

    def run(self, images: Any) -> Any:
        if self._runner is None:
            self._runner = self._factory()
        return self._runner.run(images)


#: A detector's detections from this score up pre-annotate its relabel task (a labeler sees the
#: doubtful ones, each with its score, and keeps, moves or deletes them).
RELABEL_SCORE_FLOOR = 0.25


def _relabel_item(
    store: BlobStore, card: Any, record: PayloadRecord, flag: Flag, window: Window | None = None
) -> Any:
    from edgeloop.monitoring.relabel import RelabelItem

    meta: dict[str, Any] = {
        "served_at": datetime.fromtimestamp(record.ts, UTC).isoformat(),
        "payload_id": record.id,
    }
    if record.source:
        meta["stream"] = record.source
    fields: dict[str, Any] = {
        "sha256": record.image_sha256,
        "blob_uri": record.image_uri,
        "image_url": store.sas_url(record.image_uri),
        "predicted_label": record.label,
        "score": record.score,
        "model_version": f"{record.model}:{record.version}",
        "flag_reason": flag.reason,
        "flag_score": flag.value,
        "labels": list(card.labels),
        "metadata": meta,
    }
    if window is not None and window.detector:
        fields |= _box_task(card, record)
    return RelabelItem(**fields)


def _box_task(card: Any, record: PayloadRecord) -> dict[str, Any]:
    """A detector's record as a box task: its detections worth a look, in the logged image's pixels
    (the model's input size)."""
    dets = [d for d in record.detections or [] if float(d["score"]) >= RELABEL_SCORE_FLOOR]
    found = len(dets)
    size = card.preprocessing.size
    return {
        "detections": dets,
        "width": size,
        "height": size,
        "predicted_label": f"{found} defect{'s' if found != 1 else ''} (top {record.label or 'none'})",
    }


def _selected_row(record: PayloadRecord, flag: Flag) -> dict[str, Any]:
    return {
        "sha256": record.image_sha256,
        "blob_uri": record.image_uri,
        "label": record.label,
        "score": round(record.score, 4),
        "reason": flag.reason,
        "value": round(flag.value, 4),
        "margin": round(flag.margin, 4),
        "ood_score": round(flag.ood_score, 4),
        "priority": flag.extra.get("priority", "value"),
    }


def _images_for(store: BlobStore, window: Window, flags: list[Flag]) -> dict[str, np.ndarray]:
    missing = [window.records[f.index] for f in flags if f.sha256 not in window.images]
    images = dict(window.images)
    if missing:
        images.update(_download_images(store, missing))
    return {f.sha256: images[f.sha256] for f in flags if f.sha256 in images}
