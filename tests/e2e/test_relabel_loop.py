"""One round of the relabel loop on the real stack, with a small configuration: the served champion
meets a shifted site, the scan queues its images, a labeler answers them in Label Studio, and the next
pipeline run trains on exactly those images (no duplicates) and reports its accuracy on them.
The full multi-round measurement is benchmarks/relabel_loop.py."""

from __future__ import annotations

import uuid

import pytest

from edgeloop.testing.loop import LoopConfig, RelabelLoop

pytestmark = pytest.mark.slow

# a 2-epoch model on 60 training images: the mechanics are tested, not the model's quality (the gate's
# evidence bar and floors are lowered on purpose; the benchmark runs the demo's real thresholds)
SMALL = {
    "epochs": 2,
    "latency_requests": 40,
    "min_eval_images": 0,
    "min_accuracy": 0.0,
    "min_class_recall": 0.0,
    "max_ece": 1.0,
    "max_latency_p95_ms": 2000.0,
}


def test_answered_relabel_tasks_become_the_next_runs_training_data(stack_settings, tmp_path):
    tag = uuid.uuid4().hex[:8]
    settings = stack_settings.model_copy(
        update={
            "labelstudio": stack_settings.labelstudio.model_copy(update={"project_title": f"loop-{tag}"}),
            "mlflow": stack_settings.mlflow.model_copy(update={"registered_model": f"loop-{tag}"}),
        }
    )
    config = LoopConfig(per_class=30, traffic_per_class=10, eval_per_class=10, params=SMALL, size=64)
    loop = RelabelLoop(settings, tmp_path / "loop", config)

    first = loop.bootstrap()
    assert first.champion == first.candidate and first.dataset_images == 4 * config.per_class

    second = loop.round(1)
    print(f"\nround 0: {first.as_dict()}\nround 1: {second.as_dict()}")
    assert second.sent == 40 and second.drift
    assert 0 < second.queued <= config.budget and second.answered == second.queued
    # the next run's dataset holds the seeded images plus exactly the answered ones, each once
    assert second.dataset_images == first.dataset_images + second.answered
    assert second.dataset_unique == second.dataset_images
    # the candidate's evaluation reports its accuracy on the relabeled (shifted-site) test images
    sl = second.candidate_relabel_slice
    assert sl is not None and sl.n >= 1 and 0.0 <= sl.low <= sl.value <= sl.high <= 1.0
    assert second.gate_passed and second.decision == "approved" and second.champion == second.candidate
    assert second.shifted.n == second.in_distribution.n == 4 * config.eval_per_class
