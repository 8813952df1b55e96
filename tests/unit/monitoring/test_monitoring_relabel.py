"""The relabel outbox without a Label Studio: nothing is lost, nothing is queued twice."""

import pytest

from edgeloop.core.config import load_settings
from edgeloop.monitoring.relabel import RelabelItem, RelabelQueue
from edgeloop.testing.stack import closed_port


@pytest.fixture
def down_settings(tmp_path):
    return load_settings(
        state_dir=tmp_path / "state",
        labelstudio={"url": f"http://127.0.0.1:{closed_port()}", "api_key": "x" * 20},
    )


def _item(sha: str) -> RelabelItem:
    return RelabelItem(
        sha256=sha,
        blob_uri=f"az://payloads/images/{sha}.png",
        image_url=f"http://blob/{sha}.png?sig",
        predicted_label="dent",
        score=0.41,
        model_version="m:3",
        flag_reason="low_confidence",
        flag_score=1.2,
        labels=["ok", "dent"],
        metadata={"stream": "cam-7"},
    )


def test_task_payload_follows_the_label_studio_conventions():
    task = _item("abc").task()
    data = task["data"]
    assert data["image"].startswith("http") and data["blob_uri"] == "az://payloads/images/abc.png"
    assert data["sha256"] == "abc" and data["flag_reason"] == "low_confidence" and data["flag_score"] == 1.2
    (pred,) = task["predictions"]
    assert pred["model_version"] == "m:3" and pred["score"] == 0.41
    assert pred["result"][0]["value"] == {"choices": ["dent"]}
    assert pred["result"][0]["from_name"] == "label" and pred["result"][0]["to_name"] == "image"


def test_enqueue_is_idempotent_and_survives_a_restart(down_settings):
    q = RelabelQueue.for_settings(down_settings)
    r1 = q.enqueue("proj", [_item("a"), _item("b")])
    r2 = q.enqueue("proj", [_item("b"), _item("c")])
    assert (r1.enqueued, r2.enqueued, r2.already_pending) == (2, 1, 1)
    reopened = RelabelQueue.for_settings(down_settings)  # a new process: the sqlite file is the state
    assert reopened.outbox_size() == 3
    assert reopened.known("proj") == {"a", "b", "c"}
    assert reopened.known("other") == set()


def test_delivery_to_a_down_label_studio_keeps_everything(down_settings):
    q = RelabelQueue.for_settings(down_settings)
    q.enqueue("proj", [_item("a"), _item("b")])
    for attempt in (1, 2):
        report = q.deliver(down_settings)
        assert report.delivered == 0 and report.pending == 2
        assert report.error and "unreachable" in report.error
        rows = q.pending()
        assert {r[1].sha256 for r in rows} == {"a", "b"}
        assert all(r[2] == attempt for r in rows)  # attempts counted
