"""Wire formats: OIP v2 REST (JSON and the binary tensor extension), V1 instances, tensors -> model input.

Pure functions, testable without a server. The binary path never touches a tensor
element in Python: the body is sliced with ``memoryview`` and read with
``np.frombuffer`` (stock kserve 0.21 ``InferRequest.from_bytes`` turns every binary
element into a Python list item, which caps REST at ~50-77 req/s for a 64x64 image).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse, RequestedOutput
from PIL import Image

from edgeloop.core.preprocessing import ImageDecodeError, Preprocess, decode_image
from edgeloop.serving.errors import (
    DatatypeError,
    InvalidInputError,
    PayloadTooLargeError,
    ShapeError,
    UndecodableImageError,
)

PROTOCOL_ATTR = "edgeloop_protocol"  # set on InferRequest objects decoded by our REST route
# The image formats the server documents and decodes; PIL's other decoders (EPS, TIFF, ...) are never tried.
IMAGE_FORMATS = ("JPEG", "PNG")
ACCEPTED = "BYTES [N] (JPEG/PNG), UINT8 [N,H,W,3] (RGB frames, any size) or FP32 [N,3,S,S] (normalised)"
_NP_DTYPES: dict[str, np.dtype] = {"UINT8": np.dtype(np.uint8), "FP32": np.dtype("<f4")}


# --------------------------------------------------------------------------- REST v2 requests
def decode_rest_v2(
    body: bytes, header_length: str | int | None, model_name: str, model_version: str | None = None
) -> InferRequest:
    """An OIP v2 REST body -> kserve ``InferRequest``; binary tensors stay views of ``body``.

    ``header_length`` is the ``Inference-Header-Content-Length`` header: present for the
    binary extension (JSON header followed by raw tensor bytes), absent for pure JSON.
    """
    view = memoryview(body)
    if header_length is None:
        header, binary = _json_object(body, "request body"), False
        json_len = len(body)
    else:
        try:
            json_len = int(header_length)
        except ValueError:
            raise InvalidInputError(
                f"Inference-Header-Content-Length must be an integer, got {header_length!r}"
            ) from None
        if not 0 < json_len <= len(body):
            raise InvalidInputError(
                f"Inference-Header-Content-Length is {json_len} but the body has {len(body)} bytes; "
                "it must be the length of the JSON header that starts the body"
            )
        header, binary = _json_object(view[:json_len], "JSON header of the binary request"), True

    inputs_json = header.get("inputs")
    if not isinstance(inputs_json, list) or not inputs_json:
        raise InvalidInputError('the request needs "inputs": a non-empty list of tensors')
    offset = json_len
    inputs: list[InferInput] = []
    for i, spec in enumerate(inputs_json):
        if not isinstance(spec, dict):
            raise InvalidInputError(f"inputs[{i}] must be an object with name, shape, datatype and data")
        name, shape, datatype = spec.get("name"), spec.get("shape"), spec.get("datatype")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise InvalidInputError(f"inputs[{i}] needs a string 'name' and 'datatype'")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ShapeError(
                f"input '{name}': 'shape' must be a list of non-negative integers, got {shape!r}"
            )
        params = spec.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInputError(f"input '{name}': 'parameters' must be an object")
        inp = InferInput(name=name, shape=shape, datatype=datatype.upper(), parameters=params or None)
        size = params.get("binary_data_size")
        if size is not None:
            if not binary:
                raise InvalidInputError(
                    f"input '{name}' has binary_data_size but the request has no "
                    "Inference-Header-Content-Length header"
                )
            if not isinstance(size, int) or size < 0 or offset + size > len(body):
                raise ShapeError(
                    f"input '{name}': binary_data_size {size!r} runs past the end of the body "
                    f"({len(body) - offset} bytes left)"
                )
            inp._raw_data = view[offset : offset + size]  # zero-copy
            offset += size
        elif "data" in spec:
            inp._data = spec["data"]
        else:
            raise InvalidInputError(f"input '{name}' has neither 'data' nor binary_data_size")
        inputs.append(inp)

    outputs = header.get("outputs")
    requested = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
        ):
            raise InvalidInputError('"outputs" must be a list of objects with a "name"')
        requested = [RequestedOutput(name=o["name"], parameters=o.get("parameters") or {}) for o in outputs]
    params = header.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise InvalidInputError('"parameters" must be an object')
    req = InferRequest(
        model_name=model_name,
        infer_inputs=inputs,
        request_id=header.get("id"),
        parameters=params,
        request_outputs=requested,
        model_version=model_version,
    )
    setattr(req, PROTOCOL_ATTR, "rest_v2_binary" if binary else "rest_v2_json")
    return req


def _json_object(data: bytes | memoryview, what: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise InvalidInputError(
            f"the {what} is not valid JSON ({e.msg} at byte {e.pos}); for binary tensors set the "
            "Inference-Header-Content-Length header to the JSON header's length"
        ) from None
    if not isinstance(obj, dict):
        raise InvalidInputError(f"the {what} must be a JSON object")
    return obj


# --------------------------------------------------------------------------- tensors
def tensor_values(inp: InferInput) -> np.ndarray | list[bytes]:
    """One input tensor as a numpy array (UINT8/FP32) or a list of bytes (BYTES), validated."""
    datatype = inp.datatype.upper()
    shape = [int(d) for d in inp.shape]
    count = math.prod(shape)
    raw = inp._raw_data
    if datatype == "BYTES":
        items = _split_bytes(raw) if raw is not None else _json_bytes(inp.data, inp.name)
        if len(items) != count:
            raise ShapeError(
                f"input '{inp.name}': shape {shape} holds {count} elements but " f"{len(items)} were sent"
            )
        return items
    dtype = _NP_DTYPES.get(datatype)
    if dtype is None:
        raise DatatypeError(f"input '{inp.name}' has datatype {datatype}; this model takes {ACCEPTED}")
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise ShapeError(
                f"input '{inp.name}': shape {shape} of {datatype} needs "
                f"{count * dtype.itemsize} bytes, {len(raw)} were sent"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    try:
        arr = np.asarray(_as_sequence(inp.data), dtype=dtype)
    except (ValueError, TypeError, OverflowError) as e:
        raise DatatypeError(f"input '{inp.name}': data is not a list of {datatype} numbers ({e})") from None
    if arr.size != count:
        raise ShapeError(f"input '{inp.name}': shape {shape} holds {count} elements but {arr.size} were sent")
    return arr.reshape(shape)


def _as_sequence(data: Any) -> Any:
    if data is None:
        return []
    return data if isinstance(data, list | np.ndarray) else list(data)  # protobuf repeated fields


def _split_bytes(raw: bytes | memoryview) -> list[bytes]:
    """The binary BYTES layout: each element is a little-endian uint32 length then its bytes."""
    view, out, off, n = memoryview(raw), [], 0, len(raw)
    while off < n:
        if off + 4 > n:
            raise ShapeError("a BYTES tensor is truncated: an element length prefix is cut off")
        (length,) = struct.unpack_from("<I", view, off)
        off += 4
        if off + length > n:
            raise ShapeError(
                f"a BYTES tensor is truncated: an element says {length} bytes, " f"{n - off} are left"
            )
        out.append(view[off : off + length].tobytes())
        off += length
    return out


def _json_bytes(data: Any, name: str) -> list[bytes]:
    out = []
    for item in _flatten(_as_sequence(data)):
        if isinstance(item, bytes):
            out.append(item)
        elif isinstance(item, dict) and isinstance(item.get("b64"), str):
            out.append(_b64(item["b64"], name))
        elif isinstance(item, str):
            out.append(item.encode())
        else:
            raise DatatypeError(
                f"input '{name}': BYTES elements in JSON must be strings or "
                '{"b64": "<base64 image>"} objects'
            )
    return out


def _flatten(data: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for x in data:
        if isinstance(x, list):
            out.extend(_flatten(x))
        else:
            out.append(x)
    return out


def _b64(text: str, name: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"input '{name}': a b64 value is not valid base64") from None


# --------------------------------------------------------------------------- model input
class ModelInput:
    """One request's images for the batcher: uint8 NHWC frames at model size (normalised by the
    runner thread, for the whole batch at once, off the event loop), or a normalised float32
    NCHW tensor the client sent. ``sources``: each image's (width, height) as it was sent (a
    detector's boxes are answered in those pixels); None: the model's size."""

    __slots__ = ("_x", "frames", "pre", "sources")

    def __init__(
        self,
        x: np.ndarray | None,
        frames: np.ndarray | None,
        pre: Preprocess | None = None,
        sources: list[tuple[int, int]] | None = None,
    ):
        if x is None and (frames is None or pre is None):
            raise ValueError("ModelInput needs a tensor, or frames and their preprocessing")
        self._x, self.frames, self.pre, self.sources = x, frames, pre, sources

    def source_sizes(self, size: int) -> list[tuple[int, int]]:
        return self.sources if self.sources is not None else [(size, size)] * len(self)

    @property
    def x(self) -> np.ndarray:
        """The normalised float32 NCHW tensor (computed on first use when only frames were given)."""
        if self._x is None:
            assert self.frames is not None and self.pre is not None
            self._x = self.pre.normalize_batch(self.frames)
        return self._x

    @property
    def rows(self) -> np.ndarray:
        """What the runner takes: the frames when there are any (it normalises them), else the tensor."""
        return self.frames if self.frames is not None else self.x

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, rows: list[int]) -> ModelInput:
        sources = None if self.sources is None else [self.sources[i] for i in rows]
        if self.frames is not None:
            return ModelInput(None, self.frames[rows], self.pre, sources)
        return ModelInput(self.x[rows], None, sources=sources)


def to_model_input(
    values: np.ndarray | list[bytes],
    name: str,
    pre: Preprocess,
    max_images: int,
    max_image_pixels: int = 40_000_000,
    max_request_pixels: int | None = None,
) -> ModelInput:
    """Any accepted tensor -> the model's input, through the one shared :class:`Preprocess`.

    Bounded before any pixel is decoded: at most ``max_images``, each at most ``max_image_pixels``
    and all together at most ``max_request_pixels`` (read from the image headers; encoded images
    only as JPEG or PNG)."""
    s = pre.size
    if isinstance(values, list):  # encoded images
        _check_count(len(values), max_images)
        sizes = [_probe(data, i, name, max_image_pixels) for i, data in enumerate(values)]
        _check_budget(sum(w * h for w, h in sizes), max_request_pixels, name)
        frames = np.empty((len(values), s, s, 3), dtype=np.uint8)
        for i, data in enumerate(values):
            frames[i] = pre.resize(_decode(data, i, name))
        return ModelInput(None, frames, pre, sizes)
    if values.dtype == np.uint8:
        arr = values[None] if values.ndim == 3 else values
        if arr.ndim != 4 or arr.shape[3] != 3 or arr.shape[1] == 0 or arr.shape[2] == 0:
            raise ShapeError(
                f"input '{name}': UINT8 frames must be [N,H,W,3] (or [H,W,3]) RGB, "
                f"got {list(values.shape)}"
            )
        _check_count(arr.shape[0], max_images)
        _check_budget(arr.shape[0] * arr.shape[1] * arr.shape[2], max_request_pixels, name)
        sources = [(int(arr.shape[2]), int(arr.shape[1]))] * arr.shape[0]
        if arr.shape[1] != s or arr.shape[2] != s:
            resized = np.empty((arr.shape[0], s, s, 3), dtype=np.uint8)
            for i in range(arr.shape[0]):
                resized[i] = pre.resize(np.ascontiguousarray(arr[i]))
            arr = resized
        return ModelInput(None, arr, pre, sources)
    arr = values[None] if values.ndim == 3 else values
    if arr.ndim != 4 or tuple(arr.shape[1:]) != (3, s, s):
        raise ShapeError(
            f"input '{name}': FP32 input must be normalised [N,3,{s},{s}] (or [3,{s},{s}]), "
            f"got {list(values.shape)}; send UINT8 [N,H,W,3] frames to have the server resize"
        )
    _check_count(arr.shape[0], max_images)
    return ModelInput(np.ascontiguousarray(arr, dtype=np.float32), None)


def _check_count(n: int, max_images: int) -> None:
    if n == 0:
        raise ShapeError("the batch is empty: send at least one image")
    if n > max_images:
        raise PayloadTooLargeError(f"{n} images in one request; this server takes at most {max_images}")


def _check_budget(pixels: int, budget: int | None, name: str) -> None:
    if budget is not None and pixels > budget:
        raise PayloadTooLargeError(
            f"input '{name}': {pixels} pixels in one request; this server decodes at most {budget} "
            "per request: send fewer or smaller images"
        )


def _probe(data: bytes, i: int, name: str, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the header alone, refusing what is not JPEG/PNG or is over ``max_pixels``."""
    try:
        with Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS)) as probe:
            w, h = probe.size
    except Exception as e:  # PIL raises many kinds for what it cannot identify
        raise UndecodableImageError(
            f"input '{name}'[{i}]: could not decode {len(data)} bytes as an image ({type(e).__name__}); "
            "send JPEG or PNG bytes"
        ) from e
    if w * h > max_pixels:
        raise PayloadTooLargeError(
            f"input '{name}'[{i}]: a {w}x{h} image is over the {max_pixels} pixel limit"
        )
    return w, h


