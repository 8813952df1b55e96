"""The whole loop on the sample data, for `edgeloop demo` / `make demo`.

stack up -> seed the sample data -> pipeline run (local, auto-approved) -> serve the champion
-> print where to look and one sample prediction.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.components.defaults import format_fractions

if TYPE_CHECKING:
    from edgeloop.core.config import Settings

# The sample the demo trains on: 250 seeded images per class (1,000), split half for training and a
# quarter each for validation and test, so that each evaluation split holds ~250 images (>= 200,
# the gate's min_eval_images: at 250 a 95 % interval of an accuracy near 0.97 is about +-2 points).
DEMO_PER_CLASS = 250
DEMO_SPLIT_FRACTIONS = (0.5, 0.25, 0.25)

# What the demo sets beyond the pipeline's defaults. It trains at the training defaults
# (edgeloop.components.defaults.TRAINING); the gate keeps real thresholds and its evidence bar
# (GATE.min_eval_images), so the demo is judged like any run.
DEMO_PARAMS: dict[str, Any] = {
    "split_fractions": format_fractions(DEMO_SPLIT_FRACTIONS),
    "min_accuracy": 0.9,
    "min_class_recall": 0.8,
}

# `make demo TASK=detection`: 560 seeded images at 192 px with 0-3 defects each, split 0.45 / 0.1 /
# 0.45, so ~250 are held out (>= 200, the gate's evidence bar); the detector trains at the detection
# defaults (edgeloop.components.defaults.DETECTION: fasterrcnn_tiny_fpn, 15 epochs). Its project and
# registered model are its own: a detector never replaces the classification champion.
DEMO_DETECTION_IMAGES = 560
DEMO_DETECTION_PROJECT = "edgeloop-detection"
DEMO_DETECTION_MODEL = "edgeloop-detection"
DEMO_DETECTION_PARAMS: dict[str, Any] = {
    "project": DEMO_DETECTION_PROJECT,
    "split_fractions": format_fractions((0.45, 0.1, 0.45)),
    "min_map_50": 0.8,
    "min_class_recall": 0.7,
}
TASKS = ("classification", "detection")


def _sample(settings: Settings, task: str, per_class: int, images: int) -> Path:
    """The demo's sample for ``task`` (generated once; its own folder, never a smaller sample)."""
    from edgeloop.local.sample_data import generate_dataset, generate_detection_dataset

    if task == "detection":
        sample = settings.state_dir / "sample" / f"demo-detection-{images}"
        if not (sample / "metadata.jsonl").exists():
            generate_detection_dataset(sample, images=images, seed=0, progress=True)
        return sample
    sample = settings.state_dir / "sample" / f"demo-{per_class}"
    if not (sample / "metadata.jsonl").exists():
        generate_dataset(sample, per_class=per_class, seed=0)
    return sample


def demo_settings(settings: Settings, task: str) -> Settings:
    """The settings the demo of ``task`` runs with: a detection demo's project and registered model."""
    if task != "detection":
        return settings
    return settings.model_copy(
        update={
            "mlflow": settings.mlflow.model_copy(update={"registered_model": DEMO_DETECTION_MODEL}),
            "labelstudio": settings.labelstudio.model_copy(update={"project_title": DEMO_DETECTION_PROJECT}),
        }
    )


