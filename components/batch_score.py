"""Batch scoring: every image under a blob prefix through a model directory, results back to blob storage.

A run is planned once (:func:`plan_batch`): the listing of ``az://CONTAINER/PREFIX`` (images only;
other blobs counted and named in the summary) is cut into shards of ``shard_size`` names and
written, with the model's identity, to ``OUT/manifest.json``. Each shard (:func:`score_shard`)
downloads its images, runs them through the model (opened by the one model loader, so the
digest is verified) and writes

* ``OUT/shards/NNNNN.jsonl``: one line per image - blob name, label, score, probabilities per
  label, model name, version and digest - or the reason it could not be scored;
* ``OUT/shards/NNNNN.features.npz``: image statistics (and embeddings) for the drift report;
* ``OUT/shards/NNNNN.done``: the marker, written last (one blob upload is atomic).

A re-run reads the manifest (the same shards, even if blobs were added since) and skips every
shard whose marker exists; a shard killed half-way has no marker and is scored again, its files
overwritten whole, so each image is in the results exactly once. A manifest made for another
model digest or listing is refused rather than mixed. :func:`summarize_batch` writes
``OUT/summary.json``: counts per label, a confidence histogram and the drift report against the
model's reference profile (the monitoring detectors).
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeloop.core.errors import EdgeloopError

if TYPE_CHECKING:
    from edgeloop.core.blob import BlobStore
    from edgeloop.core.config import Settings

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MANIFEST = "manifest.json"
SUMMARY = "summary.json"
HISTOGRAM_BINS = 10
MANIFEST_FORMAT = 1


class BatchError(EdgeloopError):
    """A batch run cannot start or go on (no images, a manifest of another run at --out...)."""


def model_uri(model: str) -> str:
    """``NAME@ALIAS`` / ``NAME/VERSION`` -> ``models:/...``; URIs and directories pass through."""
    if model.startswith(("models:/", "az://", "file://", "/", ".")) or Path(model).is_dir():
        return model
    return f"models:/{model}"


def parse_out(out: str, container: str) -> tuple[str, str]:
    """``az://CONTAINER/PREFIX`` or ``PREFIX`` (in the input container) -> (container, prefix without '/')."""
    from edgeloop.core.blob import BlobUri

    if out.startswith("az://"):
        u = BlobUri.parse(out)
        c, p = u.container, u.path
    else:
        c, p = container, out
    p = p.strip("/")
    if not p:
        raise BatchError(f"--out {out!r} names no prefix; use e.g. az://results/batch-2026-11-29")
    return c, p


@dataclass
class Shard:
    index: int
    blobs: list[str]

    @property
    def stem(self) -> str:
        return f"shards/{self.index:05d}"


@dataclass
class BatchPlan:
    container: str
    prefix: str
    out_container: str
    out_prefix: str
    model_uri: str
    model_name: str
    model_version: str
    model_digest: str
    shard_size: int
    shards: list[Shard]
    skipped_blobs: list[str] = field(default_factory=list)  # under the prefix, not images
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    format: int = MANIFEST_FORMAT

    @property
    def images(self) -> int:
        return sum(len(s.blobs) for s in self.shards)

    def blob(self, name: str) -> str:
        return f"{self.out_prefix}/{name}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> BatchPlan:
        d = json.loads(text)
        d["shards"] = [Shard(**s) for s in d["shards"]]
        return cls(**d)


@dataclass
class ShardResult:
    index: int
    images: int  # lines written (scored + failed)
    scored: int
    failed: int
    seconds: float
    skipped: bool = False  # finished by an earlier run


