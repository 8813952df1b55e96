"""Request decoding (binary zero-copy, JSON, BYTES images, V1) and response encoding."""

from __future__ import annotations

import base64
import struct

import numpy as np
import orjson
import pytest

from edgeloop.core.preprocessing import Preprocess, PreprocessConfig
from edgeloop.serving import codec
from edgeloop.serving.client import rest_request, rest_response
from edgeloop.serving.errors import (
    DatatypeError,
    InvalidInputError,
    PayloadTooLargeError,
    ShapeError,
    UndecodableImageError,
)
from edgeloop.testing.media import encode_jpeg, random_frames
from edgeloop.testing.oip import binary_request as binary_body

PRE = Preprocess(PreprocessConfig(size=64))


def test_binary_tensor_is_a_zero_copy_view_of_the_body():
    frames = random_frames(2, 64)
    body, hl = binary_body(frames, "UINT8")
    req = codec.decode_rest_v2(body, str(hl), "m")
    values = codec.tensor_values(req.inputs[0])
    np.testing.assert_array_equal(values, frames)
    assert not values.flags.owndata
    assert np.shares_memory(values, np.frombuffer(body, dtype=np.uint8))  # no copy of the pixels
    assert getattr(req, codec.PROTOCOL_ATTR) == "rest_v2_binary"


def test_json_tensor_and_requested_outputs():
    x = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32)
    body = orjson.dumps(
        {
            "id": "r1",
            "inputs": [
                {"name": "images", "shape": [1, 3, 64, 64], "datatype": "FP32", "data": x.ravel().tolist()}
            ],
            "outputs": [{"name": "label"}],
            "parameters": {"embedding": True},
        }
    )
    req = codec.decode_rest_v2(body, None, "m", "2")
    assert req.id == "r1" and req.model_version == "2" and req.parameters == {"embedding": True}
    assert [o.name for o in req.request_outputs] == ["label"]
    np.testing.assert_array_equal(codec.tensor_values(req.inputs[0]), x)


def test_bytes_images_binary_and_json_b64_decode_like_the_shared_preprocess():
    frames = random_frames(2, 100, seed=3)
    jpegs = [encode_jpeg(f) for f in frames]
    raw = b"".join(struct.pack("<I", len(j)) + j for j in jpegs)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    )
    binary = codec.tensor_values(codec.decode_rest_v2(header + raw, len(header), "m").inputs[0])
    as_json = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [2],
                    "datatype": "BYTES",
                    "data": [{"b64": base64.b64encode(j).decode()} for j in jpegs],
                }
            ]
        }
    )
    from_json = codec.tensor_values(codec.decode_rest_v2(as_json, None, "m").inputs[0])
    assert binary == from_json == jpegs
    mi = codec.to_model_input(binary, "images", PRE, max_images=8)
    from edgeloop.core.preprocessing import decode_image

    expected = PRE.batch([decode_image(j) for j in jpegs])
    np.testing.assert_allclose(mi.x, expected, atol=1e-6)
    assert mi.frames.shape == (2, 64, 64, 3)


def test_uint8_frames_of_any_size_are_resized_with_the_shared_preprocess():
    frames = random_frames(3, 90, seed=1)
    mi = codec.to_model_input(frames, "images", PRE, max_images=8)
    np.testing.assert_allclose(mi.x, PRE.batch(list(frames)), atol=1e-6)
    single = codec.to_model_input(frames[0], "images", PRE, max_images=8)  # [H,W,3] -> N=1
    np.testing.assert_allclose(single.x[0], mi.x[0], atol=1e-6)


@pytest.mark.parametrize(
    "body,hl,err,needle",
    [
        (b"{not json", None, InvalidInputError, "not valid JSON"),
        (b"[]", None, InvalidInputError, "JSON object"),
        (b'{"inputs": []}', None, InvalidInputError, "non-empty list"),
        (
            b'{"inputs": [{"name": "images", "shape": [1], "datatype": "FP32"}]}',
            None,
            InvalidInputError,
            "neither",
        ),
        (
            b'{"inputs": [{"name": "images", "shape": [-1], "datatype": "FP32", "data": [1]}]}',
            None,
            ShapeError,
            "non-negative",
        ),
        (b'{"inputs": []}', "999", InvalidInputError, "Inference-Header-Content-Length"),
        (b'{"inputs": []}', "abc", InvalidInputError, "integer"),
    ],
)
def test_malformed_requests_say_what_is_wrong(body, hl, err, needle):
    with pytest.raises(err, match=needle):
        codec.decode_rest_v2(body, hl, "m")


