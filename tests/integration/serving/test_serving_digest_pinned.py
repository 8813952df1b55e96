"""Integrity bound to what is served: the digest the deployment pins (``--expected-digest``, the
InferenceService's ``EDGELOOP_MODEL_DIGEST``, the registry's tag) must be the digest of the card
and files the server loads; admin loads name only allowed sources."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import httpx
import pytest

from edgeloop.core.model_card import MODEL_CARD_FILE, ModelCard
from edgeloop.serving.launcher import ServerStartError, running_server

ADMIN = "/edgeloop/admin/models/inspection/versions"


@pytest.fixture
def relabeled(model_dirs, tmp_path: Path) -> tuple[Path, str]:
    """A copy of version 1 whose card had its label order swapped after export, and the digest
    version 1 was approved with. Every file still matches the card."""
    approved = ModelCard.load(model_dirs["1"]).digest()
    d = Path(shutil.copytree(model_dirs["1"], tmp_path / "relabeled"))
    card = json.loads((d / MODEL_CARD_FILE).read_text())
    card["labels"] = list(reversed(card["labels"]))
    (d / MODEL_CARD_FILE).write_text(json.dumps(card, indent=2))
    return d, approved


def test_a_model_whose_card_was_edited_after_export_is_refused(relabeled):
    directory, approved = relabeled
    with (
        pytest.raises(ServerStartError, match="pins") as e,
        running_server([directory], extra_args=["--expected_digest", approved]),
    ):
        pass
    assert "differs from the model that was approved" in str(e.value)


def test_the_inference_service_digest_variable_is_enforced(model_dirs):
    other = ModelCard.load(model_dirs["2"]).digest()
    with (
        pytest.raises(ServerStartError, match="pins"),
        running_server([model_dirs["1"]], env={"EDGELOOP_MODEL_DIGEST": other}),
    ):
        pass
    with (
        pytest.raises(ServerStartError, match="not a sha256 digest"),
        running_server([model_dirs["1"]], env={"EDGELOOP_MODEL_DIGEST": "unset"}),
    ):
        pass


def test_the_matching_digest_serves_and_one_digest_cannot_pin_several_models(model_dirs):
    digest = ModelCard.load(model_dirs["1"]).digest()
    with running_server([model_dirs["1"]], extra_args=["--expected_digest", digest]) as srv:
        md = srv.rest_client().metadata()
        assert md["parameters"]["digest"] == digest
    with (
        pytest.raises(ServerStartError, match="pins one model"),
        running_server(
            [model_dirs["1"], f"{model_dirs['2']}#version=2"], extra_args=["--expected_digest", digest]
        ),
    ):
        pass


def test_admin_loads_only_from_allowed_sources_and_honour_a_pinned_digest(model_dirs, tmp_path):
    outside = Path(shutil.copytree(model_dirs["3"], tmp_path / "elsewhere" / "v3"))
    allow = ["--admin_allow_source", str(model_dirs["1"].parent)]
    with running_server([model_dirs["1"]], admin=True, extra_args=allow) as srv:
        for uri in (str(outside), f"{model_dirs['1'].parent}/../{outside.parent.name}/v3", "az://other/m"):
            r = httpx.post(srv.rest_url + ADMIN, json={"uri": uri, "version": "9"}, timeout=60)
            assert r.status_code == 403, (uri, r.text)
            assert "loads models only from" in r.json()["error"]
        wrong = ModelCard.load(model_dirs["2"]).digest()
        r = httpx.post(srv.rest_url + ADMIN, json={"uri": str(model_dirs["3"]), "digest": wrong}, timeout=60)
        assert r.status_code == 422 and "pins" in r.json()["error"]
        right = ModelCard.load(model_dirs["3"]).digest()
        r = httpx.post(srv.rest_url + ADMIN, json={"uri": str(model_dirs["3"]), "digest": right}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["digest"] == right


def test_a_registered_version_whose_card_was_edited_is_refused(stack_settings, relabeled):
    """The registry's digest tag pins the version: artifacts edited in the store are not served."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from edgeloop.core.model_loader import REGISTRY_DIGEST_TAG

    directory, approved = relabeled
    name = f"digest-test-{uuid.uuid4().hex[:8]}"
    uri = stack_settings.mlflow_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(
        stack_settings.mlflow.experiment
    )  # the pipeline account may not write to MLflow's Default
    client = MlflowClient(uri)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(directory), artifact_path="model")
    client.create_registered_model(name)
    mv = client.create_model_version(
        name,
        source=f"{run.info.artifact_uri}/model",
        run_id=run.info.run_id,
        tags={REGISTRY_DIGEST_TAG: approved},
    )
    client.set_registered_model_alias(name, "champion", mv.version)
    with (
        pytest.raises(ServerStartError, match="pins"),
        running_server([f"models:/{name}@champion"], settings=stack_settings),
    ):
        pass
