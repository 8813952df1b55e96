"""Seeded synthetic inputs for tests and benchmarks: H.264 videos (PyAV/libx264) and tiny ONNX models.

Nothing here is used by the processor itself. Building a model needs torch
(imported inside the function); making a video needs only PyAV and numpy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


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
) -> Path:
    """Encode a synthetic video. ``.mp4`` / ``.ts`` / ``.mkv`` decide the container unless given."""
    import av

    path = Path(path)
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


def build_test_model(
    directory: Path | str,
    *,
    size: int = 64,
    labels: tuple[str, ...] = ("ok", "scratch", "dent"),
    arch: str = "tiny",
    name: str = "stream-test",
    version: str = "1",
    seed: int = 0,
) -> Path:
    """Export a small classifier to ``directory/model.onnx`` with its model card (digests included).

    Input ``images`` float32 [N, 3, size, size]; outputs ``probabilities`` [N, C] (softmax)
    and ``embedding`` [N, D]. ``arch``: ``tiny`` (two convolutions) or ``mobilenet_v3_small``
    (torchvision, random weights: realistic compute for benchmarks).
    """
    import torch
    from torch import nn

    from edgeloop.core.model_card import ModelCard
    from edgeloop.core.preprocessing import PreprocessConfig

    torch.manual_seed(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    if arch == "tiny":
        features: nn.Module = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        dim = 16
    elif arch == "mobilenet_v3_small":
        from torchvision.models import mobilenet_v3_small

        m = mobilenet_v3_small(weights=None)
        features = nn.Sequential(m.features, m.avgpool, nn.Flatten())
        dim = 576
    else:
        raise ValueError(f"unknown arch {arch!r}")

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = features
            self.head = nn.Linear(dim, len(labels))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            emb = self.features(x)
            return torch.softmax(self.head(emb), dim=1), emb

    net = Net().eval()
    dummy = torch.zeros(1, 3, size, size)
    torch.onnx.export(
        net,
        (dummy,),
        str(directory / "model.onnx"),
        input_names=["images"],
        output_names=["probabilities", "embedding"],
        opset_version=17,
        dynamo=False,
        dynamic_axes={"images": {0: "n"}, "probabilities": {0: "n"}, "embedding": {0: "n"}},
    )
    card = ModelCard(
        name=name,
        version=version,
        architecture=arch,
        labels=list(labels),
        preprocessing=PreprocessConfig(size=size),
        embedding_dim=dim,
    )
    card.with_digests(directory).save(directory)
    return directory
