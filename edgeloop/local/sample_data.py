"""A seeded generator of inspection images: metal tags on a production line.

Brushed-metal texture, an engraved serial number, varied lighting and pose, and
one defect class per image (``ok``, ``scratch``, ``dent``, ``stain``). The
``shifted`` variant changes the camera/lighting (darker, colour cast, blur): the
same classes, as a new site would see them; it drives the drift tests.

Output layout: ``<out>/<label>/<id>.png`` plus ``<out>/metadata.jsonl`` with one
line per image (file, label, lighting, camera, variant).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

CLASSES = ("ok", "scratch", "dent", "stain")
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


def _draw_defect(rng: np.random.Generator, img: Image.Image, label: str) -> Image.Image:
    size = img.size[0]
    if label == "ok":
        return img
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    if label == "scratch":
        # centred on the tag and short enough to stay on it: a scratch that runs off the frame leaves
        # a few pixels a labeler could not see either, and such images are label noise, not signal
        for _ in range(rng.integers(1, 3)):
            cx, cy = rng.uniform(0.3, 0.7, 2) * size
            angle = rng.uniform(0, math.pi)
            half = rng.uniform(0.3, 0.5) * size / 2
            dx, dy = half * math.cos(angle), half * math.sin(angle)
            shade = int(rng.choice([25, 240]))
            draw.line(
                [(cx - dx, cy - dy), (cx + dx, cy + dy)],
                fill=(shade, shade, shade, 235),
                width=max(2, size // 48),
            )
    elif label == "dent":
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        r = rng.uniform(0.12, 0.2) * size
        for i in range(12, 0, -1):  # a crater: dark rim, bright centre
            rr = r * i / 12
            shade = int(40 + 200 * (1 - i / 12))
            draw.ellipse([cx - rr, cy - rr * 0.8, cx + rr, cy + rr * 0.8], fill=(shade, shade, shade, 150))
    elif label == "stain":
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        colour = (int(rng.uniform(90, 140)), int(rng.uniform(55, 85)), int(rng.uniform(10, 40)))
        for _ in range(7):
            ox, oy = rng.normal(0, 0.06 * size, 2)
            rx, ry = rng.uniform(0.06, 0.13, 2) * size
            draw.ellipse([cx + ox - rx, cy + oy - ry, cx + ox + rx, cy + oy + ry], fill=(*colour, 170))
        overlay = overlay.filter(ImageFilter.GaussianBlur(size / 90))
    return Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")


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

    tag = _draw_defect(rng, tag, label)

    # pose: rotate and shift the tag over a dark conveyor background
    angle = rng.uniform(-12, 12)
    tag = tag.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=(28, 30, 33))
    dx, dy = rng.integers(-big // 16, big // 16, 2)
    canvas = Image.new("RGB", (big, big), (28, 30, 33))
    canvas.paste(tag, (int(dx), int(dy)))

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


def read_metadata(directory: Path) -> list[SampleMeta]:
    path = Path(directory) / "metadata.jsonl"
    if not path.exists():
        return []
    return [SampleMeta(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
