"""The ML backend's HTTP side without Label Studio: auth on every route, bad input refused with a 4xx
naming the fix, tasks it cannot predict answered with their reason and counted (never dropped)."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from edgeloop.core import labelstudio as lsx
from edgeloop.labeling.backend import Interface, build_predictor, create_app
from edgeloop.testing.models import LABELS, build_tiny_model_dir

CREDS = ("edgeloop-ml", "s3cret-pass")
CONFIG = lsx.label_config(LABELS)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    model = build_tiny_model_dir(tmp_path_factory.mktemp("mlb") / "model", version="3")
    return TestClient(create_app(build_predictor(None, model), CREDS))


@pytest.mark.parametrize("route,method", [("/health", "get"), ("/setup", "post"), ("/predict", "post")])
def test_every_route_requires_the_basic_credentials(client: TestClient, route: str, method: str):
    for auth in (None, ("edgeloop-ml", "wrong"), ("someone", CREDS[1])):
        r = getattr(client, method)(route, auth=auth, **({"json": {}} if method == "post" else {}))
        assert r.status_code == 401, (route, auth)
        assert r.headers["www-authenticate"].startswith("Basic")
        assert "edgeloop labeling backend connect" in r.json()["error"]
    assert client.get("/health", auth=CREDS).json()["status"] == "UP"


def test_setup_returns_the_model_version_and_refuses_configs_it_cannot_fill(client: TestClient):
    r = client.post("/setup", auth=CREDS, json={"project": "1.0", "schema": CONFIG})
    assert r.status_code == 200 and r.json() == {"model_version": "inspection:3"}

    r = client.post("/setup", auth=CREDS, json={"project": "1.0", "schema": lsx.label_config(["ok", "dent"])})
    assert r.status_code == 400 and "add these choices" in r.json()["error"]
    assert "scratch" in r.json()["error"]

    text = '<View><Text name="t" value="$text"/><Choices name="c" toName="t"><Choice value="a"/></Choices></View>'
    r = client.post("/setup", auth=CREDS, json={"schema": text})
    assert r.status_code == 400 and "image classification" in r.json()["error"]


def test_bad_bodies_are_4xx(client: TestClient):
    r = client.post(
        "/predict", auth=CREDS, content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    r = client.post("/predict", auth=CREDS, json={"tasks": "x", "label_config": CONFIG})
    assert r.status_code == 400 and "'tasks' must be a list" in r.json()["error"]
    big = b'{"tasks": [' + b" " * (17 * 1024 * 1024) + b"]}"
    r = client.post("/predict", auth=CREDS, content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_a_task_it_cannot_read_gets_its_reason_in_place_and_is_counted(client: TestClient):
    before = client.get("/health", auth=CREDS).json()["failed"]
    tasks = [
        {"id": 7, "data": {"image": "http://169.254.169.254/latest/meta-data"}},  # never fetched
        {"id": 8, "data": {}},
    ]
    r = client.post("/predict", auth=CREDS, json={"tasks": tasks, "label_config": CONFIG})
    assert r.status_code == 200
    first, second = r.json()["results"]
    assert "result" not in first and first["task"] == 7 and "fetches nothing else" in first["error"]
    assert "result" not in second and "no image under 'image'" in second["error"]
    health = client.get("/health", auth=CREDS).json()
    assert health["failed"] == before + 2 and any("task 7" in e for e in health["last_errors"])


def test_webhook_training_events_are_acknowledged_not_acted_on(client: TestClient):
    r = client.post("/webhook", auth=CREDS, json={"action": "START_TRAINING", "project": {"id": 1}})
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    assert "edgeloop pipeline run" in r.json()["detail"]


def test_the_interface_comes_from_the_projects_config():
    ui = Interface.parse(
        '<View><Image name="photo" value="$url"/>'
        '<Choices name="verdict" toName="photo"><Choice value="ok"/><Choice value="dent"/></Choices></View>'
    )
    assert (ui.from_name, ui.to_name, ui.value_key, ui.choices) == ("verdict", "photo", "url", ("ok", "dent"))


def test_it_never_runs_open(tmp_path: Path):
    model = build_tiny_model_dir(tmp_path / "m")
    with pytest.raises(ValueError, match="never runs open"):
        create_app(build_predictor(None, model), ("edgeloop-ml", ""))


def test_a_classifier_backend_refuses_a_box_project_naming_the_fix(client: TestClient):
    boxes = lsx.label_config(LABELS, lsx.DETECTION)
    r = client.post("/setup", auth=CREDS, json={"project": "1.0", "schema": boxes})
    assert r.status_code == 400
    assert "a classification model and the project a detection one" in r.json()["error"]
    assert "--model-dir" in r.json()["error"]


def test_a_box_config_is_understood_as_a_detection_interface():
    ui = Interface.parse(lsx.label_config(["scratch", "dent"], lsx.DETECTION))
    assert ui.task == "detection" and ui.choices == ("scratch", "dent") and ui.value_key == "image"