def _decode(data: bytes, i: int, name: str) -> Image.Image:
    try:
        return decode_image(data, IMAGE_FORMATS)
    except ImageDecodeError as e:
        raise UndecodableImageError(f"input '{name}'[{i}]: {e}") from e


# --------------------------------------------------------------------------- V1
def v1_instances(body: dict[str, Any], name: str = "instances") -> np.ndarray | list[bytes]:
    """V1 ``{"instances": [...]}``: b64 images (``{"b64": ...}``) or nested lists of one kind."""
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise InvalidInputError(
            'V1 requests need "instances": a non-empty list of images '
            '({"b64": "<JPEG/PNG>"}), UINT8 [H,W,3] frames or FP32 [3,S,S] arrays'
        )
    first = instances[0]
    if isinstance(first, dict):
        out = []
        for i, inst in enumerate(instances):
            b64 = inst.get("b64") if isinstance(inst, dict) else None
            if b64 is None and isinstance(inst, dict):  # {"image": {"b64": ...}} / {"image_bytes": ...}
                inner = next((v for v in inst.values() if isinstance(v, dict) and "b64" in v), None)
                b64 = inner.get("b64") if inner else None
            if not isinstance(b64, str):
                raise InvalidInputError(f'instances[{i}] must be {{"b64": "<base64 JPEG/PNG>"}}')
            out.append(_b64(b64, f"instances[{i}]"))
        return out
    try:
        arr = np.asarray(instances)
    except ValueError:
        raise ShapeError("instances have different shapes; send one shape per request") from None
    if arr.dtype.kind in "iu":
        if arr.min() < 0 or arr.max() > 255:
            raise DatatypeError("integer instances are read as UINT8 pixels and must lie in 0..255")
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        return arr.astype(np.float32)
    raise DatatypeError(f"instances of kind {arr.dtype} are not accepted; send {ACCEPTED}")


