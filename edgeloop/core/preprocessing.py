"""The one preprocessing definition shared by training, evaluation and serving.

Pure numpy + Pillow (no torch), so the serving image stays small. Training
applies its augmentations to the PIL image first, then calls the same
:class:`Preprocess`, so a model never sees different pixels in production than
in training. The parameters travel in the model card (:class:`PreprocessConfig`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image
from pydantic import BaseModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PreprocessConfig(BaseModel):
    """What a model expects: square RGB input of ``size`` pixels, normalised by mean/std."""

    size: int = 128
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"


class ImageDecodeError(ValueError):
    """Bytes that are not a decodable image (JPEG/PNG/...)."""


_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "bicubic": Image.Resampling.BICUBIC,
}


class Preprocess:
    """Resize to ``size`` x ``size``, scale to [0, 1], normalise; returns float32 CHW."""

    def __init__(self, config: PreprocessConfig | None = None):
        self.config = config or PreprocessConfig()
        mean = np.asarray(self.config.mean, dtype=np.float32)
        std = np.asarray(self.config.std, dtype=np.float32)
        # x_norm = (x / 255 - mean) / std = x * scale + offset, per channel
        self._scale = (1.0 / (255.0 * std)).reshape(3, 1, 1).astype(np.float32)
        self._offset = (-mean / std).reshape(3, 1, 1).astype(np.float32)
        self._resample = _RESAMPLE[self.config.interpolation]

    @property
    def size(self) -> int:
        return self.config.size

    def resize(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """Any RGB image (PIL, or uint8 HWC array) -> uint8 HWC array of the model's size."""
        if isinstance(image, np.ndarray):
            if image.shape[0] == self.size and image.shape[1] == self.size:
                return image
            image = Image.fromarray(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), self._resample)
        return np.asarray(image, dtype=np.uint8)

    def normalize(self, hwc: np.ndarray) -> np.ndarray:
        """uint8 HWC (already at model size) -> float32 CHW."""
        return self.normalize_batch(hwc[None])[0]

    def __call__(self, image: Image.Image | np.ndarray) -> np.ndarray:
        return self.normalize(self.resize(image))

    def batch(self, images: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
        """Several images -> float32 NCHW."""
        out = np.empty((len(images), 3, self.size, self.size), dtype=np.float32)
        for i, img in enumerate(images):
            out[i] = self(img)
        return out

    def normalize_batch(self, nhwc: np.ndarray) -> np.ndarray:
        """uint8 NHWC frames already at model size -> float32 NCHW, vectorised."""
        # One pass from uint8 to float32 NCHW (the same float32 arithmetic as a cast, then
        # the multiply, then the add: bit for bit), about 4x faster than casting first.
        if nhwc.dtype != np.uint8:  # other pixel types: cast first, as the definition does
            nhwc = nhwc.astype(np.float32)
        n, h, w, _ = nhwc.shape
        x = np.empty((n, 3, h, w), dtype=np.float32)
        np.multiply(nhwc.transpose(0, 3, 1, 2), self._scale[None], out=x)
        x += self._offset[None]
        return x


def decode_image(data: bytes, formats: Sequence[str] | None = None) -> Image.Image:
    """Encoded bytes -> RGB PIL image, or :class:`ImageDecodeError` naming what was wrong.

    ``formats`` (PIL names, e.g. ``("JPEG", "PNG")``) limits the decoders tried; None: any PIL reads.
    """
    try:
        img = Image.open(io.BytesIO(data), formats=list(formats) if formats else None)
        img.load()
    except Exception as e:  # PIL raises many kinds; the caller needs one
        raise ImageDecodeError(
            f"could not decode {len(data)} bytes as an image ({type(e).__name__}); send JPEG or PNG bytes"
        ) from e
    return img.convert("RGB")
