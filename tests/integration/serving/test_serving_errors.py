"""Client mistakes get a 4xx (gRPC: INVALID_ARGUMENT etc.) saying what was expected; the server keeps serving."""

from __future__ import annotations

import base64

import grpc
import httpx
import numpy as np
import orjson
import pytest

from edgeloop.serving.client import ClientError
from edgeloop.testing.media import random_frames
from edgeloop.testing.oip import binary_request, json_request

INFER = "/v2/models/inspection/infer"


def binary(arr: np.ndarray, datatype: str, shape=None):
    body, header_length = binary_request(arr, datatype, shape)
    return body, {"Inference-Header-Content-Length": str(header_length)}


def json_input(shape, datatype, data):
    return json_request(shape, datatype, data), {"Content-Type": "application/json"}


CASES = {
    # stock kserve 0.21 answers 500 for a wrong rank
    "wrong rank": (INFER, *json_input([4096], "FP32", [0.0] * 4096), 400, "[N,3,64,64]"),
    "wrong size FP32": (INFER, *binary(np.zeros((1, 3, 32, 32), np.float32), "FP32"), 400, "[N,3,64,64]"),
    "wrong dtype": (INFER, *binary(np.zeros((1, 64, 64, 3), np.int32), "INT32"), 400, "UINT8 [N,H,W,3]"),
    "byte count": (INFER, *binary(np.zeros((1, 64, 64, 3), np.uint8), "UINT8", [2, 64, 64, 3]), 400, "bytes"),
    "4 channels": (INFER, *binary(np.zeros((1, 64, 64, 4), np.uint8), "UINT8"), 400, "[N,H,W,3]"),
    "undecodable image": (
        INFER,
        *json_input([1], "BYTES", [{"b64": base64.b64encode(b"GIF? no").decode()}]),
        400,
        "JPEG or PNG",
    ),
    "bad json": (INFER, b'{"inputs": [', {"Content-Type": "application/json"}, 400, "not valid JSON"),
    "bad header length": (
        INFER,
        b'{"inputs": []}',
        {"Inference-Header-Content-Length": "500"},
        400,
        "Inference-Header-Content-Length",
    ),
    "wrong input name": (
        INFER,
        orjson.dumps(
            {"inputs": [{"name": "pixels", "shape": [1, 1, 1, 3], "datatype": "UINT8", "data": [1, 2, 3]}]}
        ),
        {"Content-Type": "application/json"},
        400,
        "'images'",
    ),
    "too many images": (INFER, *binary(np.zeros((33, 8, 8, 3), np.uint8), "UINT8"), 413, "at most 32"),
    "oversized body": (
        INFER,
        *binary(np.zeros((30, 160, 160, 3), np.uint8), "UINT8"),
        413,
        "at most 2097152",
    ),
    "unknown model": ("/v2/models/nope/infer", *json_input([1], "BYTES", ["x"]), 404, "no model named"),
    "unknown version": (
        "/v2/models/inspection/versions/42/infer",
        *json_input([1], "BYTES", ["x"]),
        404,
        "no version or alias '42'",
    ),
    "v1 garbage": (
        "/v1/models/inspection:predict",
        b'{"instances": [["a"]]}',
        {"Content-Type": "application/json"},
        400,
        "not accepted",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_a_4xx_and_the_server_keeps_serving(server, case):
    path, body, headers, status, needle = CASES[case]
    r = httpx.post(server.rest_url + path, content=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
    with server.rest_client() as c:  # still serving
        assert len(c.infer_frames(random_frames(1, 64)).labels) == 1


@pytest.mark.parametrize(
    "data,version,code,needle",
    [
        (np.zeros((2, 64, 64), np.float32), None, grpc.StatusCode.INVALID_ARGUMENT, "[N,3,64,64]"),
        ([b"not an image"], None, grpc.StatusCode.INVALID_ARGUMENT, "JPEG or PNG"),
        (np.zeros((40, 8, 8, 3), np.uint8), None, grpc.StatusCode.RESOURCE_EXHAUSTED, "at most 32"),
        (random_frames(1, 64), "nope", grpc.StatusCode.NOT_FOUND, "no version or alias"),
    ],
)
def test_grpc_bad_input_gets_the_matching_status(server, data, version, code, needle):
    with server.grpc_client() as g:
        with pytest.raises(ClientError) as err:
            g.infer(data, version=version)
        assert err.value.status == code.name and needle in err.value.message
        assert g.infer_frames(random_frames(1, 64)).labels


def test_errors_are_counted_by_kind(server):
    httpx.post(server.rest_url + INFER, content=b"{", headers={"Content-Type": "application/json"})
    metrics = httpx.get(server.rest_url + "/metrics").text
    assert (
        'edgeloop_serving_errors_total{kind="invalid_input",model="inspection",protocol="rest_v2_json"}'
        in metrics
    )


def test_admin_needs_to_be_enabled_and_authorised(model_dirs):
    from edgeloop.serving.launcher import running_server

    with running_server([model_dirs["1"]], env={"EDGELOOP_SERVING_ADMIN_TOKEN": "s3cret"}, admin=True) as srv:
        url = f"{srv.rest_url}/edgeloop/admin/models/inspection/aliases/champion"
        assert httpx.put(url, json={"version": "1"}).status_code == 403
        ok = httpx.put(url, json={"version": "1"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200, ok.text
