"""Staging evaluation of a candidate through the real model server.

The candidate (chosen precision) is served by edgeloop's KServe server, started
for the evaluation on free local ports; every held-out test image is sent
through it (REST, OIP v2, one image per request, as a camera client would) for
predictions and latency. The fp32 reference and the current champion run
in-process with ONNX Runtime on the same images, for parity and for the
no-regression rule. The result: an :class:`EvaluationReport` for the candidate
(and the champion), the gate's decision and the Markdown evidence report.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeloop.core.errors import EdgeloopError
from edgeloop.pipelines.evaluation import EvaluationReport, evaluate_predictions, load_report, render_markdown
from edgeloop.pipelines.gate import GateDecision, GateThresholds, evaluate_rules

if TYPE_CHECKING:
    from edgeloop.core.config import Settings
    from edgeloop.pipelines.detection_evaluation import DetectionReport

log = logging.getLogger(__name__)


class StagingError(EdgeloopError):
    """The staging evaluation could not run (no test images, the server did not start or answer)."""


@dataclass
class TestImage:
    data: bytes
    label: str
    meta: dict[str, Any]

    @property
    def id(self) -> str:
        """The image's identity in reports: the sha256 of its bytes (its name in the dataset)."""
        import hashlib

        return hashlib.sha256(self.data).hexdigest()


