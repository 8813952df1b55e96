"""A model registered in the real MLflow (with its card as artifacts) served from ``models:/NAME@champion``,
and a torchvision mobilenet_v3_small export served with the same answers as ONNX Runtime."""

from __future__ import annotations

import uuid

import numpy as np
import onnxruntime as ort

from edgeloop.core.preprocessing import Preprocess, PreprocessConfig
from edgeloop.serving.launcher import running_server
from edgeloop.testing.media import encode_jpeg, random_frames
from edgeloop.testing.models import build_model_dir


def register(settings, model_dir, name: str, alias: str) -> str:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = settings.mlflow_tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
    client.create_registered_model(name)
    mv = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)


def test_serving_models_uri_from_the_registry(stack_settings, model_dirs):
    name = f"serving-test-{uuid.uuid4().hex[:8]}"
    version = register(stack_settings, model_dirs["2"], name, "champion")
    frames = random_frames(3, 64, seed=31)
    x = Preprocess(PreprocessConfig(size=64)).batch(list(frames))
    probs = ort.InferenceSession(str(model_dirs["2"] / "model.onnx")).run(None, {"images": x})[0]
    with running_server([f"models:/{name}@champion"], settings=stack_settings) as srv:
        with srv.grpc_client() as g:
            pred = g.infer_frames(frames)
        assert pred.model_version == version  # the registry's version number is the served version id
        np.testing.assert_allclose(pred.probabilities, probs, atol=1e-5)
        md = srv.rest_client().metadata()
        assert md["parameters"]["aliases"]["champion"] == version


def test_mobilenet_export_matches_onnx_runtime(tmp_path):
    model_dir = build_model_dir(tmp_path / "mnv3", size=64, seed=3, version="1")
    frames = random_frames(4, 96, seed=32)
    jpegs = [encode_jpeg(f) for f in frames]
    pre = Preprocess(PreprocessConfig(size=64))
    sess = ort.InferenceSession(str(model_dir / "model.onnx"))
    from edgeloop.core.preprocessing import decode_image

    want_frames = sess.run(None, {"images": pre.batch(list(frames))})
    want_jpegs = sess.run(None, {"images": pre.batch([decode_image(j) for j in jpegs])})
    with running_server([model_dir]) as srv, srv.grpc_client() as g, srv.rest_client() as r:
        for client in (g, r):
            p = client.infer_frames(frames, embedding=True)
            np.testing.assert_allclose(p.probabilities, want_frames[0], atol=1e-4)
            np.testing.assert_allclose(p.embedding, want_frames[1], atol=1e-3, rtol=1e-4)
            np.testing.assert_allclose(client.infer_images(jpegs).probabilities, want_jpegs[0], atol=1e-4)
