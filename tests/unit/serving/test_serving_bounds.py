"""Bounds per request (images, pixels, formats) and on decodes running at once, without a server."""

from __future__ import annotations

import asyncio
import io
import threading

import numpy as np
import pytest
from kserve.protocol.infer_type import InferInput, InferRequest
from PIL import Image

from edgeloop.core.preprocessing import Preprocess, PreprocessConfig
from edgeloop.serving import codec
from edgeloop.serving.errors import PayloadTooLargeError, UndecodableImageError
from edgeloop.serving.model import OnnxImageModel
from edgeloop.serving.options import LimitOptions
from edgeloop.serving.sources import resolve
from edgeloop.testing.media import encode_jpeg, random_frames

PRE = Preprocess(PreprocessConfig(size=32))


def _encode(fmt: str, size: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(random_frames(1, size)[0]).save(buf, format=fmt)
    return buf.getvalue()


def test_the_pixels_of_all_images_together_are_bounded_before_decoding():
    images = [_encode("PNG", 100)] * 3  # 30,000 pixels in all
    assert codec.to_model_input(images, "images", PRE, 8, max_request_pixels=30_000).x.shape == (3, 3, 32, 32)
    with pytest.raises(PayloadTooLargeError, match="30000 pixels in one request"):
        codec.to_model_input(images, "images", PRE, 8, max_request_pixels=29_999)
    frames = random_frames(4, 50)  # UINT8 frames count too: 10,000 pixels
    with pytest.raises(PayloadTooLargeError, match="10000 pixels"):
        codec.to_model_input(frames, "images", PRE, 8, max_request_pixels=9_999)


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF", "WEBP", "PPM", "ICO"])
def test_only_jpeg_and_png_are_decoded(fmt):
    data = _encode(fmt)
    with pytest.raises(UndecodableImageError, match="send JPEG or PNG"):
        codec.to_model_input([data], "images", PRE, 8)


def test_jpeg_and_png_are_decoded():
    out = codec.to_model_input([_encode("PNG"), _encode("JPEG")], "images", PRE, 8)
    assert out.frames is not None and out.frames.shape == (2, 32, 32, 3)


def test_decodes_running_at_once_are_capped(tiny_dirs, monkeypatch):
    model = OnnxImageModel(
        "inspection", [resolve(str(tiny_dirs["1"]))], limits=LimitOptions(max_concurrent_decodes=2)
    )
    assert model.load()
    running, peak, lock = 0, 0, threading.Lock()
    real = codec.to_model_input
    release = threading.Event()

    def counting(*args):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            if running == 2:
                release.set()  # both slots taken: let them finish
        release.wait(10)
        try:
            return real(*args)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(codec, "to_model_input", counting)

    def request() -> InferRequest:
        inp = InferInput("images", [1], "BYTES", [encode_jpeg(random_frames(1, 64)[0])])
        return InferRequest("inspection", [inp])

    async def burst() -> list:
        return await asyncio.gather(*(model(request()) for _ in range(6)))

    results = asyncio.run(burst())
    assert len(results) == 6 and peak == 2
    assert np.isfinite(results[0][0].outputs[1].data).all()
