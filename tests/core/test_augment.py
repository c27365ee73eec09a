from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_unet.core.targets import IGNORE
from napari_unet.core.training.augment import (
    ELASTIC_GRID_FACTOR,
    AugmentSettings,
    augment_batch,
    context_margin,
    sampling_grid,
)

NONE = AugmentSettings(elastic=False, flips=False, affine=False, intensity=False)


def _batch(n=3, size=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 2, size, size, generator=g)
    classes = torch.randint(0, 2, (n, size, size), generator=g, dtype=torch.uint8)
    classes[:, :3] = IGNORE
    weights = torch.rand(n, size, size, generator=g) + 0.5
    weights[classes == IGNORE] = 0
    return images, classes, weights


def _dihedral(a: np.ndarray) -> list[np.ndarray]:
    out = []
    for k in range(4):
        r = np.rot90(a, k, axes=(-2, -1))
        out += [r, r[..., ::-1]]
    return out


def test_no_augmentation_is_a_center_crop():
    images, classes, weights = _batch(size=20)
    x, y, w = augment_batch(images, classes, weights, NONE, out_size=16, target_size=12)
    assert torch.equal(x, images[:, :, 2:18, 2:18])
    assert torch.equal(y, classes[:, 4:16, 4:16].long())
    assert torch.equal(w, weights[:, 4:16, 4:16])


def test_flips_are_exact_dihedral_transforms_shared_by_image_and_targets():
    images, classes, weights = _batch(n=16, size=20)
    settings = AugmentSettings(elastic=False, affine=False, intensity=False)
    g = torch.Generator().manual_seed(3)
    x, y, w = augment_batch(images, classes, weights, settings, out_size=16, generator=g)
    seen = set()
    for i in range(16):
        crop = images[i, :, 2:18, 2:18].numpy()
        candidates = _dihedral(crop)
        errors = [np.abs(c - x[i].numpy()).max() for c in candidates]
        k = int(np.argmin(errors))
        assert errors[k] < 1e-5
        seen.add(k)
        # the same transform on targets and weights
        assert np.array_equal(_dihedral(classes[i, 2:18, 2:18].numpy())[k], y[i].numpy())
        np.testing.assert_allclose(_dihedral(weights[i, 2:18, 2:18].numpy())[k], w[i], atol=1e-5)
    assert len(seen) >= 4  # several different transforms were drawn


def test_one_grid_for_image_targets_and_weights():
    # Image and weights hold the same smooth field: the image (bilinear) and the weights
    # (nearest neighbour, with the classes) sampled with one grid differ by less than one
    # pixel's change of the field; the classes are a threshold of the field and follow it.
    size = 64
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    field = torch.sin(xx / 7.0) + torch.cos(yy / 5.0)
    images = field.expand(4, 1, size, size).clone()
    weights = (field + 3).expand(4, size, size).clone()
    classes = (field > 0).to(torch.uint8).expand(4, size, size).clone()
    settings = AugmentSettings(intensity=False, elastic_std=5.0)
    g = torch.Generator().manual_seed(0)
    x, y, w = augment_batch(images, classes, weights, settings, out_size=40, generator=g)
    torch.testing.assert_close(x[:, 0] + 3, w, atol=0.5, rtol=0)
    assert set(w.unique().tolist()) <= set(weights.unique().tolist())
    # nearest vs bilinear differ only within a pixel of the boundary
    agree = (y == (x[:, 0] > 0).long()).float().mean()
    assert agree > 0.97
    assert not torch.equal(x, images[:, :, 12:52, 12:52])  # something did happen


def test_ignored_pixels_get_zero_weight_and_classes_stay_valid():
    images, classes, weights = _batch(n=8, size=32)
    weights[:] = 1.0  # even where ignored, to check the zeroing
    g = torch.Generator().manual_seed(1)
    _, y, w = augment_batch(images, classes, weights, AugmentSettings(), out_size=24, generator=g)
    assert set(torch.unique(y).tolist()) <= {0, 1, IGNORE}
    assert (y == IGNORE).any()
    assert torch.all(w[y == IGNORE] == 0)
    assert torch.all(w[y != IGNORE] > 0)


