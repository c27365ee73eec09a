"""Border weights, the gap and training targets of 3D volumes with an anisotropic voxel size."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.core.targets import (
    BACKGROUND,
    FOREGROUND,
    IGNORE,
    axis_gaps,
    border_weight_map,
    check_sampling,
    cut_gap,
    grow_instances,
    pixel_sampling,
    touching_gap,
    training_targets,
)
from napari_unet.sample_data import make_touching_cells, make_touching_nuclei_3d


def naive_weight_map(labels, sampling, *, w0=10.0, sigma=5.0, class_balance=True):
    """Eq. 2 with one full-volume anisotropic distance transform per instance (float64)."""
    spacing = np.asarray(sampling, float) / min(sampling)
    ids = [k for k in np.unique(labels) if k != 0]
    fg = labels > 0
    border = np.zeros(labels.shape)
    if len(ids) >= 2:
        dist = np.stack([ndi.distance_transform_edt(labels != k, sampling=spacing) for k in ids])
        dist.sort(axis=0)
        border = w0 * np.exp(-((dist[0] + dist[1]) ** 2) / (2 * sigma**2))
        border[fg] = 0
    if not class_balance:
        return 1.0 + border
    n, n_fg = labels.size, fg.sum()
    return np.where(fg, n / (2 * n_fg), n / (2 * (n - n_fg))) + border


def nuclei(shape=(14, 48, 48), n=10, spacing=(2.0, 1.0, 1.0), seed=0):
    return make_touching_nuclei_3d(shape, n, spacing=spacing, radius=(5.0, 9.0), seed=seed)[1]


# ------------------------------------------------------------------------------ voxel sizes


def test_check_sampling_and_pixel_units():
    assert check_sampling(None) is None
    assert check_sampling(np.array([3, 1, 1]), ndim=3) == (3.0, 1.0, 1.0)
    np.testing.assert_array_equal(pixel_sampling((2.0, 0.5, 0.5), 3), [4.0, 1.0, 1.0])
    np.testing.assert_array_equal(pixel_sampling(None, 2), [1.0, 1.0])
    with pytest.raises(ValueError, match=r"sampling must have 3 values .* got 2: \(1.0, 1.0\)"):
        check_sampling((1.0, 1.0), ndim=3)
    for bad in [(1.0, 0.0, 1.0), (1.0, -2.0, 1.0), (float("nan"), 1.0, 1.0), (True, 1, 1)]:
        with pytest.raises(ValueError, match="finite spacings > 0"):
            check_sampling(bad, ndim=3)
    with pytest.raises(ValueError, match="sequence of spacings"):
        check_sampling(2.0)


def test_volume_needs_a_voxel_size_of_its_length():
    volume = np.zeros((4, 8, 8), np.int32)
    with pytest.raises(ValueError, match=r"2D \(Y, X\), got 3D .*sampling=\(z, y, x\)"):
        border_weight_map(volume)
    with pytest.raises(ValueError, match=r"3D \(Z, Y, X\), got 2D"):
        training_targets(np.zeros((8, 8), np.int32), sampling=(2.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="sampling must hold finite spacings > 0"):
        border_weight_map(volume, sampling=(0, 1, 1))
    with pytest.raises(ValueError, match="sampling must hold finite spacings > 0"):
        cut_gap(volume, sampling=(1, -1, 1))


# ------------------------------------------------------------------------------ weight maps


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0), (3.0, 0.5, 0.5)])
def test_3d_weight_map_matches_naive_anisotropic_reference(spacing):
    labels = nuclei(spacing=spacing, seed=1)
    assert labels.max() >= 6
    for kw in ({}, {"sigma": 3.0, "w0": 5.0, "class_balance": False}):
        ours = border_weight_map(labels, sampling=spacing, **kw)
        assert ours.dtype == np.float32 and ours.shape == labels.shape
        assert np.abs(ours - naive_weight_map(labels, spacing, **kw)).max() <= 1e-3


def test_3d_weight_map_distances_are_physical():
    lab = np.zeros((7, 9, 9), np.int32)
    lab[:3, 2:7, 2:7] = 1
    lab[4:, 2:7, 2:7] = 2  # one slice of background between the two
    w = border_weight_map(lab, sampling=(3.0, 1.0, 1.0), class_balance=False)
    # the slice between: d1 = d2 = one z step = 3 in-plane pixels
    assert w[3, 4, 4] == pytest.approx(1 + 10 * np.exp(-36 / 50), abs=1e-5)
    # the same layout rotated in-plane, with square voxels: d1 = d2 = 1
    iso = border_weight_map(np.moveaxis(lab, 0, 2), sampling=(1, 1, 1), class_balance=False)
    assert iso[4, 4, 3] == pytest.approx(1 + 10 * np.exp(-4 / 50), abs=1e-5)
    # sigma counts pixels of the finest axis: halving every spacing changes nothing
    np.testing.assert_array_equal(
        w, border_weight_map(lab, sampling=(1.5, 0.5, 0.5), class_balance=False)
    )


def test_2d_with_square_sampling_is_unchanged():
    labels = make_touching_cells((96, 96), 15, seed=2)[1]
    np.testing.assert_array_equal(
        border_weight_map(labels, sampling=(0.3, 0.3)), border_weight_map(labels)
    )
    stretched = border_weight_map(labels, sampling=(2.0, 1.0), class_balance=False)
    assert (
        np.abs(stretched - naive_weight_map(labels, (2.0, 1.0), class_balance=False)).max() < 1e-3
    )


# ---------------------------------------------------------------------------------- the gap


def test_axis_gaps_round_to_whole_voxels_at_least_one():
    assert axis_gaps(0, (3.0, 1.0, 1.0), 3) == (0, 0, 0)
    assert axis_gaps(1, None, 3) == (1, 1, 1)
    assert axis_gaps(2, (3.0, 1.0, 1.0), 3) == (1, 2, 2)
    assert axis_gaps(3, (2.0, 1.0, 1.0), 3) == (2, 3, 3)  # 1.5 rounds up
    assert axis_gaps(4, (1.0, 1.0, 0.5), 3) == (2, 2, 4)


def test_3d_gap_is_cut_along_every_axis():
    lab = np.zeros((8, 10, 12), np.int32)
    lab[:4] = 1
    lab[4:, :, :6] = 2
    lab[4:, :, 6:] = 3
    gap = touching_gap(lab, 2, sampling=(3.0, 1.0, 1.0))
    # along z (spacing 3): one slice per side; along x: two columns per side
    np.testing.assert_array_equal(np.flatnonzero(gap[:, 5, 0]), [3, 4])
    np.testing.assert_array_equal(np.flatnonzero(gap[6, 5]), [4, 5, 6, 7])
    cut = cut_gap(lab, 2, sampling=(3.0, 1.0, 1.0))
    _, n = ndi.label(cut > 0, structure=np.ones((3, 3, 3)))
    assert n == 3


def test_cut_separates_touching_nuclei_into_3d_components():
    labels = nuclei((16, 64, 64), 20, seed=3)
    cut = cut_gap(labels, 1, sampling=(2.0, 1.0, 1.0))
    _, n = ndi.label(cut > 0, structure=np.ones((3, 3, 3)))
    assert n == len(np.unique(cut[cut > 0])) == labels.max()
    assert np.all((cut == labels) | (cut == 0))


@pytest.mark.parametrize("sampling", [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0)])
@pytest.mark.parametrize("gap", [1, 2])
def test_3d_grow_instances_inverts_straight_and_oblique_borders(gap, sampling):
    zz, yy, xx = np.mgrid[:12, :24, :24]
    planes = [
        np.where(zz < 6, 1, 2),  # border across z
        np.where(xx < 11, 4, 2),  # border across x
        np.where(2 * zz + yy < 24, 1, 3),  # a plane oblique in z and y
        np.where(zz + yy + xx < 24, 5, 1),  # oblique in all three axes
    ]
    if gap == 2 and sampling[0] == 2.0:
        planes.pop()  # gaps (1, 2, 2): the cut across this plane is not exactly reversible
    for lab in planes:
        lab = lab.astype(np.int32)
        cut = cut_gap(lab, gap, sampling=sampling)
        assert (cut == 0).any()
        inner = (slice(2 * gap, -2 * gap),) * 3  # away from the edge, where runs leave the volume
        grown = grow_instances(cut, gap, sampling=sampling)
        np.testing.assert_array_equal(grown[inner], lab[inner])


def test_3d_grow_instances_restores_cut_nuclei_and_grows_everywhere():
    sampling = (2.0, 1.0, 1.0)
    labels = nuclei((16, 64, 64), 20, seed=4)
    cut = cut_gap(labels, 1, sampling=sampling)
    grown = grow_instances(cut, 1, sampling=sampling)
    both = (labels > 0) & (grown > 0)
    assert np.array_equal(labels[both], grown[both])  # never a voxel of one nucleus to another
    removed = cut != labels
    assert removed.sum() > 500
    assert np.mean(grown[removed] == labels[removed]) > 0.95
    # what else grew: background within two voxels of two different nuclei (near-touching
    # ellipsoids of the sample), never free outlines
    extra = (labels == 0) & (grown > 0)
    near_two = ndi.maximum_filter(labels, 5) != ndi.minimum_filter(
        np.where(labels > 0, labels, labels.max() + 1), 5
    )
    assert np.all(near_two[extra])
    lonely = np.zeros((5, 9, 9), np.int32)
    lonely[2, 4, 4] = 7
    out = grow_instances(lonely, 2, everywhere=True, sampling=sampling)
    expected = np.zeros_like(lonely)
    expected[1:4, 2:7, 2:7] = 7  # one step along z (gap 2 of spacing 2), two in-plane
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(grow_instances(lonely, 2, sampling=sampling), lonely)


def test_3d_grow_instances_along_chosen_axes_only():
    sampling = (2.0, 1.0, 1.0)
    lab = np.zeros((5, 6, 7), np.int32)
    lab[0:2, :, 0:3] = 1
    lab[3:5, :, 0:3] = 2  # a one-slice gap along z under nucleus 1
    lab[0:2, :, 4:7] = 3  # a one-column gap in-plane beside nucleus 1
    grown = grow_instances(lab, 1, sampling=sampling)
    assert np.all(grown[2, :, 0:3] > 0) and np.all(grown[0:2, :, 3] > 0)
    in_plane = grow_instances(lab, 1, sampling=sampling, axes=(1, 2))
    assert not in_plane[2].any()  # nothing grew across the z gap or along a z diagonal
    np.testing.assert_array_equal(in_plane[0:2, :, 3], grown[0:2, :, 3])  # in-plane as before
    np.testing.assert_array_equal(in_plane[:, :, 4:], lab[:, :, 4:])  # nothing else changed
    np.testing.assert_array_equal(in_plane[[0, 1, 3, 4], :, :3], lab[[0, 1, 3, 4], :, :3])
    everywhere = grow_instances(lab, 1, everywhere=True, sampling=sampling, axes=(1, 2))
    assert not everywhere[2].any() and np.all(everywhere[0:2, :, 3] > 0)
    assert grow_instances(lab, 1, everywhere=True, sampling=sampling)[2].all()
    with pytest.raises(ValueError, match="axes must be axes of the 3D labels"):
        grow_instances(lab, 1, sampling=sampling, axes=(3,))


# ----------------------------------------------------------------------------------- targets


def test_3d_training_targets():
    labels = nuclei((12, 48, 48), 10, seed=5)
    sampling = (2.0, 1.0, 1.0)
    region = np.zeros(labels.shape, bool)
    region[2:9] = True
    t = training_targets(labels, region=region, gap=1, sampling=sampling)
    cut = cut_gap(labels, 1, sampling=sampling)
    expected = np.where(cut > 0, FOREGROUND, BACKGROUND)
    expected[~region] = IGNORE
    np.testing.assert_array_equal(t.classes, expected)
    np.testing.assert_array_equal(
        t.weights, border_weight_map(cut, region=region, sampling=sampling)
    )
    gap = touching_gap(labels, sampling=sampling) & region
    assert gap.any() and np.median(t.weights[gap]) > 5
    assert np.all(t.weights[~region] == 0)


# ------------------------------------------------------------------------------ live updates


@pytest.mark.parametrize("gap", [0, 1])
def test_3d_live_map_equals_full_recompute(gap):
    from napari_unet.core.targets import BorderWeightMap

    sampling = (2.0, 1.0, 1.0)
    labels = nuclei((12, 64, 64), 14, seed=6)
    live = BorderWeightMap(labels, gap=gap, sampling=sampling, sigma=4.0)
    assert live.shape == labels.shape and live.sampling == sampling
    zz, yy, xx = np.mgrid[:12, :64, :64]
    painted = labels.copy()
    painted[(2 * (zz - 6)) ** 2 + (yy - 30) ** 2 + (xx - 30) ** 2 <= 64] = labels.max() + 1
    box = live.update(painted)
    assert box is not None and len(box) == 3
    assert box[1].stop - box[1].start < 64  # recomputed around the edit, not everywhere
    erased = painted.copy()
    erased[erased == 1] = 0
    # a user paints one slice at a time: the hint is that slice
    erased[5, 50:55, 50:55] = 0
    live.update(erased, changed=(slice(0, 12), slice(0, 64), slice(0, 64)))
    expected = training_targets(erased, gap=gap, sigma=4.0, sampling=sampling).weights
    np.testing.assert_array_equal(live.weights, expected)
    with pytest.raises(ValueError, match="a box of 3 slices"):
        live.update(erased, changed=(slice(0, 4), slice(0, 4)))
