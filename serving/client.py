"""A small client for the edgeloop model server: gRPC and REST (binary tensors), sync and async.

No kserve or tritonclient import: the OIP messages come from a private protobuf
descriptor pool (:mod:`edgeloop.serving._oip_descriptor`), so this module can live in the same
process as either of them. Used by the stream processor and the staging evaluation::

    with GrpcClient("127.0.0.1:8081", model="inspection") as c:
        pred = c.infer_frames(frames)          # uint8 [N,H,W,3], any H, W
        pred.labels, pred.probabilities        # list[str], float32 [N, C]
    RestClient("http://127.0.0.1:8080").infer_images([jpeg_bytes], version="candidate")

A server started with TLS and/or a token needs the same from its clients::

    sec = ClientSecurity.from_files(ca="ca.pem", cert="client.pem", key="client.key", token_file="token")
    GrpcClient("edge-1:8081", security=sec)            # TLS channel, token in every call's metadata
    RestClient("https://edge-1:8080", security=sec)    # HTTPS, Authorization: Bearer <token>
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from edgeloop.serving import detection

INPUT = "images"


@dataclass
class Prediction:
    labels: list[str]
    probabilities: np.ndarray  # float32 [N, C]
    embedding: np.ndarray | None  # float32 [N, D] when asked for
    model_name: str
    model_version: str
    # a detection model's answer: per image, its detections (label, score, x, y, width, height)
    detections: list[list[dict[str, Any]]] | None = None


class ClientError(RuntimeError):
    """The server refused the request; ``status`` is the HTTP status or the gRPC code name."""

    def __init__(self, status: int | str, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ClientSecurity:
    """How a client reaches a server started with ``--tls-cert`` / ``--tls-client-ca`` / ``--auth-token-file``.

    ``ca``: the PEM CA that signed the server's certificate (None with ``tls`` = the system's
    trust store); ``cert``/``key``: this client's certificate for mutual TLS; ``token``: sent as
    ``Authorization: Bearer`` (REST) and ``authorization`` metadata (gRPC).
    """

    tls: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token: str | None = None

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        token_file: str | Path | None = None,
        tls: bool = False,
    ) -> ClientSecurity:
        if bool(cert) != bool(key):
            raise ValueError("a client certificate needs its key (and the key its certificate)")
        token = None
        if token_file:
            token = Path(token_file).read_text().strip()
            if not token:
                raise ValueError(f"the token file {token_file} is empty")
        return cls(
            tls=tls or bool(ca or cert),
            ca=Path(ca) if ca else None,
            cert=Path(cert) if cert else None,
            key=Path(key) if key else None,
            token=token,
        )

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca is not None or self.cert is not None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        return (("authorization", f"Bearer {self.token}"),) if self.token else None

    def ssl_context(self) -> Any:
        """An ``ssl.SSLContext`` that verifies the server (``ca`` or the system store) and presents ``cert``."""
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        if self.cert is not None and self.key is not None:
            ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx

    def grpc_credentials(self) -> Any:
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )

    def rest_url(self, url: str) -> str:
        """``url``, with ``https://`` when TLS is on (an ``http://`` URL would be refused by the server)."""
        if self.uses_tls and url.startswith("http://"):
            return "https://" + url[len("http://") :]
        return url


NO_SECURITY = ClientSecurity()


# ------------------------------------------------------------------------------- tensors
def _tensor(data: np.ndarray | Sequence[bytes]) -> tuple[str, list[int], bytes]:
    """(datatype, shape, raw bytes) for frames (UINT8), normalised input (FP32) or encoded images (BYTES)."""
    if isinstance(data, np.ndarray):
        if data.dtype == np.uint8:
            return "UINT8", list(data.shape), np.ascontiguousarray(data).tobytes()
        if data.dtype == np.float32:
            return "FP32", list(data.shape), np.ascontiguousarray(data).tobytes()
        raise TypeError(f"send uint8 frames or float32 normalised input, not {data.dtype}")
    items = [bytes(b) for b in data]
    return "BYTES", [len(items)], b"".join(struct.pack("<I", len(b)) + b for b in items)