@dataclass
class BatchSummary:
    out: str
    model_uri: str
    model_name: str
    model_version: str
    model_digest: str
    images: int
    scored: int
    failed: int
    skipped_blobs: int
    shards: int
    shards_skipped: int  # finished by an earlier run, not scored again
    counts: dict[str, int]
    confidence_histogram: dict[str, list[float]]
    drift: bool | None
    drift_results: list[dict[str, Any]]
    failures: list[dict[str, str]]
    warnings: list[str]
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        lines = [
            f"scored {self.scored} of {self.images} images with {self.model_name} v{self.model_version} "
            f"(digest {self.model_digest[:12]}) in {self.shards} shards "
            f"({self.shards_skipped} finished earlier); results under {self.out}",
            "per label: " + ", ".join(f"{k} {v}" for k, v in self.counts.items()),
        ]
        if self.failed:
            lines.append(
                f"not scored: {self.failed} (reasons in the results; first: {self.failures[0]['error']})"
            )
        if self.skipped_blobs:
            lines.append(f"not images (skipped): {self.skipped_blobs} blobs under the prefix")
        if self.drift is None:
            lines.append("drift: not assessed")
        else:
            lines.append(f"drift against the reference profile: {'YES' if self.drift else 'no'}")
            for r in self.drift_results:
                state = (
                    f"skipped: {r['extra']['skipped']}"
                    if "skipped" in r["extra"]
                    else ("DRIFT" if r["is_drift"] else "ok")
                )
                lines.append(f"  {r['name']:<16} {state}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# -- planning ---------------------------------------------------------------------------------------------------
def list_images(
    store: BlobStore, container: str, prefix: str, exclude: str = ""
) -> tuple[list[str], list[str]]:
    """(image blob names, other blob names) under ``prefix``, sorted; names under ``exclude`` left out."""
    images: list[str] = []
    other: list[str] = []
    for name in store.list(container, prefix):
        if exclude and name.startswith(exclude + "/"):
            continue
        (images if name.lower().endswith(IMAGE_SUFFIXES) else other).append(name)
    return sorted(images), sorted(other)


def plan_batch(
    settings: Settings,
    container: str,
    prefix: str,
    model: str,
    out: str,
    shard_size: int = 256,
    cache_dir: Path | None = None,
    store: BlobStore | None = None,
) -> BatchPlan:
    """The run's plan: reused from ``OUT/manifest.json`` when a run of the same model and listing left
    one there (the resume case), else made from the listing now and written there."""
    from edgeloop.core.blob import BlobStore, BlobUri

    if shard_size < 1:
        raise BatchError(f"--shard-size {shard_size}: at least 1 image per shard")
    store = store or BlobStore.from_settings(settings)
    out_container, out_prefix = parse_out(out, container)
    model_dir, name, version, digest = resolve_model(settings, model, cache_dir)
    manifest = BlobUri(out_container, f"{out_prefix}/{MANIFEST}")
    if store.exists(manifest):
        plan = BatchPlan.from_json(store.download(manifest).decode())
        mine = (container, prefix.strip("/"), shard_size, digest)
        theirs = (plan.container, plan.prefix, plan.shard_size, plan.model_digest)
        if mine != theirs:
            raise BatchError(
                f"az://{out_container}/{out_prefix} holds a batch run of model digest {plan.model_digest[:12]} over "
                f"az://{plan.container}/{plan.prefix} (shards of {plan.shard_size}); this run is "
                f"{digest[:12]} over az://{container}/{prefix.strip('/')} (shards of {shard_size}): "
                "choose another --out"
            )
        log.info("resuming the batch run planned at %s (%d shards)", plan.created_at, len(plan.shards))
        return plan
    exclude = out_prefix if out_container == container else ""
    images, other = list_images(store, container, prefix.strip("/"), exclude)
    if not images:
        raise BatchError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) under az://{container}/{prefix}: check --container and --prefix"
        )
    shards = [Shard(i, images[s : s + shard_size]) for i, s in enumerate(range(0, len(images), shard_size))]
    plan = BatchPlan(
        container=container,
        prefix=prefix.strip("/"),
        out_container=out_container,
        out_prefix=out_prefix,
        model_uri=model_uri(model),
        model_name=name,
        model_version=version,
        model_digest=digest,
        shard_size=shard_size,
        shards=shards,
        skipped_blobs=other,
    )
    store.ensure_container(out_container)
    store.upload(manifest, plan.to_json().encode())
    log.info("planned %d images in %d shards (%d other blobs skipped)", plan.images, len(shards), len(other))
    return plan


def resolve_model(
    settings: Settings, model: str, cache_dir: Path | None = None
) -> tuple[Path, str, str, str]:
    """(verified model directory, name, version, digest) of ``model`` (``NAME@ALIAS``, ``NAME/VERSION``
    or any model URI), fetched through the model loader (registered versions cached under the state dir)."""
    from edgeloop.core.model_loader import fetch_model as fetch
    from edgeloop.core.model_loader import pinned_digests, verify_model

    fetched = fetch(model_uri(model), settings, cache_dir or settings.ensure_state_dir() / "models")
    verified = verify_model(fetched.directory, expected_digest=pinned_digests(fetched))
    card = verified.card
    return verified.directory, card.name, fetched.registry_version or card.version or "", card.digest()


