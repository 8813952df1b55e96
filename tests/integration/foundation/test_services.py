"""Round trips through each real service of the local stack."""

import json
import threading
import uuid

from edgeloop.core import labelstudio as lsx
from edgeloop.local.sample_data import read_metadata
from edgeloop.local.seed import seed_directory


def test_blob_round_trip_and_sas_url(blob_store):
    import httpx

    uri = f"az://images/tests/{uuid.uuid4().hex}.bin"
    payload = bytes(range(256)) * 100
    blob_store.upload(uri, payload)
    assert blob_store.download(uri) == payload
    url = blob_store.sas_url(uri)
    assert httpx.get(url).content == payload  # what a labeler's browser would fetch
    assert str(blob_store.uri_from_url(url)) == uri


def test_mlflow_artifact_lands_in_azurite(stack_settings, blob_store, tmp_path):
    import mlflow

    mlflow.set_tracking_uri(stack_settings.mlflow_tracking_uri())
    mlflow.set_experiment("foundation-test")
    f = tmp_path / "evidence.json"
    f.write_text('{"ok": true}')
    with mlflow.start_run() as run:
        mlflow.log_metric("accuracy", 0.97)
        mlflow.log_artifact(str(f))
    names = list(blob_store.list(stack_settings.blob.mlflow_container))
    assert any(run.info.run_id in n and n.endswith("evidence.json") for n in names)
    got = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="evidence.json", dst_path=str(tmp_path / "dl")
    )
    assert json.loads(open(got).read()) == {"ok": True}


def test_seeded_project_export_equals_ground_truth(stack_settings, sample_dir):
    title = f"gt-{uuid.uuid4().hex[:6]}"
    report = seed_directory(stack_settings, sample_dir, source="gt", project_title=title, progress=False)
    truth = {m.file: m.label for m in read_metadata(sample_dir)}
    assert report.annotations_created == len(truth)

    ls = lsx.client(stack_settings)
    exported = ls.projects.exports.as_json(report.project_id)
    got = {}
    for task in exported:
        [ann] = task["annotations"]
        got[task["data"]["source_file"]] = ann["result"][0]["value"]["choices"][0]
    assert got == truth

    again = seed_directory(stack_settings, sample_dir, source="gt", project_title=title, progress=False)
    assert (again.tasks_created, again.annotations_created, again.uploaded) == (0, 0, 0)
    assert len(list(lsx.iter_tasks(ls, report.project_id))) == len(truth)


def test_seed_from_own_folder_makes_unlabeled_tasks(stack_settings, tmp_path):
    from PIL import Image

    (tmp_path / "scratch").mkdir()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "scratch" / "a.jpg")
    Image.new("RGB", (16, 16), (10, 200, 10)).save(tmp_path / "b.png")
    title = f"own-{uuid.uuid4().hex[:6]}"
    report = seed_directory(stack_settings, tmp_path, project_title=title, progress=False)
    assert (report.tasks_created, report.annotations_created, report.unlabeled_tasks) == (2, 1, 1)


def test_mqtt_publish_subscribe_round_trip(stack_settings):
    """The stack's broker with its two accounts: the publisher writes under the results prefix,
    the reader reads it."""
    import paho.mqtt.client as mqtt

    host, port = stack_settings.mqtt_endpoint()
    topic = f"{stack_settings.mqtt.topic_prefix}/test/{uuid.uuid4().hex}"
    got: list[bytes] = []
    done = threading.Event()
    subscribed = threading.Event()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.username_pw_set(*stack_settings.mqtt_credentials(reader=True))
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    sub.on_subscribe = lambda *a: subscribed.set()

    def on_message(c, u, msg):
        got.append(msg.payload)
        if len(got) == 20:
            done.set()

    sub.on_message = on_message
    sub.connect(host, port)
    sub.loop_start()
    assert subscribed.wait(10), f"no SUBACK for {topic} from the broker at {host}:{port} within 10 s"
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.username_pw_set(*stack_settings.mqtt_credentials())
    pub.connect(host, port)
    pub.loop_start()
    for i in range(20):
        pub.publish(topic, f"{i}".encode(), qos=1).wait_for_publish(5)
    assert done.wait(10), f"fewer than 20 messages ({len(got)}) on {topic} at {host}:{port} within 10 s"
    pub.loop_stop()
    sub.loop_stop()
    assert got == [f"{i}".encode() for i in range(20)]