def test_valid_padding_targets_are_the_center_of_the_output():
    images, classes, weights = _batch(n=2, size=40)
    settings = AugmentSettings(elastic=False, affine=False, intensity=False)
    g = torch.Generator().manual_seed(0)
    x, y, w = augment_batch(
        images, classes, weights, settings, out_size=36, target_size=20, generator=g
    )
    assert x.shape == (2, 2, 36, 36) and y.shape == (2, 20, 20) and w.shape == (2, 20, 20)
    for i in range(2):
        # whatever flip was drawn, the target is that flip of the central 20x20 of the input
        k = int(
            np.argmin(
                [
                    np.abs(c - x[i].numpy()).max()
                    for c in _dihedral(images[i, :, 2:38, 2:38].numpy())
                ]
            )
        )
        expected = _dihedral(classes[i, 10:30, 10:30].numpy())[k]
        assert np.array_equal(expected, y[i].numpy())


def test_elastic_displacements_have_the_paper_statistics():
    n, size = 4000, 17
    settings = AugmentSettings(
        elastic=True, flips=False, affine=False, elastic_std=10.0, elastic_spacing=8
    )
    assert settings.elastic_sigma == pytest.approx(10.0 * ELASTIC_GRID_FACTOR * 8 / 286)
    g = torch.Generator().manual_seed(0)
    grid = sampling_grid(n, (size, size), (size, size), settings, generator=g)
    identity = sampling_grid(1, (size, size), (size, size), NONE)
    disp = (grid - identity) * size / 2  # back to pixels
    # corners and centre are control points of the grid (8 px apart): std elastic_sigma in x, y
    for iy, ix in [(0, 0), (0, size - 1), (size // 2, size // 2), (size - 1, 0), (8, 0)]:
        std = disp[:, iy, ix].std(dim=0)
        np.testing.assert_allclose(std.numpy(), [settings.elastic_sigma] * 2, rtol=0.06)
    # bicubic upsampling: smooth, neighbouring pixels move together
    step = (disp[:, :, 1:] - disp[:, :, :-1]).abs().mean()
    assert step < 0.5 * settings.elastic_sigma


def _area_change(size: int, settings: AugmentSettings) -> np.ndarray:
    """1st and 99th percentile of the local area change of the elastic deformation."""
    g = torch.Generator().manual_seed(0)
    grid = sampling_grid(64, (size, size), (size, size), settings, generator=g) * size / 2
    gx = grid[:, 1:-1, 2:] - grid[:, 1:-1, :-2]
    gy = grid[:, 2:, 1:-1] - grid[:, :-2, 1:-1]
    det = (gx[..., 0] * gy[..., 1] - gx[..., 1] * gy[..., 0]) / 4
    return np.percentile(det.numpy(), [1, 99])


def test_elastic_strength_is_the_papers_whatever_the_patch_size():
    elastic = AugmentSettings(flips=False, affine=False, intensity=False)
    # the paper: 10 px on a 3 x 3 grid over its 572 px tile
    paper = _area_change(572, replace(elastic, elastic_spacing=286))
    for size in (96, 192, 400):
        np.testing.assert_allclose(_area_change(size, elastic), paper, atol=0.04)
    # a 3 x 3 grid spanning a 128 px patch (10 px at points 64 px apart) stretched far more
    old = replace(elastic, elastic_spacing=64, elastic_std=10 * 286 / 64 / ELASTIC_GRID_FACTOR)
    assert old.elastic_sigma == pytest.approx(10.0)
    spanning = _area_change(128, old)
    assert spanning[0] < 0.5 and spanning[1] > 1.6
    # the training settings carry the spacing
    from napari_unet.core.training import TrainSettings

    assert TrainSettings(elastic_spacing=32).augment_settings().elastic_spacing == 32


def test_affine_rotation_and_zoom_stay_in_range():
    settings = AugmentSettings(
        elastic=False, flips=False, affine=True, max_rotation=15.0, scale_range=(0.9, 1.1)
    )
    g = torch.Generator().manual_seed(0)
    grid = sampling_grid(500, (33, 33), (33, 33), settings, generator=g)
    # the grid's row direction is (cos, sin) / zoom of the rotation in input pixels
    row = (grid[:, 16, 17] - grid[:, 16, 16]) * 33 / 2
    length = row.norm(dim=-1)
    angle = torch.rad2deg(torch.atan2(row[:, 1], row[:, 0]))
    assert length.min() >= 1 / 1.1 - 1e-4 and length.max() <= 1 / 0.9 + 1e-4
    assert angle.abs().max() <= 15.0 + 1e-3 and angle.abs().max() > 10.0


def test_intensity_changes_only_the_image():
    images, classes, weights = _batch(n=4, size=16)
    settings = AugmentSettings(elastic=False, flips=False, affine=False, intensity=True)
    g = torch.Generator().manual_seed(0)
    x, y, w = augment_batch(images, classes, weights, settings, generator=g)
    assert torch.equal(y, classes.long()) and torch.equal(w, weights)
    assert not torch.allclose(x, images)
    # noise off, gain/offset/gamma fixed: an exact formula
    fixed = AugmentSettings(
        elastic=False,
        flips=False,
        affine=False,
        gamma_range=(2.0, 2.0),
        gain_range=(1.5, 1.5),
        max_offset=0.0,
        max_noise=0.0,
    )
    x, _, _ = augment_batch(images - 0.5, classes, weights, fixed, generator=g)
    ref = torch.sign(images - 0.5) * (images - 0.5) ** 2 * 1.5
    torch.testing.assert_close(x, ref)


def test_same_generator_seed_same_batch():
    images, classes, weights = _batch(n=2, size=32)
    out = []
    for _ in range(2):
        g = torch.Generator().manual_seed(42)
        out.append(
            augment_batch(images, classes, weights, AugmentSettings(), out_size=20, generator=g)
        )
    for a, b in zip(out[0], out[1], strict=True):
        assert torch.equal(a, b)


def test_context_margin():
    s = AugmentSettings(elastic=True, affine=True, max_rotation=15, scale_range=(0.85, 1.15))
    expected = (math.cos(math.radians(15)) + math.sin(math.radians(15))) / 0.85 - 1
    sigma = s.elastic_sigma
    assert context_margin(128, s) == math.ceil(expected * 64 + 2 * sigma)
    assert context_margin(128, AugmentSettings(affine=False, elastic_std=10)) == math.ceil(
        2 * sigma
    )


def test_bad_inputs():
    images, classes, weights = _batch(n=2, size=16)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        augment_batch(images[0], classes, weights, NONE)
    with pytest.raises(ValueError, match="classes and weights"):
        augment_batch(images, classes[:, :8], weights, NONE)
    with pytest.raises(ValueError, match="out_size"):
        augment_batch(images, classes, weights, NONE, out_size=20)
    with pytest.raises(ValueError, match="target_size"):
        augment_batch(images, classes, weights, NONE, out_size=8, target_size=12)
    with pytest.raises(ValueError, match="scale_range"):
        AugmentSettings(scale_range=(1.2, 0.9))
    with pytest.raises(ValueError, match="elastic_std"):
        AugmentSettings(elastic_std=-1)


def test_weights_are_resampled_with_the_classes_never_blurred():
    # two cells with a high-weight gap between them: after rotation and zoom every output pixel
    # must carry the (class, weight) pair of one input pixel, so the gap's weight never leaks
    # onto cell pixels (bilinear weights would give cell pixels weights between 1 and 10)
    size = 48
    classes = torch.zeros(8, size, size, dtype=torch.uint8)
    classes[:, 8:40, 8:23] = 1
    classes[:, 8:40, 25:40] = 1
    weights = torch.where(classes == 1, 1.0, 0.5)
    weights[:, 8:40, 23:25] = 10.0  # the gap
    images = classes[:, None].float()
    settings = AugmentSettings(elastic=False, flips=False, intensity=False)
    g = torch.Generator().manual_seed(0)
    _, y, w = augment_batch(images, classes, weights, settings, out_size=32, generator=g)
    pairs_in = set(zip(classes.flatten().tolist(), weights.flatten().tolist(), strict=True))
    pairs_out = set(zip(y.flatten().tolist(), w.flatten().tolist(), strict=True))
    assert pairs_out <= pairs_in
    assert torch.all(w[y == 1] == 1.0)
