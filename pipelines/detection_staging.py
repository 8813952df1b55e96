"""Staging evaluation of a detector through the real model server.

Every held-out test image goes through edgeloop's KServe server (REST, OIP v2, one image per request,
every detection from score 0 up, so that mAP sees the whole ranking); the fp32 reference and the
champion run in-process (:class:`~edgeloop.components.detection_runtime.DetectorRunner`, the server's
own post-processing) on the same images. The result is a :class:`~edgeloop.pipelines.staging.StagingResult`
holding :class:`~edgeloop.pipelines.detection_evaluation.DetectionReport` s and the detection gate's
decision (:func:`~edgeloop.pipelines.gate.evaluate_detection_rules`).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.components.detection_runtime import SCORING_THRESHOLD, DetectorRunner, to_detections, truth_of
from edgeloop.pipelines.detection_evaluation import (
    detection_parity,
    evaluate_detection_predictions,
    render_detection_markdown,
)
from edgeloop.pipelines.gate import GateThresholds, evaluate_detection_rules
from edgeloop.pipelines.staging import (
    StagingError,
    StagingResult,
    TestImage,
    _rgb,
    serve_and_measure,
    test_set_digest,
)

if TYPE_CHECKING:
    from edgeloop.core.config import Settings
    from edgeloop.core.model_card import ModelCard

log = logging.getLogger(__name__)


def _detections(pred: Any) -> list[Any]:
    return to_detections(pred.detections or [[]])[0]


def run_detection_staging(
    settings: Settings | None,
    dataset_dir: Path,
    model_dir: Path,
    card: ModelCard,
    reference_model_dir: Path | None = None,
    thresholds: GateThresholds | None = None,
    *,
    latency_requests: int = 200,
    compare_with_champion: bool = True,
) -> StagingResult:
    from edgeloop.components.dataset import load_rows

    rows = load_rows(Path(dataset_dir), "test")
    if not rows:
        raise StagingError(
            f"the dataset in {dataset_dir} has no test images; label more images "
            "(the held-out split needs images with and without defects)"
        )
    truth = truth_of(rows)
    unknown = sorted({b.label for boxes in truth for b in boxes} - set(card.labels))
    if unknown:
        raise StagingError(
            f"test boxes carry classes the model does not know: {unknown} (model: {card.labels})"
        )
    images = [TestImage((Path(dataset_dir) / r.file).read_bytes(), "", dict(r.metadata or {})) for r in rows]
    ids = [i.id for i in images]
    digest = test_set_digest(images)
    served, latencies = serve_and_measure(
        model_dir,
        images,
        latency_requests,
        read=_detections,
        parameters={"score_threshold": SCORING_THRESHOLD},
    )
    rgb = [_rgb(i.data) for i in images]
    parity = None
    if reference_model_dir is not None:
        reference = DetectorRunner.from_dir(reference_model_dir)
        parity = detection_parity(
            reference.detect(rgb),
            served,
            ids,
            _threshold(card),
            reference.card.precision.value,
            card.precision.value,
        )
    report = evaluate_detection_predictions(
        card.labels,
        truth,
        served,
        image_ids=ids,
        score_threshold=_threshold(card),
        latencies_ms=latencies,
        parity=parity,
        precision=card.precision.value,
        model_digest=card.digest(),
        test_set_digest=digest,
    )
    champion, champion_report, version, problem = None, None, None, ""
    if compare_with_champion and settings is not None:
        champion, version, problem = champion_detections(settings, rgb, card)
        if champion is not None:
            champion_report = evaluate_detection_predictions(
                card.labels,
                truth,
                champion,
                image_ids=ids,
                score_threshold=_threshold(card),
                test_set_digest=digest,
            )
    decision = evaluate_detection_rules(
        report,
        thresholds,
        truth=truth,
        predicted=served,
        champion=champion,
        champion_version=version,
        champion_problem=problem,
    )
    title = f"Staging evaluation of {card.name} ({card.architecture}, detection, {card.precision.value})"
    if version:
        title += f" vs champion v{version}"
    md = render_detection_markdown(report, decision, champion_report, title=title)
    return StagingResult(report, champion_report, version, decision, md)


def _threshold(card: ModelCard) -> float:
    from edgeloop.components.coco_eval import OPERATING_THRESHOLD

    return float(card.parity.get("score_threshold", OPERATING_THRESHOLD))


def champion_detections(
    settings: Settings, rgb: list[Any], card: ModelCard
) -> tuple[list[Any] | None, str | None, str]:
    """The champion's detections on the same images (in-process), its version, and why it cannot be
    compared ("" when it can); (None, None, "") without a champion."""
    from edgeloop.pipelines import registry

    version = registry.champion_version(settings)
    if version is None:
        return None, None, ""
    with tempfile.TemporaryDirectory() as tmp:
        path = registry.download_version(settings, version, Path(tmp))
        runner = DetectorRunner.from_dir(path)
        name = settings.mlflow.registered_model
        if runner.card.task != card.task:
            return (
                None,
                version,
                f"the champion v{version} of '{name}' is a {runner.card.task} model: a detector cannot "
                "replace it (its clients read other outputs). Register detectors under a model of their "
                "own: set mlflow.registered_model (EDGELOOP_MLFLOW__REGISTERED_MODEL) for this project",
            )
        if list(runner.card.labels) != list(card.labels):
            return (
                None,
                version,
                f"the champion v{version} detects {runner.card.labels}, the candidate {card.labels}: "
                "their detections cannot be compared image by image; a change of classes needs a model "
                "of its own (mlflow.registered_model) or a reviewer's judgement outside the gate",
            )
        return runner.detect(rgb), version, ""
