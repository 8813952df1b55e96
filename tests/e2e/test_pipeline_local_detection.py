"""The detection loop through the same pipeline, locally: a RectangleLabels project in the real Label
Studio -> DDP training of a detector -> ONNX with its post-processing and parity -> staging through the
real server (mAP with its interval) -> the detection gate -> auto-approval (signed) -> a verified
champion of a registered model of its own, whose server answers boxes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

PROJECT = "edgeloop-detection-e2e"
MODEL = "edgeloop-detection-e2e"
SMALL = {
    "project": PROJECT,
    "epochs": "2",
    "image_size": "96",
    "split_fractions": "0.5,0.2,0.3",
    "latency_requests": "20",
    # a 2-epoch detector on 36 images finds little: the test checks the loop, not the model
    # (its ~20 test images are also below the gate's evidence bar, lowered here on purpose)
    "min_eval_images": "0",
    "min_map_50": "0",
    "min_class_recall": "0",
    "max_latency_p95_ms": "5000",
}


@pytest.fixture(scope="module")
def detection_sample(tmp_path_factory):
    from edgeloop.local.sample_data import generate_detection_dataset

    out = tmp_path_factory.mktemp("det-e2e")
    generate_detection_dataset(out, images=72, seed=5, size=96)
    return out


def test_a_detection_project_trains_gates_and_serves_a_detector(stack_settings, detection_sample, tmp_path):
    from edgeloop.core.model_card import ModelCard
    from edgeloop.local.seed import seed_directory
    from edgeloop.pipelines import registry
    from edgeloop.serving.launcher import running_server

    seed_directory(stack_settings, detection_sample, source="det-e2e", project_title=PROJECT, progress=False)
    params = [
        a for k, v in {**SMALL, "gitops_dir": str(tmp_path / "gitops")}.items() for a in ("-p", f"{k}={v}")
    ]
    env = {
        **os.environ,
        "EDGELOOP_STATE_DIR": str(stack_settings.state_dir),
        "EDGELOOP_MLFLOW__REGISTERED_MODEL": MODEL,
    }
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeloop.cli",
            "pipeline",
            "run",
            "--local",
            "--auto-approve",
            "--json",
            *params,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    outcome = json.loads(r.stdout)
    assert outcome["succeeded"] and outcome["gate_passed"] and outcome["decision"] == "approved", outcome
    train = outcome["tasks"]["train-model"]["outputs"]
    assert 0.0 <= train["val_score"] <= 1.0  # the detector's validation mAP@0.5

    settings = stack_settings.model_copy(
        update={"mlflow": stack_settings.mlflow.model_copy(update={"registered_model": MODEL})}
    )
    version = outcome["version"]
    assert registry.champion_version(settings) == version
    statement = registry.verify_version(settings, registry.CHAMPION).require("served by the test")
    assert statement.decision == "approved" and statement.mode == "auto"

    report = registry.download_evaluation(settings, version)
    assert type(report).__name__ == "DetectionReport"
    assert report.n >= 15 and report.boxes > 0 and report.latency is not None and report.parity is not None
    assert report.parity.agreement == pytest.approx(1.0) or report.precision == "int8"
    low, high = report.estimate("map_50").low, report.estimate("map_50").high
    assert low <= report.map_50 <= high
    tags = registry.version_tags(settings, version)
    assert tags[f"{registry.GATE_RULE_PREFIX}min_map_50"].startswith("pass: mAP@0.5 ")
    assert tags[f"{registry.GATE_RULE_PREFIX}no_regression_vs_champion"].startswith("pass: no champion yet")
    c = registry.client(settings)
    metrics = c.get_run(c.get_model_version(MODEL, version).run_id).data.metrics
    assert {"map_50", "map_50.ci95_low", "map_50_95", "image_accuracy", "latency_p95_ms"} <= set(metrics)
    print(f"\ndetection champion v{version}: {report.headline()}, precision {report.precision}")

    model_dir = registry.download_version(settings, version, tmp_path / "champion")
    card = ModelCard.load(model_dir)
    assert card.task == "detection" and card.architecture == "fasterrcnn_tiny_fpn"
    assert card.precision.value == report.precision
    image = next(iter(sorted(detection_sample.rglob("*.png"))))
    with running_server([model_dir]) as server, server.rest_client(card.name) as client:
        pred = client.infer_images([image.read_bytes()], parameters={"score_threshold": 0.0})
    assert pred.detections is not None and len(pred.detections) == 1
    for d in pred.detections[0]:
        assert d["label"] in card.labels and 0.0 <= d["score"] <= 1.0
        assert 0 <= d["x"] <= 96 and 0 <= d["y"] <= 96 and d["width"] > 0 and d["height"] > 0
    assert (tmp_path / "gitops").exists()
