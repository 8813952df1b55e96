"""The peer baseline: stock KServe 0.21 (its own ``ModelServer``, defaults as shipped) serving the
same ONNX file with the custom-model pattern KServe documents: a ``kserve.Model`` whose
``preprocess`` reads the OIP tensor (``as_numpy``) and normalises it with the same preprocessing,
and whose ``predict`` runs ONNX Runtime per request. No edgeloop serving code is involved.

    python -m benchmarks.kserve_peer --model_dir DIR --http_port 8090 --grpc_port 8091

Stock ``ModelServer`` binds every interface (it has no bind-address option): run it on a trusted box.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import kserve
import numpy as np
import onnxruntime as ort
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from edgeloop.core.preprocessing import Preprocess, PreprocessConfig


class OnnxPeer(kserve.Model):
    def __init__(self, name: str, model_dir: Path):
        super().__init__(name)
        self.model_dir = model_dir
        self.load()

    def load(self) -> bool:
        card = json.loads((self.model_dir / "model_card.json").read_text())
        self.pre = Preprocess(PreprocessConfig(**card["preprocessing"]))
        self.labels = np.array(card["labels"], dtype=object)
        self.session = ort.InferenceSession(
            str(self.model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        self.ready = True
        return self.ready

    def preprocess(self, payload: InferRequest, headers: dict[str, str] | None = None) -> np.ndarray:
        return self.pre.normalize_batch(payload.inputs[0].as_numpy())

    def predict(self, x: np.ndarray, headers: dict[str, str] | None = None) -> InferResponse:
        (probs,) = self.session.run(["probabilities"], {"images": x})
        labels = self.labels[probs.argmax(1)]
        return InferResponse(
            response_id="",
            model_name=self.name,
            infer_outputs=[
                InferOutput("label", list(labels.shape), "BYTES", data=labels.tolist()),
                InferOutput("probabilities", list(probs.shape), "FP32", data=probs),
            ],
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model_dir", type=Path, required=True)
    ap.add_argument("--name", default=None)
    ap.add_argument("--http_port", type=int, default=8090)
    ap.add_argument("--grpc_port", type=int, default=8091)
    args = ap.parse_args()
    name = args.name or args.model_dir.name
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port).start(
        [OnnxPeer(name, args.model_dir)]
    )


if __name__ == "__main__":
    main()
