"""Where frames get classified: in process (ONNX Runtime) or by the model server over gRPC.

Both implement :class:`Predictor`: ``predict(uint8 NHWC frames) -> [Prediction]``,
plus the model's name, version and input size (so readers resize once, on their
own threads, with the shared :class:`~edgeloop.preprocessing.Preprocess`).
Switching is one constructor: ``OnnxPredictor(model_dir)`` or
``GrpcPredictor("host:port", model_name)``.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeloop.errors import EdgeloopError
from edgeloop.model_card import MODEL_FILE, PROBS_OUTPUT, ModelCard
from edgeloop.preprocessing import Preprocess, PreprocessConfig

log = logging.getLogger(__name__)


class PredictorError(EdgeloopError):
    """The model (or the model server) could not be loaded or reached; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Prediction:
    label: str
    score: float
    probabilities: np.ndarray  # float32 [C], in the order of ``Predictor.labels`` when known


class Predictor(Protocol):
    model_name: str
    model_version: str | None
    labels: list[str] | None
    preprocess: Preprocess  # resize to the model's input size (normalisation happens in the model's runtime)

    def predict(self, frames: np.ndarray) -> list[Prediction]:
        """uint8 [N, S, S, 3] frames -> one prediction per frame, in order."""
        ...

    def close(self) -> None: ...


def _predictions(probs: np.ndarray, labels: list[str] | None, names: list[str] | None = None) -> list[Prediction]:
    top = probs.argmax(axis=1)
    out = []
    for i, k in enumerate(top):
        label = names[i] if names is not None else (labels[k] if labels else str(int(k)))
        out.append(Prediction(label=label, score=float(probs[i, k]), probabilities=probs[i]))
    return out


class OnnxPredictor:
    """ONNX Runtime in this process, with the model card's preprocessing."""

    def __init__(self, model_dir: Path | str, intra_op_threads: int = 0, verify: bool = True):
        import onnxruntime as ort

        model_dir = Path(model_dir)
        card = ModelCard.load(model_dir)
        if verify:
            if card.files:
                try:
                    card.verify(model_dir)
                except Exception as e:
                    raise PredictorError(f"model in {model_dir} failed its integrity check: {e}") from e
            else:
                log.warning("model card in %s lists no file digests; the model file is not verified", model_dir)
        path = model_dir / MODEL_FILE
        if not path.exists():
            raise PredictorError(f"{path} does not exist: a model directory holds {MODEL_FILE} and its card")
        opts = ort.SessionOptions()
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        try:
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise PredictorError(f"ONNX Runtime could not load {path}: {e}") from e
        self.card = card
        self.model_name = card.name
        self.model_version = card.version
        self.labels = list(card.labels)
        self.preprocess = Preprocess(card.preprocessing)
        self._input = card.input_name

    def predict(self, frames: np.ndarray) -> list[Prediction]:
        x = self.preprocess.normalize_batch(frames)
        (probs,) = self._session.run([PROBS_OUTPUT], {self._input: x})
        return _predictions(np.asarray(probs, dtype=np.float32), self.labels)

    def close(self) -> None:
        self._session = None


class GrpcPredictor:
    """The model server over OIP v2 gRPC: UINT8 [N, S, S, 3] frames in, ``label`` and ``probabilities`` out.

    The input size comes from the model's metadata (its FP32 input is [-1, 3, S, S]);
    frames are resized client side so only S x S pixels cross the wire.
    """

    def __init__(self, address: str, model_name: str, model_version: str | None = None,
                 input_size: int | None = None, timeout_s: float = 10.0, connect_timeout_s: float = 10.0):
        import grpc

        from edgeloop.stream._grpc import pb, pb_grpc

        self._pb = pb
        self.address = address
        self._timeout = timeout_s
        self._channel = grpc.insecure_channel(
            address, options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
        try:
            grpc.channel_ready_future(self._channel).result(timeout=connect_timeout_s)
        except grpc.FutureTimeoutError:
            self._channel.close()
            raise PredictorError(
                f"cannot reach the model server at {address} (gRPC) within {connect_timeout_s:.0f} s: "
                "start it with `edgeloop serve`, or check --server host:port") from None
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        try:
            meta = self._stub.ModelMetadata(pb.ModelMetadataRequest(name=model_name, version=model_version or ""),
                                            timeout=timeout_s)
        except grpc.RpcError as e:
            self._channel.close()
            raise PredictorError(f"model server at {address} has no model {model_name!r} ready "
                                 f"({e.code().name}: {e.details()}); pass --model-name") from e
        self.model_name = meta.name or model_name
        self.model_version = model_version
        self.labels: list[str] | None = None
        size = input_size or _size_from_metadata(meta)
        if size is None:
            size = 224
            log.warning("model %s: input size not in its metadata; sending 224x224 frames (set --input-size)",
                        model_name)
        self.preprocess = Preprocess(PreprocessConfig(size=size))
        self._requested_version = model_version or ""

    def predict(self, frames: np.ndarray) -> list[Prediction]:
        pb = self._pb
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        req = pb.ModelInferRequest(model_name=self.model_name, model_version=self._requested_version)
        inp = req.inputs.add()
        inp.name, inp.datatype = "images", "UINT8"
        inp.shape.extend(frames.shape)
        req.raw_input_contents.append(frames.tobytes())
        for name in ("label", PROBS_OUTPUT):
            req.outputs.add().name = name
        resp = self._stub.ModelInfer(req, timeout=self._timeout)
        if resp.model_version:
            self.model_version = resp.model_version
        outs = {o.name: (o, i) for i, o in enumerate(resp.outputs)}
        if PROBS_OUTPUT not in outs:
            raise PredictorError(f"model server answered without {PROBS_OUTPUT!r}")
        o, i = outs[PROBS_OUTPUT]
        if resp.raw_output_contents:
            probs = np.frombuffer(resp.raw_output_contents[i], dtype="<f4").reshape(tuple(o.shape))
        else:
            probs = np.asarray(o.contents.fp32_contents, dtype=np.float32).reshape(tuple(o.shape))
        names = None
        if "label" in outs:
            lo, li = outs["label"]
            if resp.raw_output_contents:
                names = decode_bytes_tensor(resp.raw_output_contents[li])
            else:
                names = [b.decode() for b in lo.contents.bytes_contents]
        return _predictions(probs, None, names)

    def close(self) -> None:
        self._channel.close()


def _size_from_metadata(meta: Any) -> int | None:
    for t in meta.inputs:
        shape = list(t.shape)
        if len(shape) == 4 and shape[1] == 3 and shape[2] > 0 and shape[2] == shape[3]:
            return int(shape[2])
        if len(shape) == 4 and shape[3] == 3 and shape[1] > 0 and shape[1] == shape[2]:
            return int(shape[1])
    return None


def decode_bytes_tensor(raw: bytes) -> list[str]:
    """OIP raw BYTES tensor: each element is a 4-byte little-endian length, then the bytes."""
    out, off = [], 0
    while off < len(raw):
        (n,) = struct.unpack_from("<I", raw, off)
        off += 4
        out.append(bytes(raw[off:off + n]).decode())
        off += n
    return out
