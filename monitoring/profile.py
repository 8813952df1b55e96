"""The reference profile: what "normal" looks like for one model version.

Built once at training time from held-out images (the validation split: images the
model did not fit, so confidences are not inflated) and stored next to the model as
``reference_profile.npz``. Drift scans and per-image flags compare served traffic with it.

It holds:

* a seeded subsample of reference embeddings (for MMD and kNN out-of-distribution scores)
  and their mean/std;
* the confidence (top-1 probability) and margin (top-1 minus top-2) of every reference image;
* image statistics per image: brightness, contrast, sharpness (variance of the Laplacian)
  and the three colour channel means;
* thresholds derived from them: low-confidence and small-margin quantiles, and the
  kNN distance above which an image counts as out of distribution.

The out-of-distribution threshold is calibrated on held-out data at a stated false-flag
rate (``ood_false_flag_rate``, default 5 %): the reference images are split into
``calibration_folds`` folds, each fold is scored against the kNN index of the others (so no
image is scored against itself), and the threshold is the ``1 - rate`` quantile of those
scores. Distances are measured on embeddings standardised with the reference's mean and
standard deviation (no single wide feature dominates). The kNN index needs at least
:data:`MIN_REFERENCE_IMAGES` images to be stable; fewer still build a profile, with a warning
and ``profile.calibration["sufficient"] = False`` (the scan says so).

A detector's profile (``task`` detection) has no embedding output: its image statistics take the
embeddings' place (kNN out-of-distribution flag, MMD); per image it keeps the top
detection score as the confidence, the distance of its least certain detection from the operating
threshold as the margin (:func:`detection_summary`) and the number of detections at the threshold
(0, 1, 2, 3+) as the "predicted class", so the same drift tests watch confidence, box counts and
image statistics, and the small-margin flag marks images with a detection the model is unsure of.

For the training / pipeline step, one call::

    from edgeloop.monitoring.profile import build_reference_profile
    build_reference_profile(model_dir, val_image_paths)   # writes model_dir/reference_profile.npz

The model is opened through :func:`edgeloop.core.model_loader.open_model`, so its card must
already record the digests of the files it lists; afterwards, refresh them
(``ModelCard.with_digests``) so the profile's digest is in the card too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PROFILE_FILE = "reference_profile.npz"
MIN_REFERENCE_IMAGES = 200  # below this, kNN scores and the MMD reference are too noisy to trust
IMAGE_STAT_NAMES = ("brightness", "contrast", "sharpness", "mean_r", "mean_g", "mean_b")
STATS_SIZE = 128  # default side images are resized to before statistics (profiles use the model's input size)


NO_EMBEDDING = (
    "the model has no embedding output (an imported model without --embedding): embedding MMD "
    "and the out-of-distribution flag need one; image statistics, confidence and predictions are monitored"
)


#: A detector's "classes" in its profile: the number of detections at the operating threshold.
BOX_COUNT_LABELS = ["0 boxes", "1 box", "2 boxes", "3+ boxes"]
DETECTION = "detection"


def detection_summary(
    per_image: Sequence[Sequence[dict[str, Any]]], threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A detector's answers (per image: dicts with ``score``) -> (confidence: the top score, 0
    without a detection; margin: min |score - threshold| / max(threshold, 1 - threshold) over the
    image's detections, 1 without any; box-count bucket: detections at the threshold, capped at 3)."""
    scale = max(threshold, 1.0 - threshold)
    conf, margin, count = [], [], []
    for dets in per_image:
        scores = [float(d["score"]) for d in dets]
        conf.append(max(scores, default=0.0))
        margin.append(min((abs(x - threshold) / scale for x in scores), default=1.0))
        count.append(min(sum(x >= threshold for x in scores), len(BOX_COUNT_LABELS) - 1))
    return np.asarray(conf, float), np.asarray(margin, float), np.asarray(count, int)


class ProfileError(FileNotFoundError):
    """A model directory has no (readable) reference profile: build one at training time."""


