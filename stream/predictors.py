"""Where frames get classified (or their defects detected): in process (ONNX Runtime) or by the
model server over gRPC.

Both implement :class:`Predictor`: ``predict(uint8 NHWC frames) -> [Prediction]``,
plus the model's name, version and input size (so readers resize once, on their
own threads, with the shared :class:`~edgeloop.core.preprocessing.Preprocess`).
Switching is one constructor: ``OnnxPredictor(model_dir)`` or
``GrpcPredictor("host:port", model_name)``.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeloop.core.errors import EdgeloopError
from edgeloop.core.model_card import CLASSIFICATION, DETECTION, PROBS_OUTPUT
from edgeloop.core.preprocessing import Preprocess, PreprocessConfig

log = logging.getLogger(__name__)


class PredictorError(EdgeloopError):
    """The model (or the model server) could not be loaded or reached; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Prediction:
    label: str
    score: float
    probabilities: np.ndarray  # float32 [C], in the order of ``Predictor.labels`` when known
    # a detection model's answer: the frame's detections (label, score, x, y, width, height) in the
    # pixels of the frame it was given (the model's input size); None for a classifier
    detections: list[dict[str, Any]] | None = None


class Predictor(Protocol):
    model_name: str
    model_version: str | None
    labels: list[str] | None
    preprocess: Preprocess  # resize to the model's input size (normalisation happens in the model's runtime)
    # the model card's FFmpeg-resize agreement (ModelCard.stream_resize); None: not known here
    resize_evidence: dict[str, Any] | None

    def predict(self, frames: np.ndarray) -> list[Prediction]:
        """uint8 [N, S, S, 3] frames -> one prediction per frame, in order."""
        ...

    def close(self) -> None: ...


def _detections(per_image: list[list[dict[str, Any]]]) -> list[Prediction]:
    """Per frame, the detections; ``label``/``score`` are its most confident one's (``""``/0 when none)."""
    out = []
    for dets in per_image:
        best = max(dets, key=lambda d: d["score"], default=None)
        label, score = (best["label"], float(best["score"])) if best else ("", 0.0)
        out.append(Prediction(label, score, np.zeros(0, dtype=np.float32), detections=dets))
    return out


def _predictions(
    probs: np.ndarray, labels: list[str] | None, names: list[str] | None = None
) -> list[Prediction]:
    top = probs.argmax(axis=1)
    out = []
    for i, k in enumerate(top):
        label = names[i] if names is not None else (labels[k] if labels else str(int(k)))
        out.append(Prediction(label=label, score=float(probs[i, k]), probabilities=probs[i]))
    return out


class OnnxPredictor:
    """ONNX Runtime in this process, with the model card's preprocessing.

    The model is verified and opened by :func:`edgeloop.core.model_loader.open_model`, the
    same rule as the model server's: a model whose files do not match its card (or whose card
    records no digest for ``model.onnx``) is refused with
    :class:`~edgeloop.core.errors.IntegrityError`.
    """

    def __init__(self, model_dir: Path | str, intra_op_threads: int = 0, sessions: int = 1):
        """``sessions``: one per inference worker thread, each with cores/sessions threads (one
        over every core for a single worker): a session whose thread pool spans the cores stalls
        at every operator while a decoder thread holds one of them."""
        from edgeloop.core.model_loader import OrtSettings, ThreadSessions, open_model

        model = open_model(
            model_dir,
            OrtSettings(providers=["cpu"], intra_op_threads=intra_op_threads),
            sessions=sessions,
            tasks=(CLASSIFICATION, DETECTION),
        )
        self._sessions = ThreadSessions([model.session, *model.extra_sessions])
        self.card = model.card
        self.model_name = model.card.name
        self.model_version = model.card.version
        self.labels = list(model.card.labels)
        self.preprocess = Preprocess(model.card.preprocessing)
        self.resize_evidence = model.card.stream_resize
        self._input = model.card.input_name
        self._detects = model.card.task == DETECTION
        self._label_bytes = np.array([lbl.encode() for lbl in self.labels], dtype=object)

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def predict(self, frames: np.ndarray) -> list[Prediction]:
        x = self.preprocess.normalize_batch(frames)
        if self._detects:
            from edgeloop.serving import detection

            size = self.preprocess.size
            res = detection.run_padded(self._sessions.get(), self._input, x)
            dets = detection.outputs(res, [(size, size)] * len(x), size, self._label_bytes)
            return _detections(dets.per_image())
        (probs,) = self._sessions.get().run([PROBS_OUTPUT], {self._input: x})
        return _predictions(np.asarray(probs, dtype=np.float32), self.labels)

    def close(self) -> None:
        from edgeloop.core.model_loader import ThreadSessions

        self._sessions = ThreadSessions([])