# --------------------------------------------------------------------------- REST v2 responses
def encode_rest_v2(
    response: InferResponse, requested: list[RequestedOutput] | None, parameters: dict[str, Any] | None
) -> tuple[bytes, int | None]:
    """``InferResponse`` with numpy data -> (body, json_length or None), vectorised.

    Outputs go binary when the request asked for it (``binary_data_output`` request
    parameter, or ``binary_data`` on a requested output), as the OIP extension says.
    """
    binary_default = bool((parameters or {}).get("binary_data_output", False))
    per_output = {r.name: (r.parameters or {}).get("binary_data") for r in requested or []}
    outs, raws = [], []
    for out in response.outputs:
        data = out.data
        arr = data if isinstance(data, np.ndarray) else np.asarray(data)
        binary = per_output.get(out.name)
        binary = binary_default if binary is None else bool(binary)
        entry: dict[str, Any] = {"name": out.name, "shape": list(arr.shape), "datatype": out.datatype}
        if binary:
            raw = serialize_bytes(arr) if out.datatype == "BYTES" else np.ascontiguousarray(arr).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            raws.append(raw)
        elif out.datatype == "BYTES":
            entry["data"] = [v.decode() if isinstance(v, bytes) else str(v) for v in arr.reshape(-1)]
        else:
            entry["data"] = np.ascontiguousarray(arr).reshape(-1)
        outs.append(entry)
    doc = {
        "id": response.id,
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outs,
    }
    if response.parameters:
        doc["parameters"] = dict(response.parameters)
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raws:
        return header, None
    return b"".join([header, *raws]), len(header)


def encode_grpc(response: InferResponse) -> Any:
    """``InferResponse`` with numpy data -> ``ModelInferResponse``, every output as raw contents
    (what kserve's ``to_grpc`` does for numpy outputs, without its per-output dict round trip)."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    msg = pb.ModelInferResponse(
        id=response.id, model_name=response.model_name, model_version=response.model_version or ""
    )
    for out in response.outputs:
        arr = out.data if isinstance(out.data, np.ndarray) else np.asarray(out.data)
        tensor = msg.outputs.add()
        tensor.name, tensor.datatype = out.name, out.datatype
        tensor.shape.extend(arr.shape)
        msg.raw_output_contents.append(
            serialize_bytes(arr) if out.datatype == "BYTES" else np.ascontiguousarray(arr).tobytes()
        )
    return msg


def serialize_bytes(arr: np.ndarray) -> bytes:
    parts = []
    for v in arr.reshape(-1):
        b = v if isinstance(v, bytes) else str(v).encode()
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)
