"""One source of defaults: the pipeline's parameters default to TRAINING and GATE, in the Python
signature and in the checked-in compiled YAML a Kubeflow user sees."""

from __future__ import annotations

import inspect

import pytest
import yaml

from edgeloop.components.defaults import SPLIT_FRACTIONS, TRAINING, parse_fractions
from edgeloop.local.demo import DEMO_PARAMS
from edgeloop.pipelines.gate import GATE, GateThresholds
from edgeloop.pipelines.runner import COMPILED
from edgeloop.pipelines.training_pipeline import training_pipeline

# pipeline parameter -> TrainingDefaults field
TRAINING_PARAMS = {"nproc_per_node": "nproc_per_node", "seed": "seed"}
# parameters whose default depends on the labels' task: empty / 0 in the pipeline, resolved by the
# train step (edgeloop.components.training.config_for_task, tests/unit/components/test_training_defaults.py)
TASK_PARAMS = {"architecture": "", "epochs": 0, "batch_size": 0, "image_size": 0, "learning_rate": 0.0}
GATE_PARAMS = list(GateThresholds.model_fields)

EXPECTED = {
    **{param: getattr(TRAINING, field) for param, field in TRAINING_PARAMS.items()},
    **TASK_PARAMS,
    **{name: getattr(GATE, name) for name in GATE_PARAMS},
}


def _signature_defaults() -> dict[str, object]:
    sig = inspect.signature(training_pipeline.pipeline_func)
    return {name: p.default for name, p in sig.parameters.items()}


def _compiled_defaults() -> dict[str, object]:
    spec = next(yaml.safe_load_all(COMPILED.read_text()))
    return {k: v.get("defaultValue") for k, v in spec["root"]["inputDefinitions"]["parameters"].items()}


def test_every_gate_threshold_is_a_pipeline_parameter():
    assert set(GATE_PARAMS) <= set(_signature_defaults())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_pipeline_signature_defaults_are_the_typed_defaults(name):
    assert _signature_defaults()[name] == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_compiled_pipeline_defaults_are_the_typed_defaults(name):
    """KFP writes integers as floats (30.0); the values must still be equal."""
    value = _compiled_defaults()[name]
    assert value == EXPECTED[name], f"{name}: compiled {value!r}; run `make compile`"


def test_split_fractions_default_is_the_dataset_default():
    from edgeloop.components.dataset import DEFAULT_FRACTIONS

    assert parse_fractions(_signature_defaults()["split_fractions"]) == SPLIT_FRACTIONS == DEFAULT_FRACTIONS
    assert parse_fractions(_compiled_defaults()["split_fractions"]) == SPLIT_FRACTIONS, "run `make compile`"


def test_demo_keeps_real_gate_thresholds():
    """The demo is judged like a real run: no loosened accuracy, no lowered evidence bar."""
    params = {**_signature_defaults(), **DEMO_PARAMS}
    assert params["min_accuracy"] >= 0.9
    assert params["min_eval_images"] >= GATE.min_eval_images
    assert params["min_top1_agreement"] >= GATE.min_top1_agreement
    assert params["max_latency_p95_ms"] <= GATE.max_latency_p95_ms


def test_demo_overrides_only_known_parameters():
    params = _signature_defaults()
    assert set(DEMO_PARAMS) <= set(params), set(DEMO_PARAMS) - set(params)
