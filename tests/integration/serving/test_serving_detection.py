"""A detection model behind the real server: its boxes over REST (binary and JSON), gRPC and the V1
JSON form, in the pixels of the images as they were sent, checked against ONNX Runtime."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgeloop.core.preprocessing import Preprocess, PreprocessConfig
from edgeloop.serving.launcher import running_server
from edgeloop.testing.media import encode_png, random_frames
from edgeloop.testing.models import (
    as_tuples,
    assert_same_detections,
    build_detection_model_dir,
    reference_detections,
)

SIZE = 96
CLASSES = ["scratch", "dent", "stain"]


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
    return build_detection_model_dir(
        tmp_path_factory.mktemp("detector") / "v1", size=SIZE, seed=3, version="1"
    )


@pytest.fixture(scope="module")
def det_server(detector_dir):
    with running_server([detector_dir]) as srv:
        yield srv


def test_rest_and_grpc_answer_the_graphs_boxes_in_the_pixels_of_the_frames_sent(det_server, detector_dir):
    frames = np.ascontiguousarray(
        random_frames(3, 160, seed=5)[:, :120]
    )  # 160 wide, 120 high: not the model's 96 x 96
    want = reference_detections(detector_dir, frames)
    assert sum(map(len, want)) > 0, "the test detector should find boxes"
    with det_server.rest_client() as r, det_server.grpc_client() as g:
        for pred in (r.infer_frames(frames), g.infer_frames(frames)):
            assert pred.detections is not None and pred.model_version == "1"
            assert_same_detections(as_tuples(pred.detections), want)
            assert all(d["x"] >= 0 and d["x"] + d["width"] <= 160.01 for img in pred.detections for d in img)


def test_json_v2_gives_flat_tensors_and_a_count_per_image(det_server, detector_dir):
    frames = random_frames(2, SIZE, seed=6)
    want = reference_detections(detector_dir, frames, threshold=0.9)
    body = {
        "inputs": [
            {
                "name": "images",
                "shape": [2, SIZE, SIZE, 3],
                "datatype": "UINT8",
                "data": frames.ravel().tolist(),
            }
        ],
        "parameters": {"score_threshold": 0.9},
    }
    r = httpx.post(f"{det_server.rest_url}/v2/models/inspection/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["count"]["datatype"] == "INT32" and out["count"]["data"] == [len(w) for w in want]
    n = sum(out["count"]["data"])
    assert out["boxes"]["shape"] == [n, 4] and out["scores"]["shape"] == [n] and out["labels"]["shape"] == [n]
    assert all(s >= 0.9 for s in out["scores"]["data"]) and 0 < n < 2 * 50  # the threshold kept some, not all
    assert out["labels"]["data"] == [d[0] for w in want for d in w]


def test_v1_json_form_lists_each_images_detections(det_server, detector_dir):
    frames = random_frames(2, 128, seed=7)
    want = reference_detections(detector_dir, frames)
    body = {"instances": [{"b64": base64.b64encode(encode_png(f)).decode()} for f in frames]}
    r = httpx.post(f"{det_server.rest_url}/v1/models/inspection:predict", json=body, timeout=30)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["count"] for p in preds] == [len(w) for w in want]
    assert_same_detections(as_tuples([p["detections"] for p in preds]), want)


def test_metadata_names_the_detection_outputs(det_server):
    with det_server.rest_client() as r:
        meta = r.metadata()
    assert [o["name"] for o in meta["outputs"]] == ["boxes", "scores", "labels", "count"]
    assert meta["parameters"]["task"] == "detection" and meta["parameters"]["labels"] == CLASSES


@pytest.mark.parametrize("bad", [2, -0.1, "high"])
def test_a_score_threshold_outside_0_to_1_is_a_400_that_names_the_range(det_server, bad):
    body = {
        "inputs": [{"name": "images", "shape": [1, 8, 8, 3], "datatype": "UINT8", "data": [0] * 192}],
        "parameters": {"score_threshold": bad},
    }
    r = httpx.post(f"{det_server.rest_url}/v2/models/inspection/infer", json=body, timeout=30)
    assert r.status_code == 400 and "score_threshold must be a number from 0 to 1" in r.text


def test_unknown_outputs_name_the_detection_ones(det_server):
    body = {
        "inputs": [{"name": "images", "shape": [1, 8, 8, 3], "datatype": "UINT8", "data": [0] * 192}],
        "outputs": [{"name": "probabilities"}],
    }
    r = httpx.post(f"{det_server.rest_url}/v2/models/inspection/infer", json=body, timeout=30)
    assert r.status_code == 400 and "boxes" in r.text and "count" in r.text


TRITON_PYTHON = Path(__file__).resolve().parents[3] / ".tools" / "triton-client" / "bin" / "python"
TRITON_INFER = Path(__file__).resolve().parents[2] / "containers" / "triton_infer.py"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tritons_clients_read_the_detections(det_server, detector_dir, protocol, tmp_path):
    if not TRITON_PYTHON.exists():
        pytest.fail(f"{TRITON_PYTHON} is missing: run `make setup` (Triton's clients live in their own venv)")
    frames = random_frames(2, SIZE, seed=8)
    pre = Preprocess(PreprocessConfig(size=SIZE))
    np.save(tmp_path / "x.npy", pre.batch(list(frames)))  # Triton clients send the FP32 tensor
    port = (
        det_server.rest_url.rsplit(":", 1)[1]
        if protocol == "http"
        else det_server.grpc_target.rsplit(":", 1)[1]
    )
    r = subprocess.run(
        [
            str(TRITON_PYTHON),
            str(TRITON_INFER),
            protocol,
            f"127.0.0.1:{port}",
            "inspection",
            str(tmp_path / "x.npy"),
        ]
        + ["--outputs", "boxes,scores,labels,count"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout)
    assert got["ready"] and got["model_version"] == "1"
    out = got["outputs"]
    want = reference_detections(detector_dir, frames)
    assert out["count"] == [len(w) for w in want] and sum(out["count"]) > 0
    flat = [(lbl, s, *box) for lbl, s, box in zip(out["labels"], out["scores"], out["boxes"], strict=True)]
    per_image, start = [], 0
    for n in out["count"]:
        per_image.append(flat[start : start + n])
        start += n
    assert_same_detections(per_image, want)
