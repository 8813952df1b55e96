"""Seeded inputs for tests and benchmarks: frames, JPEG bytes and H.264 videos (PyAV/libx264)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np


def random_frames(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Seeded uint8 RGB frames [n, size, size, 3] with some structure (not pure noise)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(n, 1, 1, 3), dtype=np.int32)
    yy, xx = np.mgrid[0:size, 0:size]
    grad = ((xx + yy)[None, :, :, None] * 255 // max(1, 2 * size - 2)).astype(np.int32)
    noise = rng.integers(-40, 40, size=(n, size, size, 3), dtype=np.int32)
    return np.clip(base // 2 + grad // 2 + noise, 0, 255).astype(np.uint8)


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def video_frames(n: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` RGB frames: a seeded noisy background with a moving bright square and a frame counter band."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 120, size=(height, width, 3), dtype=np.uint8)
    out = []
    side = max(4, min(width, height) // 6)
    for i in range(n):
        img = base.copy()
        x = (i * max(1, width // 40)) % max(1, width - side)
        y = (i * max(1, height // 50)) % max(1, height - side)
        img[y : y + side, x : x + side] = (255, 220, 40)
        img[: max(2, height // 20), :, 2] = (i * 9) % 256
        out.append(img)
    return out


def make_video(
    path: Path | str,
    *,
    seconds: float = 2.0,
    fps: int = 30,
    width: int = 160,
    height: int = 120,
    codec: str = "libx264",
    container_format: str | None = None,
    seed: int = 0,
    preset: str = "ultrafast",
    gop: int | None = None,
    frames: list[np.ndarray] | None = None,
) -> Path:
    """Encode a synthetic video (or ``frames``, RGB uint8 HWC of one size, once each). ``.mp4`` /
    ``.ts`` / ``.mkv`` decide the container unless given."""
    import av

    path = Path(path)
    if frames is not None:
        n, (height, width) = len(frames), frames[0].shape[:2]
    else:
        n = int(round(seconds * fps))
        frames = video_frames(min(n, 90), width, height, seed)  # a 3 s loop of content, repeated
    with av.open(str(path), "w", format=container_format) as c:
        stream: Any = c.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": preset, "tune": "zerolatency"}
        if gop:
            stream.gop_size = gop
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(frames[i % len(frames)], format="rgb24")
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    return path
