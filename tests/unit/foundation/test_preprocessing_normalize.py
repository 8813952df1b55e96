"""The one-pass normalisation gives, bit for bit, what casting, scaling and shifting gives."""

from __future__ import annotations

import numpy as np
import pytest

from edgeloop.core.preprocessing import Preprocess, PreprocessConfig


def reference(pre: Preprocess, nhwc: np.ndarray) -> np.ndarray:
    """The definition: (x / 255 - mean) / std per channel, as float32 NCHW."""
    mean = np.asarray(pre.config.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre.config.std, np.float32).reshape(1, 3, 1, 1)
    x = nhwc.transpose(0, 3, 1, 2).astype(np.float32)
    return x * (np.float32(1.0) / (np.float32(255.0) * std)) + (-mean / std)


@pytest.mark.parametrize("size", [16, 64, 128])
@pytest.mark.parametrize(
    "config",
    [{}, {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.5, 1.0)}],
    ids=["imagenet", "custom"],
)
def test_batch_normalisation_is_exact_and_contiguous(size, config):
    pre = Preprocess(PreprocessConfig(size=size, **config))
    frames = np.random.default_rng(size).integers(0, 256, (5, size, size, 3), dtype=np.uint8)
    frames[0] = 0
    frames[1] = 255
    out = pre.normalize_batch(frames)
    assert out.dtype == np.float32 and out.shape == (5, 3, size, size) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, reference(pre, frames))
    for i in range(len(frames)):  # one image at a time: the same numbers (training uses this path)
        one = pre.normalize(frames[i])
        assert one.flags.c_contiguous
        np.testing.assert_array_equal(one, out[i])


def test_a_non_contiguous_batch_is_normalised_the_same():
    pre = Preprocess(PreprocessConfig(size=8))
    big = np.random.default_rng(1).integers(0, 256, (4, 8, 16, 3), dtype=np.uint8)
    view = big[:, :, ::2]  # strided, as a slice of a decoded frame would be
    np.testing.assert_array_equal(pre.normalize_batch(view), pre.normalize_batch(view.copy()))