def test_binary_size_past_the_end_is_a_shape_error():
    body, hl = binary_body(np.zeros((1, 8, 8, 3), np.uint8), "UINT8")
    with pytest.raises(ShapeError, match="past the end"):
        codec.decode_rest_v2(body[:-10], hl, "m")


@pytest.mark.parametrize(
    "arr,datatype,shape,err,needle",
    [
        (np.zeros((1, 64, 64, 3), np.uint8), "UINT8", [1, 64, 64, 4], ShapeError, "bytes"),
        (np.zeros((4,), np.int64), "INT64", None, DatatypeError, "BYTES"),
    ],
)
def test_tensor_errors(arr, datatype, shape, err, needle):
    body, hl = binary_body(arr, datatype, shape)
    with pytest.raises(err, match=needle):
        codec.tensor_values(codec.decode_rest_v2(body, hl, "m").inputs[0])


@pytest.mark.parametrize(
    "values,err,needle",
    [
        (np.zeros((1, 64, 64), np.uint8), ShapeError, r"\[N,H,W,3\]"),
        (np.zeros((1, 64, 64, 4), np.uint8), ShapeError, r"\[N,H,W,3\]"),
        (np.zeros((2, 64, 64), np.float32), ShapeError, r"\[N,3,64,64\]"),
        (np.zeros((1, 3, 32, 32), np.float32), ShapeError, r"\[N,3,64,64\]"),
        (np.zeros((0, 64, 64, 3), np.uint8), ShapeError, "empty"),
        (np.zeros((9, 64, 64, 3), np.uint8), PayloadTooLargeError, "at most 8"),
        ([b"not an image"], UndecodableImageError, "JPEG or PNG"),
    ],
)
def test_model_input_errors_name_what_was_expected(values, err, needle):
    with pytest.raises(err, match=needle):
        codec.to_model_input(values, "images", PRE, max_images=8)


def test_json_uint8_out_of_range_is_a_datatype_error():
    body = orjson.dumps(
        {"inputs": [{"name": "images", "shape": [1, 1, 1, 3], "datatype": "UINT8", "data": [1, 2, 300]}]}
    )
    with pytest.raises(DatatypeError):
        codec.tensor_values(codec.decode_rest_v2(body, None, "m").inputs[0])


def test_v1_instances_b64_and_arrays():
    jpeg = encode_jpeg(random_frames(1, 32)[0])
    assert codec.v1_instances({"instances": [{"b64": base64.b64encode(jpeg).decode()}]}) == [jpeg]
    assert codec.v1_instances({"instances": [{"image": {"b64": base64.b64encode(jpeg).decode()}}]}) == [jpeg]
    arr = codec.v1_instances({"instances": random_frames(2, 8).tolist()})
    assert arr.dtype == np.uint8 and arr.shape == (2, 8, 8, 3)
    with pytest.raises(InvalidInputError, match="instances"):
        codec.v1_instances({"inputs": []})
    with pytest.raises(DatatypeError, match="0..255"):
        codec.v1_instances({"instances": [[[[-1, 0, 0]]]]})


def test_response_round_trips_json_and_binary():
    from kserve.protocol.infer_type import InferOutput, InferResponse

    probs = np.random.default_rng(0).random((3, 4)).astype(np.float32)
    labels = np.array([b"ok", b"dent", b"ok"], dtype=object)

    def response():
        return InferResponse(
            "id",
            "m",
            [InferOutput("label", [3], "BYTES", labels), InferOutput("probabilities", [3, 4], "FP32", probs)],
            model_version="2",
        )

    for binary in (False, True):
        body, hl = codec.encode_rest_v2(response(), None, {"binary_data_output": binary})
        assert (hl is not None) == binary
        pred = rest_response(200, {"inference-header-content-length": str(hl)} if hl else {}, body)
        assert pred.labels == ["ok", "dent", "ok"] and pred.model_version == "2"
        np.testing.assert_array_equal(pred.probabilities, probs)


def test_client_rest_request_is_what_the_server_decodes():
    frames = random_frames(2, 64)
    body, headers = rest_request(frames, embedding=True)
    req = codec.decode_rest_v2(body, headers["Inference-Header-Content-Length"], "m")
    np.testing.assert_array_equal(codec.tensor_values(req.inputs[0]), frames)
    assert req.parameters["embedding"] is True