class GrpcPredictor:
    """The model server over OIP v2 gRPC (through :class:`edgeloop.serving.client.GrpcClient`).

    Sends UINT8 [N, S, S, 3] frames and reads ``label`` and ``probabilities``. The
    input size S comes from the model's metadata (its FP32 input is [-1, 3, S, S]),
    so frames are resized here, on the readers' threads, and only S x S pixels
    cross the wire; the server applies the same preprocessing from the same card.
    """

    def __init__(
        self,
        address: str,
        model_name: str,
        model_version: str | None = None,
        input_size: int | None = None,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 10.0,
        security: Any = None,
    ):
        """``security``: a :class:`edgeloop.serving.client.ClientSecurity` (TLS, client certificate,
        token) for a server started with them."""
        import grpc

        from edgeloop.serving.client import NO_SECURITY, ClientError, GrpcClient

        self.address = address
        self._client = GrpcClient(address, model_name, timeout_s=timeout_s, security=security or NO_SECURITY)
        try:
            grpc.channel_ready_future(self._client._channel).result(timeout=connect_timeout_s)
        except grpc.FutureTimeoutError:
            self._client.close()
            raise PredictorError(
                f"cannot reach the model server at {address} (gRPC) within {connect_timeout_s:.0f} s: "
                "start it with `edgeloop serve`, or check --server host:port (and --tls-ca if it serves TLS)"
            ) from None
        try:
            meta = self._client.metadata(model_version)
        except ClientError as e:
            self._client.close()
            if e.status == "UNAUTHENTICATED":
                raise PredictorError(
                    f"the model server at {address} refused the token (or got none): "
                    "pass the file holding its token with --auth-token-file"
                ) from e
            raise PredictorError(
                f"the model server at {address} has no model {model_name!r} "
                f"(version {model_version or 'default'}) ready: {e}; check --model-name"
            ) from e
        self.model_name = meta.get("name") or model_name
        versions = meta.get("versions") or []
        self.model_version = model_version or (versions[0] if len(versions) == 1 else None)
        self._version = model_version
        self.labels: list[str] | None = _labels_from_metadata(meta)
        size = input_size or _size_from_metadata(meta)
        if size is None:
            size = 224
            log.warning(
                "model %s: input size not in its metadata; sending 224x224 frames (set --input-size)",
                model_name,
            )
        self.preprocess = Preprocess(PreprocessConfig(size=size))
        # the server's metadata does not carry the model card's resize evidence: --resize decides
        self.resize_evidence: dict[str, Any] | None = None

    def predict(self, frames: np.ndarray) -> list[Prediction]:
        from edgeloop.serving.client import ClientError

        try:
            pred = self._client.infer_frames(frames, version=self._version)
        except ClientError as e:
            raise PredictorError(f"model server {self.address}: {e}") from e
        self.model_version = pred.model_version or self.model_version
        if pred.detections is not None:
            return _detections(pred.detections)
        probs = np.asarray(pred.probabilities, dtype=np.float32)
        return _predictions(probs, self.labels, list(pred.labels) if pred.labels else None)

    def close(self) -> None:
        self._client.close()


def _size_from_metadata(meta: dict[str, Any]) -> int | None:
    for t in meta.get("inputs", []):
        shape = [int(d) for d in t.get("shape", [])]
        if len(shape) == 4 and shape[1] == 3 and shape[2] > 0 and shape[2] == shape[3]:
            return int(shape[2])
        if len(shape) == 4 and shape[3] == 3 and shape[1] > 0 and shape[1] == shape[2]:
            return int(shape[1])
    return None


def _labels_from_metadata(meta: dict[str, Any]) -> list[str] | None:
    """The class names, when the server lists them in the model's metadata parameters."""
    value = meta.get("parameters", {}).get("labels")
    if isinstance(value, dict):  # an InferParameter: {"stringParam": "[...]"}
        value = next(iter(value.values()), None)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def decode_bytes_tensor(raw: bytes) -> list[str]:
    """OIP raw BYTES tensor: each element is a 4-byte little-endian length, then the bytes."""
    out, off = [], 0
    while off < len(raw):
        (n,) = struct.unpack_from("<I", raw, off)
        off += 4
        out.append(bytes(raw[off : off + n]).decode())
        off += n
    return out