def _split_bytes(raw: bytes) -> list[str]:
    out, off = [], 0
    while off < len(raw):
        (n,) = struct.unpack_from("<I", raw, off)
        out.append(raw[off + 4 : off + 4 + n].decode())
        off += 4 + n
    return out


def _prediction(name: str, version: str, outputs: dict[str, tuple[str, list[int], Any]]) -> Prediction:
    def arr(key: str) -> np.ndarray | None:
        if key not in outputs:
            return None
        datatype, shape, data = outputs[key]
        dtype = np.int32 if datatype == "INT32" else np.float32
        if isinstance(data, bytes | bytearray | memoryview):
            return np.frombuffer(data, dtype=dtype).reshape(shape)
        return np.asarray(data, dtype=dtype).reshape(shape)

    def strings(key: str) -> list[str]:
        if key not in outputs:
            return []
        data = outputs[key][2]
        return _split_bytes(bytes(data)) if isinstance(data, bytes | bytearray | memoryview) else list(data)

    probs = arr("probabilities")
    found = None
    boxes, scores, count = arr(detection.BOXES), arr(detection.SCORES), arr(detection.COUNT)
    if boxes is not None and scores is not None and count is not None:
        labels = np.array([s.encode() for s in strings(detection.LABELS)], dtype=object)
        found = detection.Detections(boxes.reshape(-1, 4), scores, labels, count).per_image()
    return Prediction(
        strings("label"),
        probs if probs is not None else np.empty((0, 0), np.float32),
        arr("embedding"),
        name,
        version,
        found,
    )


# ------------------------------------------------------------------------------- REST
def rest_request(
    data: np.ndarray | Sequence[bytes],
    embedding: bool = False,
    binary: bool = True,
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """An OIP v2 REST body + headers (binary tensor extension, binary outputs) for ``data``;
    ``parameters``: more request parameters (a detection model's ``score_threshold``)."""
    datatype, shape, raw = _tensor(data)
    params: dict[str, Any] = {"binary_data_output": binary, **(parameters or {})}
    if embedding:
        params["embedding"] = True
    if binary:
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": INPUT,
                        "shape": shape,
                        "datatype": datatype,
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "parameters": params,
            }
        )
        return header + raw, {
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        }
    if datatype == "BYTES":
        import base64

        values: Any = [{"b64": base64.b64encode(b).decode()} for b in data]  # type: ignore[union-attr]
    else:
        values = np.asarray(data).reshape(-1).tolist()
    body = orjson.dumps(
        {
            "inputs": [{"name": INPUT, "shape": shape, "datatype": datatype, "data": values}],
            "parameters": params,
        }
    )
    return body, {"Content-Type": "application/json"}


def rest_response(status: int, headers: Any, body: bytes) -> Prediction:
    if status != 200:
        try:
            msg = orjson.loads(body).get("error", body[:200].decode(errors="replace"))
        except orjson.JSONDecodeError:
            msg = body[:200].decode(errors="replace")
        raise ClientError(status, msg)
    hl = headers.get("inference-header-content-length")
    doc = orjson.loads(body[: int(hl)] if hl else body)
    off = int(hl) if hl else 0
    outputs = {}
    for o in doc["outputs"]:
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            data: Any = body[off : off + size]
            off += size
        else:
            data = o["data"]
        outputs[o["name"]] = (o["datatype"], o["shape"], data)
    return _prediction(doc["model_name"], doc.get("model_version") or "", outputs)


def _rest_path(model: str, version: str | None) -> str:
    return f"/v2/models/{model}/versions/{version}/infer" if version else f"/v2/models/{model}/infer"


