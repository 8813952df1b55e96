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


def run_demo(
    settings: Settings,
    *,
    params: dict[str, Any] | None = None,
    per_class: int = DEMO_PER_CLASS,
    serve_seconds: float = 0.0,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the loop end to end; returns what it printed as a dict (URLs, version, prediction).

    ``serve_seconds`` > 0 keeps the champion's server up that long so you can try it (0: stop at once).
    """
    import time

    from edgeloop.local.sample_data import generate_dataset
    from edgeloop.local.seed import seed_directory
    from edgeloop.local.stack import Stack
    from edgeloop.pipelines import registry
    from edgeloop.pipelines.runner import run_local

    echo("1/4 starting the local stack (Azurite, MLflow, Label Studio, Mosquitto)")
    Stack(settings).up(progress=echo)
    sample = settings.state_dir / "sample" / f"demo-{per_class}"  # its own folder: never a smaller sample
    if not (sample / "metadata.jsonl").exists():
        generate_dataset(sample, per_class=per_class, seed=0)
    echo("2/4 seeding blob storage and Label Studio with the sample images and their labels")
    seed_directory(settings, sample, source="sample", progress=False)

    echo("3/4 running the training pipeline locally (auto-approved; recorded as such)")
    outcome = run_local(settings, {**DEMO_PARAMS, **(params or {}), "auto_approve": True})
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
            i = int(pred.probabilities[0].argmax())
            result |= {
                "endpoint": f"{server.rest_url}/v2/models/{name}/infer",
                "sample_image": str(image),
                "sample_label": image.parent.name,
                "prediction": {
                    "label": pred.labels[0] if pred.labels else str(i),
                    "score": float(pred.probabilities[0][i]),
                },
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
                acc = report.estimate("accuracy")
                line = f"Champion v{version}: test accuracy " + (
                    acc.text(3, what="held-out images")
                    if acc
                    else f"{report.accuracy:.3f} on {report.n} held-out images"
                )
                if report.latency:
                    line += f", p95 latency {report.latency.p95_ms:.1f} ms (n={report.latency.n} requests)"
                echo(line)
                result["test_accuracy"] = report.accuracy
                result["test_images"] = report.n
                if acc:
                    result["test_accuracy_ci95"] = [acc.low, acc.high]
            echo(f"Sample prediction: {image.parent.name}/{image.name} -> {json.dumps(result['prediction'])}")
            if serve_seconds > 0:
                echo(f"serving for {serve_seconds:.0f} s; Ctrl-C to stop")
                try:
                    time.sleep(serve_seconds)
                except KeyboardInterrupt:
                    pass
    return result