def image_stats(image: Any, size: int = STATS_SIZE) -> np.ndarray:
    """Brightness, contrast, sharpness (Laplacian variance), mean R/G/B of one image, on a 0-255 scale.

    The image is first resized to ``size`` x ``size`` (bilinear, as the model's preprocessing
    does) so sharpness does not depend on the resolution it was sent at. Profiles use the
    model's input size: the model server logs images at that size.
    """
    from edgeloop.monitoring.model import to_rgb_array

    rgb = _resize(to_rgb_array(image), size).astype(np.float32)
    gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    lap = -4.0 * gray[1:-1, 1:-1] + gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:]
    means = rgb.reshape(-1, 3).mean(axis=0)
    return np.array([gray.mean(), gray.std(), lap.var(), *means], dtype=np.float64)


def _resize(hwc: np.ndarray, size: int) -> np.ndarray:
    if hwc.shape[0] == size and hwc.shape[1] == size:
        return hwc
    from PIL import Image

    return np.asarray(Image.fromarray(hwc).resize((size, size), Image.Resampling.BILINEAR))


def image_stats_batch(images: Iterable[Any], size: int = STATS_SIZE) -> np.ndarray:
    rows = [image_stats(im, size) for im in images]
    return np.vstack(rows) if rows else np.zeros((0, len(IMAGE_STAT_NAMES)))