class RestClient:
    def __init__(
        self,
        url: str,
        model: str = "inspection",
        timeout_s: float = 30.0,
        binary: bool = True,
        security: ClientSecurity = NO_SECURITY,
    ):
        import httpx

        self.model = model
        self.binary = binary
        self._http = httpx.Client(
            base_url=security.rest_url(url).rstrip("/"),
            timeout=timeout_s,
            headers=security.headers(),
            verify=security.ssl_context() if security.uses_tls else True,
        )

    def infer(
        self,
        data: np.ndarray | Sequence[bytes],
        version: str | None = None,
        embedding: bool = False,
        parameters: dict[str, Any] | None = None,
    ) -> Prediction:
        body, headers = rest_request(data, embedding, self.binary, parameters)
        r = self._http.post(_rest_path(self.model, version), content=body, headers=headers)
        return rest_response(r.status_code, r.headers, r.content)

    def infer_frames(
        self, frames: np.ndarray, version: str | None = None, embedding: bool = False
    ) -> Prediction:
        return self.infer(np.asarray(frames, dtype=np.uint8), version, embedding)

    def infer_images(
        self,
        images: Sequence[bytes],
        version: str | None = None,
        embedding: bool = False,
        parameters: dict[str, Any] | None = None,
    ) -> Prediction:
        return self.infer(list(images), version, embedding, parameters)

    def ready(self) -> bool:
        try:
            return self._http.get("/v2/health/ready").status_code == 200
        except Exception:
            return False

    def metadata(self, version: str | None = None) -> dict[str, Any]:
        path = f"/v2/models/{self.model}" + (f"/versions/{version}" if version else "")
        r = self._http.get(path)
        if r.status_code != 200:
            raise ClientError(r.status_code, r.text)
        return r.json()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRestClient:
    """Async REST client on aiohttp (a kserve dependency): far less per-request overhead than httpx,
    which matters when one process generates the load for a benchmark."""

    def __init__(
        self,
        url: str,
        model: str = "inspection",
        timeout_s: float = 30.0,
        binary: bool = True,
        max_connections: int = 64,
        security: ClientSecurity = NO_SECURITY,
    ):
        self.url = security.rest_url(url).rstrip("/")
        self.model = model
        self.binary = binary
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.security = security
        self._session: Any = None

    async def infer(
        self, data: np.ndarray | Sequence[bytes], version: str | None = None, embedding: bool = False
    ) -> Prediction:
        import aiohttp

        if self._session is None:
            sec = self.security
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.max_connections, ssl=sec.ssl_context() if sec.uses_tls else True
                ),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers=sec.headers(),
            )
        body, headers = rest_request(data, embedding, self.binary)
        async with self._session.post(
            self.url + _rest_path(self.model, version), data=body, headers=headers
        ) as r:
            content = await r.read()
            return rest_response(r.status, {k.lower(): v for k, v in r.headers.items()}, content)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


# ------------------------------------------------------------------------------- gRPC
@cache
def _messages() -> dict[str, Any]:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    from edgeloop.serving._oip_descriptor import serialized

    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(serialized()))
    names = (
        "ModelInferRequest",
        "ModelInferResponse",
        "ServerReadyRequest",
        "ServerReadyResponse",
        "ModelMetadataRequest",
        "ModelMetadataResponse",
    )
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{n}")) for n in names}


_SERVICE = "/inference.GRPCInferenceService/"


def grpc_request(
    model: str, data: np.ndarray | Sequence[bytes], version: str | None = None, embedding: bool = False
) -> Any:
    """A ``ModelInferRequest`` with the tensor in ``raw_input_contents`` (no per-element encoding)."""
    m = _messages()
    datatype, shape, raw = _tensor(data)
    req = m["ModelInferRequest"](model_name=model, model_version=version or "")
    t = req.inputs.add()
    t.name, t.datatype = INPUT, datatype
    t.shape.extend(shape)
    req.raw_input_contents.append(raw)
    if embedding:
        req.parameters["embedding"].bool_param = True
    return req


def grpc_response(resp: Any) -> Prediction:
    outputs = {}
    raws = list(resp.raw_output_contents)
    for i, o in enumerate(resp.outputs):
        if raws:
            data: Any = raws[i]
        elif o.datatype == "BYTES":
            data = [b.decode() for b in o.contents.bytes_contents]
        elif o.datatype == "INT32":
            data = list(o.contents.int_contents)
        else:
            data = list(o.contents.fp32_contents)
        outputs[o.name] = (o.datatype, list(o.shape), data)
    return _prediction(resp.model_name, resp.model_version, outputs)