@dataclass
class StagingResult:
    report: EvaluationReport | DetectionReport
    champion_report: EvaluationReport | DetectionReport | None
    champion_version: str | None
    decision: GateDecision
    markdown: str

    def to_json(self) -> str:
        import json

        return json.dumps(
            {
                "report": self.report.model_dump(mode="json"),
                "champion_report": self.champion_report.model_dump(mode="json")
                if self.champion_report
                else None,
                "champion_version": self.champion_version,
                "decision": self.decision.model_dump(mode="json"),
                "markdown": self.markdown,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> StagingResult:
        import json

        d = json.loads(text)
        return cls(
            report=load_report(d["report"]),
            champion_report=load_report(d["champion_report"]) if d["champion_report"] else None,
            champion_version=d["champion_version"],
            decision=GateDecision.model_validate(d["decision"]),
            markdown=d["markdown"],
        )


def load_split_images(dataset_dir: Path, split: str = "test") -> list[TestImage]:
    from edgeloop.components.dataset import load_rows

    dataset_dir = Path(dataset_dir)
    return [
        TestImage((dataset_dir / r.file).read_bytes(), r.label, dict(r.metadata or {}))
        for r in load_rows(dataset_dir, split)
    ]


def test_set_digest(images: Sequence[TestImage]) -> str:
    import hashlib

    h = hashlib.sha256()
    for img in sorted(images, key=lambda i: hashlib.sha256(i.data).hexdigest()):
        h.update(hashlib.sha256(img.data).digest() + img.label.encode())
    return h.hexdigest()


def _rgb(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def predict_in_process(model_dir: Path, images: Sequence[TestImage]) -> np.ndarray:
    """Probabilities of the model in ``model_dir`` (verified and opened by the shared loader)."""
    from edgeloop.monitoring.model import ModelRunner

    return ModelRunner(model_dir).run([_rgb(i.data) for i in images]).probabilities


def _probabilities(pred: Any) -> Any:
    return np.asarray(pred.probabilities[0], dtype=np.float64)


def serve_and_measure(
    model_dir: Path,
    images: Sequence[TestImage],
    latency_requests: int = 200,
    warmup: int = 5,
    *,
    read: Callable[[Any], Any] = _probabilities,
    parameters: dict[str, Any] | None = None,
) -> tuple[Any, list[float]]:
    """Start the real model server on ``model_dir``; return per-image answers (``read`` from each
    response: by default the probabilities, stacked) and request latencies (ms).

    One encoded image per request over REST (OIP v2, binary extension), as a camera client sends them;
    the latencies are what such a client observes, server decode and preprocessing included.
    ``parameters``: the requests' parameters (a detector's ``score_threshold``).
    """
    from edgeloop.core.model_card import ModelCard
    from edgeloop.serving.launcher import ServerStartError, running_server

    name = ModelCard.load(model_dir).name  # the server serves a model under its card's name
    try:
        with running_server([model_dir]) as server, server.rest_client(name) as client:
            for i in range(min(warmup, len(images))):
                client.infer_images([images[i].data], parameters=parameters)
            answers, latencies = [], []
            for k in range(max(latency_requests, len(images))):
                img = images[k % len(images)]
                t0 = time.perf_counter()
                pred = client.infer_images([img.data], parameters=parameters)
                latencies.append((time.perf_counter() - t0) * 1000.0)
                if k < len(images):
                    answers.append(read(pred))
    except ServerStartError as e:
        raise StagingError(f"the staging model server did not start for {model_dir}: {e}") from e
    return (np.stack(answers) if read is _probabilities else answers), latencies


def run_staging_evaluation(
    settings: Settings | None,
    dataset_dir: Path,
    model_dir: Path,
    reference_model_dir: Path | None = None,
    thresholds: GateThresholds | None = None,
    latency_requests: int = 200,
    compare_with_champion: bool = True,
    serve: Callable[..., tuple[np.ndarray, list[float]]] | None = None,
) -> StagingResult:
    """Evaluate the candidate in ``model_dir`` through the model server (and the fp32 reference and the
    champion in-process) on the test split; every model is verified against its card first and a
    model that fails (:class:`~edgeloop.core.errors.IntegrityError`) stops the evaluation."""
    from edgeloop.core.model_loader import verify_model

    model_dir = Path(model_dir)
    card = verify_model(model_dir).card
    if reference_model_dir is not None:
        verify_model(reference_model_dir)  # refused now, not after the server has run
    if card.task == "detection":
        from edgeloop.pipelines.detection_staging import run_detection_staging

        return run_detection_staging(
            settings,
            dataset_dir,
            model_dir,
            card,
            reference_model_dir,
            thresholds,
            latency_requests=latency_requests,
            compare_with_champion=compare_with_champion,
        )
    images = load_split_images(dataset_dir, "test")
    if not images:
        raise StagingError(
            f"the dataset in {dataset_dir} has no test images; label more images "
            "(each class needs a few in the held-out split)"
        )
    unknown = sorted({i.label for i in images} - set(card.labels))
    if unknown:
        raise StagingError(
            f"test images carry labels the model does not know: {unknown} (model: {card.labels})"
        )
    y_true = [card.labels.index(i.label) for i in images]
    metas = [i.meta for i in images]
    ids = [i.id for i in images]
    digest = test_set_digest(images)

    probs, latencies = (serve or serve_and_measure)(model_dir, images, latency_requests)
    reference = predict_in_process(reference_model_dir, images) if reference_model_dir else None
    report = evaluate_predictions(
        card.labels,
        y_true,
        probs,
        metas=metas,
        latencies_ms=latencies,
        reference_probs=reference,
        precision=card.precision.value,
        model_digest=card.digest(),
        test_set_digest=digest,
        image_ids=ids,
    )

    champion_report, champion_version = None, None
    if compare_with_champion and settings is not None:
        champion_report, champion_version = evaluate_champion(
            settings, images, y_true, metas, digest, card.labels
        )
    decision = evaluate_rules(report, champion_report, thresholds)
    title = f"Staging evaluation of {card.name} ({card.architecture}, {card.precision.value})"
    if champion_version:
        title += f" vs champion v{champion_version}"
    md = render_markdown(report, decision, champion_report, title=title)
    return StagingResult(report, champion_report, champion_version, decision, md)


def evaluate_champion(
    settings: Settings,
    images: Sequence[TestImage],
    y_true: Sequence[int],
    metas: Sequence[dict[str, Any]],
    digest: str,
    labels: Sequence[str],
) -> tuple[EvaluationReport | None, str | None]:
    """The current champion on the same test images (in-process), or (None, None) without a champion."""
    from edgeloop.core.model_card import ModelCard
    from edgeloop.pipelines import registry

    version = registry.champion_version(settings)
    if version is None:
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        path = registry.download_version(settings, version, Path(tmp))
        champ_card = ModelCard.load(path)
        if list(champ_card.labels) != list(labels):
            log.warning(
                "champion v%s has labels %s, the candidate %s: comparing shared classes only",
                version,
                champ_card.labels,
                labels,
            )
            keep = [k for k, i in enumerate(images) if i.label in champ_card.labels]
            images = [images[k] for k in keep]
            metas = [metas[k] for k in keep]
            y_true = [champ_card.labels.index(i.label) for i in images]
        probs = predict_in_process(path, images)
        rep = evaluate_predictions(
            champ_card.labels,
            y_true,
            probs,
            metas=metas,
            precision=champ_card.precision.value,
            model_digest=champ_card.digest(),
            test_set_digest=digest,
            image_ids=[i.id for i in images],
        )
    return rep, version


def stage_model(model_dir: Path, out_dir: Path, dataset_dir: Path) -> Path:
    """Copy the candidate to ``out_dir``, record in its card whether the stream may resize in FFmpeg
    (top-1 agreement on the test images, :func:`edgeloop.stream.resize.record_resize_agreement`;
    before the evaluation computes the model digest) and add its monitoring reference profile
    (validation images)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(model_dir, out_dir)
    from edgeloop.core.model_card import ModelCard

    if ModelCard.load(out_dir).task == "detection":
        log.info(
            "a detector: no FFmpeg-resize agreement recorded (the stream keeps the shared preprocessing)"
        )
    else:
        record_stream_resize(out_dir, dataset_dir)
    try:
        from edgeloop.monitoring.profile import build_reference_profile
    except ImportError:  # pragma: no cover - monitoring not installed
        log.warning("monitoring is not available: no reference profile stored with the model")
        return out_dir
    images = load_split_images(dataset_dir, "val")
    if len(images) < 10:
        images += load_split_images(dataset_dir, "train")[: 300 - len(images)]
    build_reference_profile(out_dir, [_rgb(i.data) for i in images[:300]])
    return out_dir


def record_stream_resize(model_dir: Path, dataset_dir: Path) -> None:
    """Write the FFmpeg-resize agreement on the staging (test) images into the model card; without
    test images or PyAV nothing is recorded, and the stream keeps the shared preprocessing."""
    images = load_split_images(dataset_dir, "test")
    if not images:
        return
    from edgeloop.stream.resize import record_resize_agreement

    try:
        record_resize_agreement(model_dir, [_rgb(i.data) for i in images])
    except ImportError as e:  # pragma: no cover - PyAV not installed
        log.warning("no FFmpeg-resize agreement recorded in the model card: %s", e)
