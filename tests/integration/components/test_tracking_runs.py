"""One MLflow run per pipeline run, against the real MLflow: steps nest under it, a cached step's run stays
with the pipeline run that computed it (and is named on the next), a failing step fails the pipeline's run."""

from __future__ import annotations

import uuid

import pytest

from edgeloop.components import tracking


@pytest.fixture()
def settings(stack_settings):
    name = f"tracking-{uuid.uuid4().hex[:8]}"
    return stack_settings.model_copy(
        update={"mlflow": stack_settings.mlflow.model_copy(update={"experiment": name})}
    )


def _children(c, parent) -> dict[str, str]:
    exp = c.get_run(parent).info.experiment_id
    runs = c.search_runs([exp], filter_string=f"tags.`{tracking.PARENT_TAG}` = '{parent}'")
    return {r.data.tags[tracking.STEP_TAG]: r.info.status for r in runs}


def test_steps_nest_under_the_pipeline_run_and_cached_ones_are_named(settings):
    from mlflow import MlflowClient

    c = MlflowClient(settings.mlflow_tracking_uri())
    first = tracking.start_pipeline_run(settings, "run-1")
    assert tracking.start_pipeline_run(settings, "run-1") == first  # a retried first step: the same run
    # a cached step opens its own run (it cannot be told the parent); the next uncached step nests it
    dataset_run = tracking.start_run(settings, "build-dataset", {tracking.STEP_TAG: "build-dataset"})
    assert tracking.adopt(settings, first, {"build-dataset": dataset_run, "train-model": ""}) == {
        "build-dataset": "nested"
    }
    with tracking.step_run(settings, first, "register-model"):
        assert c.get_run(first).info.status == "RUNNING"
    assert c.get_run(first).info.status == "RUNNING"  # later steps (cached ones too) still to come
    with tracking.step_run(settings, first, "deploy-model", final=True):
        pass
    assert _children(c, first) == {
        "build-dataset": "FINISHED",
        "register-model": "FINISHED",
        "deploy-model": "FINISHED",
    }
    assert c.get_run(first).info.status == "FINISHED"

    # the next pipeline run hits the cache: it is handed the same dataset run, which stays where it is
    second = tracking.start_pipeline_run(settings, "run-2")
    assert second != first
    assert tracking.adopt(settings, second, {"build-dataset": dataset_run}) == {"build-dataset": "reused"}
    assert c.get_run(dataset_run).data.tags[tracking.PARENT_TAG] == first
    assert c.get_run(second).data.tags[f"{tracking.REUSED_PREFIX}build-dataset"] == dataset_run

    with pytest.raises(RuntimeError, match="boom"), tracking.step_run(settings, second, "staging-evaluation"):
        raise RuntimeError("boom")
    assert _children(c, second) == {"staging-evaluation": "FAILED"}
    assert c.get_run(second).info.status == "FAILED"
