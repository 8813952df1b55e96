"""Boxes of defects in an image: one definition for labels, datasets, models and results.

Pixels of the image, origin top-left, COCO order ``[x, y, width, height]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Box:
    label: str
    x: float
    y: float
    w: float
    h: float

    def as_coco(self) -> list[float]:
        return [self.x, self.y, self.w, self.h]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Box:
        return cls(str(d["label"]), float(d["x"]), float(d["y"]), float(d["w"]), float(d["h"]))


def box_counts(boxes: Sequence[Box]) -> dict[str, int]:
    out: dict[str, int] = {}
    for b in boxes:
        out[b.label] = out.get(b.label, 0) + 1
    return dict(sorted(out.items()))


def coco_document(
    images: Sequence[tuple[str, int, int, Sequence[Box]]], classes: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """A COCO detection document: (file, width, height, boxes) per image; category ids from 1 in order."""
    ids = {c: i for i, c in enumerate(classes, 1)}
    doc: dict[str, list[dict[str, Any]]] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": c} for c, i in ids.items()],
    }
    for image_id, (file, width, height, boxes) in enumerate(images, 1):
        doc["images"].append({"id": image_id, "file_name": file, "width": width, "height": height})
        for b in boxes:
            doc["annotations"].append(
                {
                    "id": len(doc["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": ids[b.label],
                    "bbox": b.as_coco(),
                    "area": round(b.w * b.h, 2),
                    "iscrowd": 0,
                }
            )
    return doc