def _grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def _channel(target: str, max_message_bytes: int, security: ClientSecurity, aio: bool = False) -> Any:
    import grpc
    from grpc import aio as grpc_aio

    module: Any = grpc_aio if aio else grpc
    options = _grpc_options(max_message_bytes)
    if security.uses_tls:
        return module.secure_channel(target, security.grpc_credentials(), options=options)
    return module.insecure_channel(target, options=options)


class GrpcClient:
    def __init__(
        self,
        target: str,
        model: str = "inspection",
        timeout_s: float = 30.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        security: ClientSecurity = NO_SECURITY,
    ):
        import grpc

        self.model = model
        self.timeout_s = timeout_s
        self._grpc = grpc
        self._md = security.metadata()
        self._channel = _channel(target, max_message_bytes, security)
        m = _messages()
        self._infer = self._channel.unary_unary(
            _SERVICE + "ModelInfer",
            request_serializer=m["ModelInferRequest"].SerializeToString,
            response_deserializer=m["ModelInferResponse"].FromString,
        )
        self._ready = self._channel.unary_unary(
            _SERVICE + "ServerReady",
            request_serializer=m["ServerReadyRequest"].SerializeToString,
            response_deserializer=m["ServerReadyResponse"].FromString,
        )
        self._metadata = self._channel.unary_unary(
            _SERVICE + "ModelMetadata",
            request_serializer=m["ModelMetadataRequest"].SerializeToString,
            response_deserializer=m["ModelMetadataResponse"].FromString,
        )

    def infer(
        self, data: np.ndarray | Sequence[bytes], version: str | None = None, embedding: bool = False
    ) -> Prediction:
        try:
            resp = self._infer(
                grpc_request(self.model, data, version, embedding), timeout=self.timeout_s, metadata=self._md
            )
        except self._grpc.RpcError as e:
            raise ClientError(e.code().name, e.details() or "") from e
        return grpc_response(resp)

    def infer_frames(
        self, frames: np.ndarray, version: str | None = None, embedding: bool = False
    ) -> Prediction:
        return self.infer(np.asarray(frames, dtype=np.uint8), version, embedding)

    def infer_images(
        self, images: Sequence[bytes], version: str | None = None, embedding: bool = False
    ) -> Prediction:
        return self.infer(list(images), version, embedding)

    def ready(self) -> bool:
        try:
            req = _messages()["ServerReadyRequest"]()
            return bool(self._ready(req, timeout=self.timeout_s, metadata=self._md).ready)
        except self._grpc.RpcError:
            return False

    def metadata(self, version: str | None = None) -> dict[str, Any]:
        from google.protobuf.json_format import MessageToDict

        req = _messages()["ModelMetadataRequest"](name=self.model, version=version or "")
        try:
            return MessageToDict(self._metadata(req, timeout=self.timeout_s, metadata=self._md))
        except self._grpc.RpcError as e:
            raise ClientError(e.code().name, e.details() or "") from e

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncGrpcClient:
    def __init__(
        self,
        target: str,
        model: str = "inspection",
        timeout_s: float = 30.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        security: ClientSecurity = NO_SECURITY,
    ):
        import grpc

        self.model = model
        self.timeout_s = timeout_s
        self._grpc = grpc
        self._md = security.metadata()
        self._channel = _channel(target, max_message_bytes, security, aio=True)
        m = _messages()
        self._infer = self._channel.unary_unary(
            _SERVICE + "ModelInfer",
            request_serializer=m["ModelInferRequest"].SerializeToString,
            response_deserializer=m["ModelInferResponse"].FromString,
        )

    async def infer(
        self, data: np.ndarray | Sequence[bytes], version: str | None = None, embedding: bool = False
    ) -> Prediction:
        try:
            resp = await self._infer(
                grpc_request(self.model, data, version, embedding), timeout=self.timeout_s, metadata=self._md
            )
        except self._grpc.RpcError as e:
            raise ClientError(e.code().name, e.details() or "") from e
        return grpc_response(resp)

    async def aclose(self) -> None:
        await self._channel.close()