# -- scoring ----------------------------------------------------------------------------------------------------
def finished_shards(store: BlobStore, plan: BatchPlan) -> set[int]:
    """Indices of the shards whose marker exists (one listing, not one request per shard)."""
    prefix = plan.blob("shards/")
    return {
        int(name[len(prefix) :].removesuffix(".done"))
        for name in store.list(plan.out_container, prefix)
        if name.endswith(".done") and name[len(prefix) :].removesuffix(".done").isdigit()
    }


def _decode(data: bytes) -> np.ndarray:
    from edgeloop.core.preprocessing import decode_image

    return np.asarray(decode_image(data, ("PNG", "JPEG")))


def score_shard(
    store: BlobStore,
    plan: BatchPlan,
    shard: Shard,
    runner: Any,
    stats_size: int,
    download_threads: int = 8,
) -> ShardResult:
    """Score one shard and write its results, features and (last) its marker; see the module docstring."""
    from edgeloop.core.blob import BlobUri
    from edgeloop.core.model_card import sha256_bytes
    from edgeloop.monitoring.profile import image_stats_batch

    t0 = time.perf_counter()

    def load(name: str) -> tuple[str, np.ndarray | None, str, str]:
        try:
            data = store.download(BlobUri(plan.container, name))
        except Exception as e:  # noqa: BLE001 - a blob deleted since the plan: reported, not fatal
            return name, None, "", f"download failed: {type(e).__name__}: {str(e)[:200]}"
        try:
            return name, _decode(data), sha256_bytes(data), ""
        except ValueError as e:
            return name, None, sha256_bytes(data), str(e)

    with ThreadPoolExecutor(max_workers=download_threads) as pool:
        loaded = list(pool.map(load, shard.blobs))
    ok = [(n, img, sha) for n, img, sha, err in loaded if img is not None]
    out = runner.run([img for _, img, _ in ok])
    labels = runner.card.labels
    by_name: dict[str, dict[str, Any]] = {}
    for (name, _, sha), p in zip(ok, out.probabilities, strict=True):
        i = int(np.argmax(p))
        by_name[name] = {
            "blob": name,
            "image_sha256": sha,
            "label": labels[i],
            "score": round(float(p[i]), 6),
            "probabilities": {lbl: round(float(x), 6) for lbl, x in zip(labels, p, strict=True)},
        }
    ident = {"model": plan.model_name, "model_version": plan.model_version, "model_digest": plan.model_digest}
    lines = []
    for name, _, sha, err in loaded:
        row = by_name.get(name) or {"blob": name, "image_sha256": sha, "label": None, "error": err}
        lines.append(json.dumps(row | ident, sort_keys=True))
    stats = image_stats_batch([img for _, img, _ in ok], stats_size)
    features = io.BytesIO()
    np.savez_compressed(
        features,
        stats=stats,
        embeddings=np.asarray(out.embeddings, np.float32),
        blobs=np.array([n for n, *_ in ok]),
    )
    container = plan.out_container
    store.upload(BlobUri(container, plan.blob(f"{shard.stem}.jsonl")), ("\n".join(lines) + "\n").encode())
    store.upload(BlobUri(container, plan.blob(f"{shard.stem}.features.npz")), features.getvalue())
    result = ShardResult(shard.index, len(lines), len(ok), len(lines) - len(ok), time.perf_counter() - t0)
    store.upload(BlobUri(container, plan.blob(f"{shard.stem}.done")), json.dumps(asdict(result)).encode())
    return result


def open_runner(model_dir: Path) -> tuple[Any, int]:
    """The model runner (model loader + the card's preprocessing) and the image-statistics size of its profile."""
    from edgeloop.monitoring.model import ModelRunner
    from edgeloop.monitoring.profile import STATS_SIZE, ProfileError, ReferenceProfile

    runner = ModelRunner(model_dir, threads=0)
    try:
        size = ReferenceProfile.load(model_dir).stats_size
    except ProfileError:
        size = STATS_SIZE
    return runner, size


def score_shards(
    settings: Settings,
    plan: BatchPlan,
    indices: Iterable[int] | None = None,
    progress: Callable[[ShardResult], None] | None = None,
    store: BlobStore | None = None,
    cache_dir: Path | None = None,
) -> list[ShardResult]:
    """Score the shards ``indices`` (default: all) of ``plan`` that have no marker yet."""
    from edgeloop.core.blob import BlobStore

    store = store or BlobStore.from_settings(settings)
    wanted = [plan.shards[i] for i in (indices if indices is not None else range(len(plan.shards)))]
    results: list[ShardResult] = []
    runner: Any = None
    stats_size = 0
    finished = finished_shards(store, plan)
    for shard in wanted:
        if shard.index in finished:
            r = ShardResult(shard.index, len(shard.blobs), 0, 0, 0.0, skipped=True)
        else:
            if runner is None:
                model_dir, *_, digest = resolve_model(settings, _pinned(plan), cache_dir)
                if digest != plan.model_digest:
                    raise BatchError(
                        f"{plan.model_uri} is now digest {digest[:12]}, the run was planned with "
                        f"{plan.model_digest[:12]}: the model changed under the run; choose another --out"
                    )
                runner, stats_size = open_runner(model_dir)
            r = score_shard(store, plan, shard, runner, stats_size)
        results.append(r)
        if progress is not None:
            progress(r)
    return results


