"""A seeded generator of inspection images: metal tags on a production line.

Brushed-metal texture, an engraved serial number, varied lighting and pose, and
one defect class per image (``ok``, ``scratch``, ``dent``, ``stain``). The
``shifted`` variant changes the camera/lighting (darker, colour cast, blur): the
same classes, as a new site would see them; it drives the drift tests.

Output layout (classification): ``<out>/<label>/<id>.png`` plus ``<out>/metadata.jsonl`` with one
line per image (file, label, lighting, camera, variant).

Detection samples (:func:`generate_detection_dataset`) hold 0-3 defects each, anywhere on the
tag, with their boxes: ``<out>/images/<id>.png``, ``<out>/annotations.json`` (COCO, pixels) and
the same ``metadata.jsonl`` (label empty).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from edgeloop.core.boxes import Box, coco_document

CLASSES = ("ok", "scratch", "dent", "stain")
DEFECT_CLASSES = CLASSES[1:]  # what a detector finds; "ok" is an image without any
LIGHTINGS = ("bright", "normal", "dim")
CAMERAS = ("cam-a", "cam-b")


@dataclass(frozen=True)
class SampleMeta:
    file: str
    label: str
    lighting: str
    camera: str
    variant: str


def _brushed_metal(rng: np.random.Generator, size: int) -> np.ndarray:
    """Grey texture with horizontal brushing streaks, float in [0, 1], HxW."""
    noise = rng.normal(0.0, 1.0, (size, size * 2))
    kernel = np.ones(size // 3) / (size // 3)
    streaks = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 1, noise)[
        :, size // 2 : size // 2 + size
    ]
    streaks = (streaks - streaks.mean()) / (streaks.std() + 1e-6)
    base = 0.62 + 0.05 * streaks + 0.02 * rng.normal(0, 1, (size, size))
    return np.clip(base, 0, 1)


def _lighting_field(rng: np.random.Generator, size: int, lighting: str) -> np.ndarray:
    gain = {"bright": 1.18, "normal": 1.0, "dim": 0.8}[lighting] * rng.uniform(0.95, 1.05)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    gradient = 1.0 + 0.25 * (np.cos(angle) * xx + np.sin(angle) * yy)
    return gain * gradient


Extent = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the image drawn on


def _scratch(
    rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int, cx: float, cy: float, scale: float
) -> Extent:
    angle = rng.uniform(0, math.pi)
    half = rng.uniform(0.3, 0.5) * size / 2 * scale
    dx, dy = half * math.cos(angle), half * math.sin(angle)
    shade = int(rng.choice([25, 240]))
    width = max(2, size // 48)
    draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=(shade, shade, shade, 235), width=width)
    pad = width / 2 + 1
    return (cx - abs(dx) - pad, cy - abs(dy) - pad, cx + abs(dx) + pad, cy + abs(dy) + pad)


def _dent(
    rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int, cx: float, cy: float, scale: float
) -> Extent:
    r = rng.uniform(0.12, 0.2) * size * scale
    for i in range(12, 0, -1):  # a crater: dark rim, bright centre
        rr = r * i / 12
        shade = int(40 + 200 * (1 - i / 12))
        draw.ellipse([cx - rr, cy - rr * 0.8, cx + rr, cy + rr * 0.8], fill=(shade, shade, shade, 150))
    return (cx - r, cy - r * 0.8, cx + r, cy + r * 0.8)


def _stain(
    rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int, cx: float, cy: float, scale: float
) -> Extent:
    colour = (int(rng.uniform(90, 140)), int(rng.uniform(55, 85)), int(rng.uniform(10, 40)))
    x0 = y0 = math.inf
    x1 = y1 = -math.inf
    for _ in range(7):
        ox, oy = rng.normal(0, 0.06 * size * scale, 2)
        rx, ry = rng.uniform(0.06, 0.13, 2) * size * scale
        draw.ellipse([cx + ox - rx, cy + oy - ry, cx + ox + rx, cy + oy + ry], fill=(*colour, 170))
        x0, y0 = min(x0, cx + ox - rx), min(y0, cy + oy - ry)
        x1, y1 = max(x1, cx + ox + rx), max(y1, cy + oy + ry)
    return (x0, y0, x1, y1)


_DEFECTS = {"scratch": _scratch, "dent": _dent, "stain": _stain}


def _blur_stains(overlay: Image.Image, size: int) -> Image.Image:
    return overlay.filter(ImageFilter.GaussianBlur(size / 90))


def _draw_defect(rng: np.random.Generator, img: Image.Image, label: str) -> Image.Image:
    size = img.size[0]
    if label == "ok":
        return img
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    # centred on the tag and short enough to stay on it: a scratch that runs off the frame leaves
    # a few pixels a labeler could not see either, and such images are label noise, not signal
    for _ in range(rng.integers(1, 3) if label == "scratch" else 1):
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        _DEFECTS[label](rng, draw, size, cx, cy, 1.0)
    if label == "stain":
        overlay = _blur_stains(overlay, size)
    return Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")


def _blank_tag(rng: np.random.Generator, big: int, camera: str) -> Image.Image:
    """Brushed metal with a serial number and a hole, ``big`` pixels square."""
    metal = _brushed_metal(rng, big)
    tint = np.array([1.0, 1.0, 1.03]) if camera == "cam-a" else np.array([1.03, 1.0, 0.97])
    rgb = (metal[..., None] * tint * 255).clip(0, 255).astype(np.uint8)
    tag = Image.fromarray(rgb)
    draw = ImageDraw.Draw(tag)
    serial = f"SN-{rng.integers(10000, 99999)}"
    font = ImageFont.load_default(size=big // 9)
    draw.text((big * 0.12, big * 0.72), serial, fill=(70, 70, 72), font=font)
    draw.text((big * 0.12 + 1, big * 0.72 + 1), serial, fill=(205, 205, 208), font=font)
    hole = big * 0.1
    draw.ellipse([big * 0.08, big * 0.08, big * 0.08 + hole, big * 0.08 + hole], fill=(30, 30, 30))
    return tag


def _pose(rng: np.random.Generator, tag: Image.Image) -> Image.Image:
    """The tag rotated and shifted over a dark conveyor background."""
    big = tag.size[0]
    angle = rng.uniform(-12, 12)
    tag = tag.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=(28, 30, 33))
    dx, dy = rng.integers(-big // 16, big // 16, 2)
    canvas = Image.new("RGB", (big, big), (28, 30, 33))
    canvas.paste(tag, (int(dx), int(dy)))
    return canvas


def _camera(
    rng: np.random.Generator, canvas: Image.Image, size: int, lighting: str, shifted: bool
) -> Image.Image:
    """Lighting, the site's look, sensor noise and the lens: the ``size`` pixel image the camera gives."""
    big = canvas.size[0]
    arr = np.asarray(canvas, dtype=np.float32) / 255.0
    arr *= _lighting_field(rng, big, lighting)[..., None]
    if shifted:  # a new site: darker, bluish cast, softer focus, more sensor noise
        arr = arr * 0.55 * np.array([0.85, 0.95, 1.25]) + rng.normal(0, 0.03, arr.shape)
    arr += rng.normal(0, 0.01, arr.shape)
    out = Image.fromarray((arr.clip(0, 1) * 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    if shifted:
        out = out.filter(ImageFilter.GaussianBlur(1.2))
    return out


def render_tag(
    seed: int,
    label: str,
    size: int = 128,
    lighting: str = "normal",
    camera: str = "cam-a",
    shifted: bool = False,
) -> Image.Image:
    """One tag image, fully determined by its arguments."""
    if label not in CLASSES:
        raise ValueError(f"unknown class {label!r}; expected one of {CLASSES}")
    rng = np.random.default_rng(seed)
    big = size * 2  # draw at 2x, then rotate and downsample: softer edges, like a real lens
    tag = _draw_defect(rng, _blank_tag(rng, big, camera), label)
    return _camera(rng, _pose(rng, tag), size, lighting, shifted)


#: How many defects a detection sample holds (0 to 3), with these probabilities.
DEFECT_COUNT_P = (0.2, 0.45, 0.25, 0.1)
#: Defects in detection samples are this much smaller than in classification ones: several fit on a tag.
DETECTION_SCALE = 0.55


def render_inspection(
    seed: int,
    size: int = 192,
    lighting: str = "normal",
    camera: str = "cam-a",
    shifted: bool = False,
    defects: bool = True,
) -> tuple[Image.Image, list[Box]]:
    """One tag with 0-3 defects (scratch, dent, stain) anywhere on it, and each defect's box.

    The defects are drawn after the pose, so every box is axis-aligned and exact; boxes are
    clipped to the image and given in the pixels of the ``size`` image. The defects draw from a
    random stream of their own: ``defects=False`` gives the same tag without them."""
    rng = np.random.default_rng(seed)
    drng = np.random.default_rng([seed, 1])
    big = size * 2
    canvas = _pose(rng, _blank_tag(rng, big, camera))
    sharp, stains = (Image.new("RGBA", canvas.size, (0, 0, 0, 0)) for _ in range(2))
    n = int(drng.choice(len(DEFECT_COUNT_P), p=DEFECT_COUNT_P)) if defects else 0
    centres: list[tuple[float, float]] = []
    for _ in range(50 * n):  # well apart: a labeler draws one box per defect
        if len(centres) == n:
            break
        c = (float(drng.uniform(0.22, 0.78) * big), float(drng.uniform(0.22, 0.7) * big))
        if all(math.dist(c, o) > 0.3 * big for o in centres):
            centres.append(c)
    boxes: list[Box] = []
    for cx, cy in centres:
        label = str(drng.choice(DEFECT_CLASSES))
        draw = ImageDraw.Draw(stains if label == "stain" else sharp)
        x0, y0, x1, y1 = _DEFECTS[label](drng, draw, big, cx, cy, DETECTION_SCALE)
        x0, y0, x1, y1 = (
            max(0.0, v * size / big) if i < 2 else min(float(size), v * size / big)
            for i, v in enumerate((x0, y0, x1, y1))
        )
        boxes.append(Box(label, *(round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0))))
    canvas = Image.alpha_composite(canvas.convert("RGBA"), sharp)
    canvas = Image.alpha_composite(canvas, _blur_stains(stains, big)).convert("RGB")
    return _camera(rng, canvas, size, lighting, shifted), boxes


def iter_samples(per_class: int, seed: int = 0, shifted: bool = False) -> Iterator[tuple[int, str, str, str]]:
    """(image seed, label, lighting, camera) for a balanced dataset, deterministic in ``seed``."""
    rng = np.random.default_rng(seed + (10_000 if shifted else 0))
    for label in CLASSES:
        for _ in range(per_class):
            yield (int(rng.integers(0, 2**31)), label, str(rng.choice(LIGHTINGS)), str(rng.choice(CAMERAS)))


def generate_dataset(
    out: Path,
    per_class: int = 60,
    seed: int = 0,
    size: int = 128,
    shifted: bool = False,
    progress: bool = False,
) -> list[SampleMeta]:
    """Write the dataset under ``out``; re-running with the same arguments writes identical files."""
    out = Path(out)
    variant = "shifted" if shifted else "base"
    samples = list(iter_samples(per_class, seed, shifted))
    it = samples
    if progress:
        from tqdm import tqdm

        it = tqdm(samples, desc=f"generating {variant} images", unit="img")
    metas = []
    for img_seed, label, lighting, camera in it:
        name = f"{variant}-{label}-{img_seed:010d}.png"
        (out / label).mkdir(parents=True, exist_ok=True)
        render_tag(img_seed, label, size, lighting, camera, shifted).save(out / label / name, optimize=False)
        metas.append(SampleMeta(f"{label}/{name}", label, lighting, camera, variant))
    with open(out / "metadata.jsonl", "w") as fh:
        for m in metas:
            fh.write(json.dumps(asdict(m)) + "\n")
    return metas


#: A detection sample folder: ``images/*.png`` and their boxes in this COCO file.
COCO_FILE = "annotations.json"


def generate_detection_dataset(
    out: Path,
    images: int = 240,
    seed: int = 0,
    size: int = 192,
    shifted: bool = False,
    progress: bool = False,
) -> list[tuple[SampleMeta, list[Box]]]:
    """Write ``images`` detection samples under ``out``: ``images/*.png``, their boxes in ``annotations.json``
    (COCO, pixels) and ``metadata.jsonl``; re-running with the same arguments writes identical files."""
    out = Path(out)
    variant = "shifted" if shifted else "base"
    rng = np.random.default_rng(seed + 20_000 + (10_000 if shifted else 0))
    draws = [
        (int(rng.integers(0, 2**31)), str(rng.choice(LIGHTINGS)), str(rng.choice(CAMERAS)))
        for _ in range(images)
    ]
    it = draws
    if progress:
        from tqdm import tqdm

        it = tqdm(draws, desc=f"generating {variant} detection images", unit="img")
    (out / "images").mkdir(parents=True, exist_ok=True)
    samples = []
    for img_seed, lighting, camera in it:
        img, boxes = render_inspection(img_seed, size, lighting, camera, shifted)
        file = f"images/{variant}-{img_seed:010d}.png"
        img.save(out / file, optimize=False)
        samples.append((SampleMeta(file, "", lighting, camera, variant), boxes))
    doc = coco_document([(m.file, size, size, boxes) for m, boxes in samples], DEFECT_CLASSES)
    (out / COCO_FILE).write_text(json.dumps(doc, indent=1) + "\n")
    with open(out / "metadata.jsonl", "w") as fh:
        for m, _ in samples:
            fh.write(json.dumps(asdict(m)) + "\n")
    return samples


def read_coco_boxes(directory: Path) -> dict[str, tuple[int, int, list[Box]]] | None:
    """``annotations.json`` of a detection folder as file -> (width, height, boxes); None if it has none."""
    path = Path(directory) / COCO_FILE
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    names = {c["id"]: c["name"] for c in doc.get("categories", [])}
    out: dict[str, tuple[int, int, list[Box]]] = {
        im["file_name"]: (int(im["width"]), int(im["height"]), []) for im in doc.get("images", [])
    }
    files = {im["id"]: im["file_name"] for im in doc.get("images", [])}
    for a in doc.get("annotations", []):
        x, y, w, h = (float(v) for v in a["bbox"])
        out[files[a["image_id"]]][2].append(Box(names[a["category_id"]], x, y, w, h))
    return out


def read_metadata(directory: Path) -> list[SampleMeta]:
    path = Path(directory) / "metadata.jsonl"
    if not path.exists():
        return []
    return [SampleMeta(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