def confidence_and_margin(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        return np.zeros(0), np.zeros(0)
    top2 = np.sort(p, axis=1)[:, -2:] if p.shape[1] > 1 else np.hstack([np.zeros((len(p), 1)), p])
    return top2[:, 1], top2[:, 1] - top2[:, 0]


def knn_distances(
    queries: np.ndarray, reference: np.ndarray, k: int, exclude_self: bool = False
) -> np.ndarray:
    """Mean Euclidean distance of each query to its ``k`` nearest reference embeddings."""
    q = np.asarray(queries, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if len(q) == 0:
        return np.zeros(0)
    d2 = (q * q).sum(1)[:, None] + (r * r).sum(1)[None, :] - 2.0 * q @ r.T
    d = np.sqrt(np.maximum(d2, 0.0))
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    k = max(1, min(k, r.shape[0] - int(exclude_self)))
    return np.sort(d, axis=1)[:, :k].mean(axis=1)


@dataclass
class ReferenceProfile:
    """Reference statistics of one model version (see the module docstring)."""

    model: str
    version: str | None
    labels: list[str]
    embeddings: np.ndarray  # [M, D] subsample
    confidence: np.ndarray  # [N]
    margin: np.ndarray  # [N]
    image_stats: np.ndarray  # [N, len(IMAGE_STAT_NAMES)]
    predicted: np.ndarray  # [N] predicted class index
    stats_size: int = STATS_SIZE
    knn_k: int = 5
    ood_quantile: float = 0.95
    ood_threshold: float = 0.0
    low_confidence_threshold: float = 0.0
    small_margin_threshold: float = 0.0
    n_images: int = 0
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    # standardisation of embeddings before kNN (None: raw distances, profiles of format 1)
    embedding_center: np.ndarray | None = None
    embedding_scale: np.ndarray | None = None
    calibration: dict[str, Any] = field(default_factory=dict)  # how ood_threshold was calibrated
    task: str = "classification"  # detection: see the module docstring
    score_threshold: float = 0.5  # a detector's operating threshold

    @property
    def ood_false_flag_rate(self) -> float:
        return 1.0 - self.ood_quantile

    @property
    def embedding_mean(self) -> np.ndarray:
        return self.embeddings.mean(axis=0)

    @property
    def embedding_std(self) -> np.ndarray:
        return self.embeddings.std(axis=0)

    def class_frequencies(self) -> dict[str, float]:
        counts = np.bincount(self.predicted.astype(int), minlength=len(self.labels))
        return {lbl: float(c) / max(1, counts.sum()) for lbl, c in zip(self.labels, counts, strict=True)}

    @property
    def has_embeddings(self) -> bool:
        """False for a model without an embedding output: the embedding detectors are off."""
        return self.embeddings.ndim == 2 and self.embeddings.shape[0] > 0 and self.embeddings.shape[1] > 0

    def ood_scores(self, embeddings: np.ndarray) -> np.ndarray:
        """kNN distance of each embedding to the reference embeddings (higher: less familiar);
        zeros (never out of distribution) when the model has no embeddings."""
        if not self.has_embeddings:
            return np.zeros(len(embeddings))
        return knn_distances(self._standardise(embeddings), self._standardise(self.embeddings), self.knn_k)

    def _standardise(self, embeddings: np.ndarray) -> np.ndarray:
        e = np.asarray(embeddings, dtype=np.float64)
        if self.embedding_center is None or self.embedding_scale is None or e.size == 0:
            return e
        return (e - self.embedding_center) / self.embedding_scale

    def meta(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "labels": self.labels,
            "knn_k": self.knn_k,
            "stats_size": self.stats_size,
            "ood_quantile": self.ood_quantile,
            "ood_threshold": self.ood_threshold,
            "low_confidence_threshold": self.low_confidence_threshold,
            "small_margin_threshold": self.small_margin_threshold,
            "n_images": self.n_images,
            "created_at": self.created_at,
            "image_stat_names": list(IMAGE_STAT_NAMES),
            "calibration": self.calibration,
            "task": self.task,
            "score_threshold": self.score_threshold,
            "format": 2,
        }

    def save(self, path: Path) -> Path:
        """Write ``path`` (a model directory, or a ``.npz`` file path)."""
        path = Path(path)
        if path.is_dir():
            path = path / PROFILE_FILE
        arrays: dict[str, Any] = {
            "embeddings": self.embeddings.astype(np.float32),
            "confidence": self.confidence,
            "margin": self.margin,
            "image_stats": self.image_stats,
            "predicted": self.predicted.astype(np.int32),
            "meta": np.array(json.dumps(self.meta())),
        }
        if self.embedding_center is not None and self.embedding_scale is not None:
            arrays |= {"embedding_center": self.embedding_center, "embedding_scale": self.embedding_scale}
        with open(path, "wb") as fh:  # np.savez adds ".npz" to names without it; a handle keeps ours
            np.savez_compressed(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: Path) -> ReferenceProfile:
        path = Path(path)
        if path.is_dir():
            path = path / PROFILE_FILE
        if not path.exists():
            raise ProfileError(
                f"no reference profile at {path}: build it at training time with "
                "edgeloop.monitoring.profile.build_reference_profile(model_dir, validation_images)"
            )
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return cls(
                model=meta["model"],
                version=meta["version"],
                labels=meta["labels"],
                embeddings=z["embeddings"].astype(np.float64),
                confidence=z["confidence"],
                margin=z["margin"],
                image_stats=z["image_stats"],
                predicted=z["predicted"],
                stats_size=meta.get("stats_size", STATS_SIZE),
                knn_k=meta["knn_k"],
                ood_quantile=meta["ood_quantile"],
                ood_threshold=meta["ood_threshold"],
                low_confidence_threshold=meta["low_confidence_threshold"],
                small_margin_threshold=meta["small_margin_threshold"],
                n_images=meta["n_images"],
                created_at=meta["created_at"],
                embedding_center=z["embedding_center"] if "embedding_center" in z.files else None,
                embedding_scale=z["embedding_scale"] if "embedding_scale" in z.files else None,
                calibration=meta.get("calibration", {}),
                task=meta.get("task", "classification"),
                score_threshold=meta.get("score_threshold", 0.5),
            )


def profile_from_outputs(
    model: str,
    version: str | None,
    labels: Sequence[str],
    probabilities: np.ndarray,
    embeddings: np.ndarray,
    stats: np.ndarray,
    max_embeddings: int = 1000,
    knn_k: int = 5,
    ood_false_flag_rate: float = 0.05,
    flag_quantile: float = 0.05,
    seed: int = 0,
    stats_size: int = STATS_SIZE,
    calibration_folds: int = 5,
) -> ReferenceProfile:
    """A profile from model outputs and image statistics already computed (no model run).

    ``ood_false_flag_rate``: the share of in-distribution images the out-of-distribution flag
    may flag, calibrated by ``calibration_folds``-fold cross-fitting (see the module docstring).
    ``flag_quantile``: the same for the low-confidence and the small-margin flags.
    """
    n = len(probabilities)
    if n < 10:
        raise ValueError(f"a reference profile needs at least 10 images, got {n}")
    conf, margin = confidence_and_margin(probabilities)
    if not 0 < ood_false_flag_rate < 1:
        raise ValueError(f"ood_false_flag_rate must be in (0, 1), got {ood_false_flag_rate}")
    common: dict[str, Any] = {
        "model": model,
        "version": version,
        "labels": list(labels),
        "confidence": conf,
        "margin": margin,
        "image_stats": np.asarray(stats, dtype=np.float64),
        "predicted": np.asarray(probabilities).argmax(1),
        "stats_size": stats_size,
        "low_confidence_threshold": float(np.quantile(conf, flag_quantile)),
        "small_margin_threshold": float(np.quantile(margin, flag_quantile)),
        "n_images": n,
    }
    if np.asarray(embeddings).size == 0:
        log.warning("reference profile without embeddings: %s", NO_EMBEDDING)
        off = {"method": "off", "reason": NO_EMBEDDING, "sufficient": False}
        return ReferenceProfile(embeddings=np.zeros((0, 0)), calibration=off, knn_k=knn_k, **common)
    return ReferenceProfile(
        **common,
        **_knn_fields(embeddings, max_embeddings, knn_k, ood_false_flag_rate, seed, calibration_folds),
    )


def _knn_fields(
    embeddings: np.ndarray,
    max_embeddings: int,
    knn_k: int,
    ood_false_flag_rate: float,
    seed: int,
    calibration_folds: int,
    what: str = "embeddings",
) -> dict[str, Any]:
    """The kNN reference (a seeded subsample of ``embeddings``, standardised) and its
    out-of-distribution threshold, cross-fitted at ``ood_false_flag_rate``."""
    n = len(embeddings)
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(n, size=min(n, max_embeddings), replace=False))
    emb = np.asarray(embeddings, dtype=np.float64)[keep]
    center = emb.mean(axis=0)
    scale = np.maximum(emb.std(axis=0), 1e-6 * max(float(emb.std()), 1e-12))
    z = (emb - center) / scale
    folds = max(2, min(calibration_folds, len(z)))
    fold = rng.permutation(len(z)) % folds
    held_out = np.zeros(len(z))
    for f in range(folds):  # each fold scored against the index of the others: held-out scores
        held_out[fold == f] = knn_distances(z[fold == f], z[fold != f], knn_k)
    sufficient = len(emb) >= MIN_REFERENCE_IMAGES
    if not sufficient:
        log.warning(
            "reference profile from %d images: at least %d held-out images make kNN flags and the "
            "MMD reference stable; pass more (validation plus a held-out calibration split)",
            len(emb),
            MIN_REFERENCE_IMAGES,
        )
    calibration = {
        "method": f"cross-fitted kNN on standardised {what}",
        "folds": folds,
        "n_reference": len(emb),
        "false_flag_rate": ood_false_flag_rate,
        "min_reference": MIN_REFERENCE_IMAGES,
        "sufficient": sufficient,
    }
    ood_quantile = 1.0 - ood_false_flag_rate
    return {
        "embeddings": emb,
        "knn_k": knn_k,
        "ood_quantile": ood_quantile,
        "ood_threshold": float(np.quantile(held_out, ood_quantile)),
        "embedding_center": center,
        "embedding_scale": scale,
        "calibration": calibration,
    }


def build_reference_profile(
    model_dir: Path | str,
    images: Iterable[Any],
    *,
    save: bool = True,
    max_embeddings: int = 1000,
    knn_k: int = 5,
    ood_false_flag_rate: float = 0.05,
    flag_quantile: float = 0.05,
    seed: int = 0,
    calibration_folds: int = 5,
) -> ReferenceProfile:
    """Run the model in ``model_dir`` over ``images`` (paths, PIL images or uint8 HWC arrays) and
    build its :class:`ReferenceProfile`; with ``save`` (default) write ``model_dir/reference_profile.npz``.

    Pass held-out images (validation split, plus a held-out calibration split when the
    validation split is small): at least :data:`MIN_REFERENCE_IMAGES` (200) for stable kNN flags
    and MMD; fewer (at least 10) still build a profile, with a warning. All of them form the kNN
    index; the out-of-distribution threshold is cross-fitted on them at ``ood_false_flag_rate``.
    """
    from edgeloop.core.model_card import ModelCard
    from edgeloop.monitoring.model import ModelRunner, to_rgb_array

    model_dir = Path(model_dir)
    if ModelCard.load(model_dir).task == DETECTION:
        return build_detection_reference_profile(model_dir, images, save=save, flag_quantile=flag_quantile)
    runner = ModelRunner(model_dir)
    arrays = [to_rgb_array(im) for im in images]
    out = runner.run(arrays)
    size = runner.preprocess.size
    stats = image_stats_batch(arrays, size)
    profile = profile_from_outputs(
        runner.card.name,
        runner.card.version,
        runner.card.labels,
        out.probabilities,
        out.embeddings,
        stats,
        max_embeddings=max_embeddings,
        knn_k=knn_k,
        ood_false_flag_rate=ood_false_flag_rate,
        flag_quantile=flag_quantile,
        seed=seed,
        stats_size=size,
        calibration_folds=calibration_folds,
    )
    if save:
        profile.save(model_dir / PROFILE_FILE)
    return profile


def build_detection_reference_profile(
    model_dir: Path | str,
    images: Iterable[Any],
    *,
    save: bool = True,
    flag_quantile: float = 0.05,
    ood_false_flag_rate: float = 0.05,
    seed: int = 0,
) -> ReferenceProfile:
    """A detector's profile (see the module docstring) from held-out ``images``; the small-margin
    threshold is their ``flag_quantile`` quantile, so about that share of in-distribution images
    is flagged for a detection near the operating threshold."""
    from edgeloop.components.detection_runtime import DetectorRunner
    from edgeloop.core.payload_log import LOG_SCORE_FLOOR
    from edgeloop.monitoring.model import to_rgb_array

    model_dir = Path(model_dir)
    runner = DetectorRunner.from_dir(model_dir)
    arrays = [to_rgb_array(im) for im in images]
    if len(arrays) < 10:
        raise ValueError(f"a reference profile needs at least 10 images, got {len(arrays)}")
    found = runner.detect(arrays, threshold=LOG_SCORE_FLOOR)
    threshold = float(runner.card.parity.get("score_threshold", 0.5))
    conf, margin, count = detection_summary([[{"score": d.score} for d in img] for img in found], threshold)
    size = runner.pre.size
    stats = image_stats_batch(arrays, size)
    profile = ReferenceProfile(
        model=runner.card.name,
        version=runner.card.version,
        labels=list(BOX_COUNT_LABELS),
        confidence=conf,
        margin=margin,
        image_stats=stats,
        predicted=count,
        stats_size=size,
        low_confidence_threshold=-1.0,  # a clean tag has no detection: a low top score is no doubt
        small_margin_threshold=float(np.quantile(margin, flag_quantile)),
        n_images=len(arrays),
        task=DETECTION,
        score_threshold=threshold,
        # no embedding output: the image statistics are the space of the kNN out-of-distribution
        # flag and of the MMD test, so a shifted site's images are flagged even when the model is silent
        **_knn_fields(stats, 1000, 5, ood_false_flag_rate, seed, 5, what="image statistics"),
    )
    if save:
        profile.save(model_dir / PROFILE_FILE)
    return profile


def load_reference_profile(model_dir: Path | str) -> ReferenceProfile:
    return ReferenceProfile.load(Path(model_dir))