def run_demo(
    settings: Settings,
    *,
    params: dict[str, Any] | None = None,
    per_class: int = DEMO_PER_CLASS,
    task: str = "classification",
    images: int = DEMO_DETECTION_IMAGES,
    serve_seconds: float = 0.0,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the loop end to end; returns what it printed as a dict (URLs, version, prediction).

    ``task``: ``classification`` (``per_class`` images per class) or ``detection`` (``images`` images
    with boxes, in a RectangleLabels project and a registered model of its own). ``serve_seconds`` > 0
    keeps the champion's server up that long so you can try it (0: stop at once).
    """
    import time

    from edgeloop.local.seed import seed_directory
    from edgeloop.local.stack import Stack
    from edgeloop.pipelines import registry
    from edgeloop.pipelines.runner import run_local

    if task not in TASKS:
        raise ValueError(f"task {task!r}: choose one of {', '.join(TASKS)}")
    settings = demo_settings(settings, task)
    echo("1/4 starting the local stack (Azurite, MLflow, Label Studio, Mosquitto)")
    Stack(settings).up(progress=echo)
    sample = _sample(settings, task, per_class, images)
    echo(
        f"2/4 seeding blob storage and Label Studio with the sample images and their {'boxes' if task == 'detection' else 'labels'}"
    )
    seed_directory(
        settings, sample, source="sample", project_title=settings.labelstudio.project_title, progress=False
    )

    echo("3/4 running the training pipeline locally (auto-approved; recorded as such)")
    defaults = DEMO_PARAMS
    if task == "detection":  # its release beside the classifier's, not over it
        defaults = {**DEMO_DETECTION_PARAMS, "gitops_dir": str(settings.state_dir / "gitops" / "detection")}
    outcome = run_local(settings, {**defaults, **(params or {}), "auto_approve": True})
    echo(outcome.summary())
    if not outcome.succeeded or not outcome.deployed_to:
        from edgeloop.core.errors import EdgeloopError

        raise EdgeloopError(
            f"the demo's pipeline run did not deploy a champion: "
            f"{outcome.cause or 'the gate rejected the candidate'}; see {outcome.run_dir}"
        )

    echo("4/4 serving the champion")
    import tempfile

    from edgeloop.serving.launcher import running_server

    version = registry.champion_version(settings)
    assert version is not None
    verified = registry.verify_version(settings, registry.CHAMPION)
    statement = verified.require("served by the demo")
    echo(
        f"champion v{version} verified: {statement.decision} by {statement.approver} ({statement.mode}), "
        f"model digest {statement.model_digest[:12]}... (`edgeloop registry verify "
        f"{settings.mlflow.registered_model} champion`)"
    )
    result: dict[str, Any] = {
        "mlflow": settings.mlflow_tracking_uri(),
        "labelstudio": settings.labelstudio_url(),
        "version": version,
        "pipeline_run": outcome.run_name,
        "pipeline_seconds": outcome.seconds,
        "gitops": outcome.deployed_to,
        "approval": {
            "approver": statement.approver,
            "mode": statement.mode,
            "model_digest": statement.model_digest,
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = registry.download_version(settings, version, Path(tmp))
        from edgeloop.core.model_card import ModelCard

        name = ModelCard.load(model_dir).name
        image = next(p for p in sorted(sample.rglob("*.png")))
        with running_server([model_dir]) as server, server.rest_client(name) as client:
            pred = client.infer_images([image.read_bytes()])
            result |= {
                "endpoint": f"{server.rest_url}/v2/models/{name}/infer",
                "sample_image": str(image),
                "prediction": _answer(pred, image),
            }
            report = registry.download_evaluation(settings, version)
            echo("")
            echo(
                f"MLflow (model registry, evidence):  {result['mlflow']}/#/models/{settings.mlflow.registered_model}"
                f"/versions/{version}"
            )
            echo(f"Label Studio (labels, relabeling):  {result['labelstudio']}")
            echo(f"Champion endpoint (OIP v2 REST):    {result['endpoint']}")
            echo(f"Deployment manifests (GitOps):      {outcome.deployed_to}")
            if report is not None:
                result |= _figures(report)
                line = f"Champion v{version} on {report.n} held-out images: {report.headline()}"
                if report.latency:
                    line += f", p95 latency {report.latency.p95_ms:.1f} ms (n={report.latency.n} requests)"
                echo(line)
            echo(f"Sample prediction: {image.parent.name}/{image.name} -> {json.dumps(result['prediction'])}")
            if serve_seconds > 0:
                echo(f"serving for {serve_seconds:.0f} s; Ctrl-C to stop")
                try:
                    time.sleep(serve_seconds)
                except KeyboardInterrupt:
                    pass
    return result


def _answer(pred: Any, image: Path) -> Any:
    """The server's answer for the sample image: its detections, or its label and score."""
    if pred.detections is not None:
        return pred.detections[0]
    i = int(pred.probabilities[0].argmax())
    return {
        "label": pred.labels[0] if pred.labels else str(i),
        "score": float(pred.probabilities[0][i]),
        "true_label": image.parent.name,
    }


def _figures(report: Any) -> dict[str, Any]:
    """The champion's headline figures, with their intervals, for the demo's result."""
    name = "map_50" if getattr(report, "task", "") == "detection" else "accuracy"
    e = report.estimate(name)
    out: dict[str, Any] = {f"test_{name}": getattr(report, name), "test_images": report.n}
    if e:
        out[f"test_{name}_ci95"] = [e.low, e.high]
    return out