# -- summary ----------------------------------------------------------------------------------------------------
def read_results(store: BlobStore, plan: BatchPlan) -> list[dict[str, Any]]:
    """Every result line of a finished run, shard by shard."""
    from edgeloop.core.blob import BlobUri

    rows = []
    for shard in plan.shards:
        text = store.download(BlobUri(plan.out_container, plan.blob(f"{shard.stem}.jsonl"))).decode()
        rows += [json.loads(x) for x in text.splitlines() if x.strip()]
    return rows


def summarize_batch(
    settings: Settings,
    plan: BatchPlan,
    shard_results: list[ShardResult] | None = None,
    store: BlobStore | None = None,
    cache_dir: Path | None = None,
    alpha: float = 0.05,
) -> BatchSummary:
    """Counts, confidence histogram and drift of a finished run; written to ``OUT/summary.json``."""
    from edgeloop.core.blob import BlobStore, BlobUri

    store = store or BlobStore.from_settings(settings)
    finished = finished_shards(store, plan)
    missing = [s.index for s in plan.shards if s.index not in finished]
    if missing:
        raise BatchError(
            f"{len(missing)} shards are not finished (first: {missing[0]}): run the same batch score again"
        )
    t0 = time.perf_counter()
    rows = read_results(store, plan)
    labels_seen = [r["label"] for r in rows if r.get("label") is not None]
    model_dir, *_ = resolve_model(settings, _pinned(plan), cache_dir)
    from edgeloop.core.model_card import ModelCard

    card = ModelCard.load(model_dir)
    counts = {lbl: labels_seen.count(lbl) for lbl in card.labels}
    probs = np.array(
        [[r["probabilities"][lbl] for lbl in card.labels] for r in rows if r.get("label") is not None]
    ).reshape(-1, len(card.labels))
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    hist, edges = np.histogram(conf, bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    stats, emb = _features(store, plan)
    drift, results, warnings = _drift(model_dir, probs, emb, stats, alpha)
    failures = [{"blob": r["blob"], "error": r["error"]} for r in rows if r.get("label") is None]
    if plan.skipped_blobs:
        warnings.append(
            f"{len(plan.skipped_blobs)} blobs under the prefix are not images and were not scored"
        )
    summary = BatchSummary(
        out=f"az://{plan.out_container}/{plan.out_prefix}",
        model_uri=plan.model_uri,
        model_name=plan.model_name,
        model_version=plan.model_version,
        model_digest=plan.model_digest,
        images=len(rows),
        scored=len(labels_seen),
        failed=len(failures),
        skipped_blobs=len(plan.skipped_blobs),
        shards=len(plan.shards),
        shards_skipped=sum(1 for r in shard_results or [] if r.skipped),
        counts=counts,
        confidence_histogram={"edges": [round(float(e), 2) for e in edges], "counts": [int(c) for c in hist]},
        drift=drift,
        drift_results=results,
        failures=failures[:100],
        warnings=warnings,
        seconds=round(time.perf_counter() - t0, 3),
    )
    store.upload(
        BlobUri(plan.out_container, plan.blob(SUMMARY)), json.dumps(summary.as_dict(), indent=1).encode()
    )
    return summary


def _pinned(plan: BatchPlan) -> str:
    """The exact registered version the run was planned with (an alias may have moved since)."""
    if plan.model_uri.startswith("models:/"):
        from edgeloop.core.model_loader import parse_registry_uri

        name, _, _ = parse_registry_uri(plan.model_uri)
        return f"models:/{name}/{plan.model_version}"
    return plan.model_uri


def _features(store: BlobStore, plan: BatchPlan) -> tuple[np.ndarray, np.ndarray]:
    from edgeloop.core.blob import BlobUri

    stats, emb = [], []
    for shard in plan.shards:
        data = store.download(BlobUri(plan.out_container, plan.blob(f"{shard.stem}.features.npz")))
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            stats.append(z["stats"])
            emb.append(z["embeddings"])
    return np.concatenate(stats), np.concatenate(emb).astype(np.float64)


def _drift(
    model_dir: Path, probs: np.ndarray, emb: np.ndarray, stats: np.ndarray, alpha: float
) -> tuple[bool | None, list[dict[str, Any]], list[str]]:
    """The monitoring detectors over the whole batch against the model's reference profile."""
    from edgeloop.monitoring.profile import ProfileError, ReferenceProfile
    from edgeloop.monitoring.scan import ScanOptions, Window, run_detectors

    try:
        profile = ReferenceProfile.load(model_dir)
    except ProfileError:
        return (
            None,
            [],
            ["the model has no reference profile: no drift report (stage it like a trained model)"],
        )
    window = Window([], probs, emb, stats, list(range(len(stats))))
    results = run_detectors(profile, window, ScanOptions(alpha=alpha))
    return any(r.is_drift for r in results), [r.as_dict() for r in results], []


# -- the whole run ------------------------------------------------------------------------------------------------
def run_batch(
    settings: Settings,
    container: str,
    prefix: str,
    model: str,
    out: str,
    shard_size: int = 256,
    progress: bool = False,
    on_shard: Callable[[ShardResult], None] | None = None,
) -> BatchSummary:
    """Plan (or resume), score every unfinished shard, summarize. ``progress``: a progress bar on stderr."""
    from tqdm import tqdm

    from edgeloop.core.blob import BlobStore

    store = BlobStore.from_settings(settings)
    plan = plan_batch(settings, container, prefix, model, out, shard_size, store=store)
    with tqdm(total=plan.images, unit="img", desc="scoring", disable=not progress) as bar:

        def step(r: ShardResult) -> None:
            bar.update(r.images)
            if on_shard is not None:
                on_shard(r)

        results = score_shards(settings, plan, progress=step, store=store)
    return summarize_batch(settings, plan, results, store=store)


# -- the pipeline's steps (thin KFP wrappers in edgeloop.pipelines.batch_pipeline call these) -----------------------
def plan_task(
    container: str, prefix: str, model: str, out: str, shard_size: int, config_file: str
) -> list[int]:
    """The shard indices of the run's plan (one ParallelFor iteration each)."""
    from edgeloop.pipelines.tasks import settings_for

    plan = plan_batch(settings_for(config_file), container, prefix, model, out, shard_size)
    log.info("%d images in %d shards, model digest %s", plan.images, len(plan.shards), plan.model_digest[:12])
    return [s.index for s in plan.shards]


def score_task(
    container: str,
    prefix: str,
    model: str,
    out: str,
    shard_size: int,
    shard: int,
    config_file: str,
    metrics: Any,
) -> int:
    """Score one shard (nothing when an earlier run finished it); returns the images it holds."""
    from edgeloop.pipelines.tasks import _persist, settings_for

    settings = settings_for(config_file)
    plan = plan_batch(settings, container, prefix, model, out, shard_size)
    (r,) = score_shards(settings, plan, [int(shard)])  # KFP hands loop items over as JSON numbers
    for key in ("images", "scored", "failed", "seconds"):
        metrics.log_metric(key, float(getattr(r, key)))
    metrics.log_metric("skipped", float(r.skipped))
    _persist(metrics)
    return r.images


def summarize_task(
    container: str,
    prefix: str,
    model: str,
    out: str,
    shard_size: int,
    shard_images: list[int],
    config_file: str,
    summary: Any,
    metrics: Any,
) -> bool:
    """The run's summary (to blob storage and as an artifact) and its metrics; returns whether it drifted."""
    from edgeloop.pipelines.tasks import _persist, settings_for

    settings = settings_for(config_file)
    plan = plan_batch(settings, container, prefix, model, out, shard_size)
    s = summarize_batch(settings, plan)
    Path(summary.path).parent.mkdir(parents=True, exist_ok=True)
    Path(summary.path).write_text(json.dumps(s.as_dict(), indent=1))
    summary.metadata.update({"out": s.out, "model_digest": s.model_digest, "images": s.images})
    for key in ("images", "scored", "failed", "skipped_blobs"):
        metrics.log_metric(key, float(getattr(s, key)))
    for label, n in s.counts.items():
        metrics.log_metric(f"count.{label}", float(n))
    metrics.log_metric("drift", float(bool(s.drift)))
    _persist(metrics)
    log.info("%s (shards held %d images)", s.text(), int(sum(shard_images)))
    return bool(s.drift)
