"""Tests of image layout and percentile normalisation."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_unet.core.normalize import (
    as_nchw,
    intensity_range,
    normalization_spec,
    normalize_image,
)


@pytest.mark.parametrize(
    ("shape", "kwargs", "expected"),
    [
        ((5, 7), {}, (1, 1, 5, 7)),
        ((4, 5, 7), {}, (4, 1, 5, 7)),
        ((2, 5, 7), {"channel_axis": 0}, (1, 2, 5, 7)),
        ((5, 2, 7, 9), {"channel_axis": 1}, (5, 2, 7, 9)),
        ((3, 7, 9, 2), {"channel_axis": -1}, None),  # last axis is spatial X: refused
        ((5, 7, 3), {"rgb": True}, (1, 3, 5, 7)),
        ((2, 5, 7, 4), {"rgb": True}, (2, 4, 5, 7)),
    ],
)
def test_as_nchw_shapes(shape: tuple, kwargs: dict, expected: tuple | None) -> None:
    image = np.zeros(shape)
    if expected is None:
        with pytest.raises(ValueError, match="spatial axis"):
            as_nchw(image, **kwargs)
    else:
        assert as_nchw(image, **kwargs).shape == expected


def test_as_nchw_moves_channels_not_pixels() -> None:
    image = np.arange(2 * 3 * 4).reshape(3, 4, 2)  # (Y, X, C)
    with pytest.raises(ValueError):
        as_nchw(image, channel_axis=2)
    rgb = np.arange(4 * 5 * 3).reshape(4, 5, 3)
    out = as_nchw(rgb, rgb=True)
    np.testing.assert_array_equal(out[0, 1], rgb[..., 1])


def test_as_nchw_is_lazy_on_dask() -> None:
    lazy = da.zeros((3, 64, 64), chunks=(1, 32, 32))
    out = as_nchw(lazy)
    assert isinstance(out, da.Array) and out.shape == (3, 1, 64, 64)


def test_as_nchw_bad_dimensions() -> None:
    with pytest.raises(ValueError, match="got shape"):
        as_nchw(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="RGB image must have shape"):
        as_nchw(np.zeros((4, 5, 6)), rgb=True)


def test_normalize_percentiles_per_channel() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 1000, size=(64, 64)).astype(np.uint16)
    image = np.stack([a, a * 10])
    out = normalize_image(image)
    assert out.dtype == np.float32 and out.shape == (2, 64, 64)
    for c in range(2):
        lo, hi = np.percentile(image[c].astype(np.float64), [1, 99.8])
        np.testing.assert_allclose(out[c], (image[c] - lo) / (hi - lo), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)  # each channel by its own range


def test_normalize_constant_and_custom_spec() -> None:
    # a constant image holds nothing to learn from: a clear error, never raw values
    with pytest.raises(ValueError, match=r"image is constant \(every pixel is 7\)"):
        normalize_image(np.full((1, 8, 8), 7, np.int16))
    # a constant channel beside others becomes 0
    two = np.stack([np.full((8, 8), 7, np.int16), np.arange(64, dtype=np.int16).reshape(8, 8)])
    out = normalize_image(two)
    assert np.all(out[0] == 0) and float(out[1].max()) > 0.9
    image = np.arange(100, dtype=np.float64).reshape(1, 10, 10)
    out = normalize_image(image, normalization_spec(0, 100))
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_normalize_rejects_nan_and_bad_specs() -> None:
    image = np.ones((1, 4, 4), np.float32)
    image[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        normalize_image(image)
    with pytest.raises(ValueError, match="percentiles must satisfy"):
        normalization_spec(50, 10)
    with pytest.raises(ValueError, match="unknown normalisation method"):
        normalize_image(np.ones((1, 4, 4)), {"method": "zscore"})
    with pytest.raises(ValueError, match="expected one"):
        normalize_image(np.ones((4, 4)))


def test_degenerate_percentiles_fall_back_to_min_max() -> None:
    # a sparse uint16 image: fewer than 1% bright pixels, the 1st and 99.8th percentiles are 0
    sparse = np.zeros((1, 100, 100), np.uint16)
    sparse[0, 0, :10] = 4000
    sparse[0, 50, 50] = 1000
    out = normalize_image(sparse)
    assert float(out.max()) == 1.0 and float(out.min()) == 0.0
    assert out[0, 50, 50] == pytest.approx(0.25)
    offset, scale = intensity_range(sparse)
    assert (float(offset[0, 0, 0]), float(scale[0, 0, 0])) == (0.0, 4000.0)
    # a channel with a proper range keeps its percentiles
    rng = np.random.default_rng(0)
    both = np.concatenate([sparse, rng.integers(0, 1000, (1, 100, 100)).astype(np.uint16)])
    offset, scale = intensity_range(both)
    lo, hi = np.percentile(both[1].astype(np.float64), [1, 99.8])
    np.testing.assert_allclose([offset[1, 0, 0], scale[1, 0, 0]], [lo, hi - lo], rtol=1e-5)
