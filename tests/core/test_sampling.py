"""Compact sampling: row runs of annotated pixels, patches read as drawn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from napari_unet.core.training.data import AnnotatedImage, PatchSampler, pad2d
from napari_unet.core.training.sampling import AnnotatedRuns, cut_window, mirror_indices


def test_runs_map_the_kth_annotated_pixel_as_a_flat_index_would():
    rng = np.random.default_rng(0)
    for shape, density in (((7, 9), 0.5), ((1, 13), 0.9), ((30, 1), 0.3), ((16, 16), 1.0)):
        mask = rng.random(shape) < density
        runs = AnnotatedRuns(mask)
        where = np.flatnonzero(mask)
        assert runs.count == where.size
        got = [runs.position(k) for k in range(runs.count)]
        assert got == [(int(f) // shape[1], int(f) % shape[1]) for f in where]
    with pytest.raises(IndexError):
        AnnotatedRuns(np.ones((2, 2), bool)).position(4)


def test_runs_of_a_fully_annotated_large_image_are_small():
    runs = AnnotatedRuns(np.ones((2048, 2048), bool))
    assert runs.count == 2048 * 2048
    assert runs.position(2048 * 2048 - 1) == (2047, 2047)
    assert runs.nbytes == 2 * 8 * 2048  # one run per row; one int64 per pixel: 33.5 MB


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_mirror_indices_read_like_a_reflect_padded_axis(n):
    axis = np.arange(n)
    pad = 11
    padded = np.pad(axis, (pad, pad), mode="symmetric" if n == 1 else "reflect")
    for start in range(-pad, n):
        size = min(7, n + pad - start)
        np.testing.assert_array_equal(
            axis[mirror_indices(start, size, n, pad)], padded[start + pad : start + pad + size]
        )
    if n > 1:  # a pad just wide enough: plain reflection
        np.testing.assert_array_equal(mirror_indices(-(n - 1), n, n), [*range(n - 1, 0, -1), 0])


def test_cut_window_equals_a_window_of_the_padded_array_and_reads_zarr():
    rng = np.random.default_rng(1)
    image = rng.random((2, 10, 12)).astype(np.float32)
    stored = zarr.create_array(store={}, shape=image.shape, chunks=(1, 4, 4), dtype="f4")
    stored[:] = image
    p, size = 9, 8
    mirrored = pad2d(image, ((0, 0), (p, p), (p, p)), "reflect")
    zeros = np.pad(image, ((0, 0), (p, p), (p, p)))
    for y0, x0 in ((-5, -5), (0, 0), (6, 8), (-3, 9), (2, 3)):
        window = (slice(None), slice(y0 + p, y0 + p + size), slice(x0 + p, x0 + p + size))
        for source in (image, stored):
            got = cut_window(source, y0, x0, size, pad=p)
            np.testing.assert_array_equal(got, mirrored[window])
            np.testing.assert_array_equal(cut_window(source, y0, x0, size, 0), zeros[window])


def _sample(shape, seed):
    rng = np.random.default_rng(seed)
    image = rng.random((1, *shape)).astype(np.float32)
    classes = rng.integers(0, 2, shape).astype(np.uint8)
    weights = (rng.random(shape) * (rng.random(shape) < 0.3)).astype(np.float32)
    classes[weights == 0] = 255
    return AnnotatedImage(image, classes, weights, (0, seed))


def test_streamed_patches_equal_resident_ones():
    samples = [_sample((40, 50), 0), _sample((12, 9), 1)]  # the second smaller than a patch
    resident = PatchSampler(samples, 24, "cpu", np.random.default_rng(5), stream=False)
    streamed = PatchSampler(samples, 24, "cpu", np.random.default_rng(5), stream=True)
    assert not resident.stream and streamed.stream
    for _ in range(4):
        for a, b in zip(resident.sample(6), streamed.sample(6), strict=True):
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the centres lie on annotated pixels
    for k, y, x in streamed.centres(50):
        assert samples[k].weights[y, x] > 0
