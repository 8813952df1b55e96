"""An exported detector run in-process by ONNX Runtime, without torch, as the model server runs it.

The precision choice and the staging evaluation (reference and champion) run in the pipeline image,
which has no torch: images are preprocessed by the shared :class:`~edgeloop.core.preprocessing.Preprocess`,
run through the graph and post-processed by the server's own code (:mod:`edgeloop.serving.detection`),
so an in-process detection is what the endpoint would answer for the same image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.components.coco_eval import OPERATING_THRESHOLD, Detection, image_correct
from edgeloop.core.boxes import Box

#: The lowest score kept when a model is scored by mAP (the detector's own floor is 0.05).
SCORING_THRESHOLD = 0.0


def to_detections(per_image: Sequence[Sequence[Mapping[str, Any]]]) -> list[list[Detection]]:
    """The server's detections (dicts: label, score, x, y, width, height) -> :class:`Detection` lists."""
    return [
        [
            Detection(
                Box(str(d["label"]), float(d["x"]), float(d["y"]), float(d["width"]), float(d["height"])),
                float(d["score"]),
            )
            for d in image
        ]
        for image in per_image
    ]


def truth_of(rows: Sequence[Any]) -> list[list[Box]]:
    """Dataset rows (:class:`~edgeloop.components.dataset.DatasetRow`) -> their boxes, in source pixels."""
    return [[Box.from_dict(b) for b in (r.boxes or [])] for r in rows]


def same_detections(
    reference: Sequence[Detection], other: Sequence[Detection], threshold: float = OPERATING_THRESHOLD
) -> bool:
    """Would the line act the same on both: the reference's detections at or above ``threshold``,
    taken as the truth, are each matched once by ``other`` (same class, IoU >= 0.5) and ``other`` has
    none left over."""
    return image_correct([d.box for d in reference if d.score >= threshold], other, threshold)


class DetectorRunner:
    """A detection graph (``model_file``, described by ``card``) on ONNX Runtime; :meth:`detect` takes
    RGB images (HWC uint8 arrays or PIL images) of any size and answers their detections in each
    image's pixels."""

    def __init__(
        self,
        card: Any,
        model_file: Path | str,
        *,
        provider: str = "CPUExecutionProvider",
        threads: int | None = None,
    ):
        import onnxruntime as ort

        from edgeloop.core.preprocessing import Preprocess

        self.card = card
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model_file), opts, providers=[provider])
        self.pre = Preprocess(card.preprocessing)
        self.labels = np.array([c.encode() for c in card.labels], dtype=object)

    @classmethod
    def from_dir(cls, model_dir: Path | str, **kw: Any) -> DetectorRunner:
        """The model in ``model_dir`` (verified against its card first)."""
        from edgeloop.core.model_card import MODEL_FILE
        from edgeloop.core.model_loader import verify_model

        card = verify_model(Path(model_dir)).card
        return cls(card, Path(model_dir) / MODEL_FILE, **kw)

    def detect(self, images: Sequence[Any], threshold: float = SCORING_THRESHOLD) -> list[list[Detection]]:
        from edgeloop.serving import detection

        out = []
        for image in images:
            arr = np.asarray(image)
            h, w = arr.shape[:2]
            x = self.pre.batch([arr])
            res = detection.run_padded(self.session, self.card.input_name, x)
            dets = detection.outputs(res, [(w, h)], self.pre.size, self.labels, threshold)
            out += to_detections(dets.per_image())
        return out
