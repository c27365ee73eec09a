"""Linking a 2D model's slice objects into 3D objects by overlap along z."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.core.inference import DEFAULT_LINK_OVERLAP, SliceLinker, link_slices
from napari_unet.sample_data import make_touching_nuclei_3d


def per_slice(volume: np.ndarray, seed: int = 0) -> np.ndarray:
    """What a 2D model gives: each slice labelled on its own, labels shuffled per slice."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(volume)
    for z, plane in enumerate(volume):
        ids = np.unique(plane[plane > 0])
        new = rng.permutation(ids.size) + 1 + 1000 * z
        lookup = np.zeros(int(volume.max()) + 1, volume.dtype)
        lookup[ids] = new
        out[z] = lookup[plane]
    return out


def test_cylinders_spanning_several_slices_get_one_label_each():
    stack = np.zeros((6, 20, 30), np.int32)
    stack[0:4, 2:8, 2:8] = 1  # slices 0-3
    stack[1:6, 10:18, 5:12] = 2  # slices 1-5
    stack[3:5, 3:9, 20:27] = 3  # slices 3-4, appears later
    linked = link_slices(per_slice(stack, seed=1))
    assert linked.dtype == np.int32
    np.testing.assert_array_equal(linked > 0, stack > 0)
    for k in (1, 2, 3):
        assert np.unique(linked[stack == k]).size == 1
    assert np.unique(linked[linked > 0]).tolist() == [1, 2, 3]  # first appearance order


def test_matching_is_one_to_one_and_respects_the_threshold():
    above = np.zeros((10, 20), np.int32)
    above[2:8, 2:18] = 4
    below = np.zeros_like(above)
    below[2:8, 2:9] = 1  # the object splits in two: only the better overlap continues it
    below[2:8, 10:18] = 2
    linker = SliceLinker(threshold=0.3, measure="iou")
    linker(above)
    out = linker(below)
    assert out[4, 12] == 1 and out[4, 5] == 2  # 2 overlaps more (8 of 16 columns vs 7)
    assert linker.n_objects == 2
    # below the threshold nothing is linked
    strict = SliceLinker(threshold=0.6, measure="iou")
    strict(above)
    assert set(np.unique(strict(below))) == {0, 2, 3}
    # by overlap of the smaller object both halves lie wholly in the object above: one link,
    # the larger half
    by_overlap = SliceLinker()
    by_overlap(above)
    out = by_overlap(below)
    assert out[4, 12] == 1 and out[4, 5] == 2


def test_a_nucleus_tip_is_kept_by_overlap_and_split_by_iou():
    stack = np.zeros((3, 30, 30), np.int32)
    yy, xx = np.mgrid[:30, :30]
    for z, r in enumerate((3, 10, 12)):  # the tip, then wider sections
        stack[z][(yy - 15) ** 2 + (xx - 15) ** 2 <= r * r] = z + 1
    assert np.unique(link_slices(stack)[stack > 0]).tolist() == [1]
    iou = link_slices(stack, threshold=0.25, measure="iou")
    assert np.unique(iou[stack > 0]).tolist() == [1, 2]  # the tip is its own object


def test_synthetic_nuclei_stack_is_linked_into_its_3d_objects():
    _, volume = make_touching_nuclei_3d((24, 96, 96), 25, spacing=(2.0, 1.0, 1.0), seed=3)
    # a 2D model sees touching nuclei as separate only where they are separate in the slice
    linked = link_slices(per_slice(volume, seed=2), threshold=DEFAULT_LINK_OVERLAP)
    n_true = int(volume.max())
    # nuclei found as exactly one 3D object: every voxel one label, no other nucleus in it
    whole = 0
    for k in range(1, n_true + 1):
        ids = np.unique(linked[volume == k])
        whole += ids.size == 1 and np.all(volume[linked == ids[0]] == k)
    assert whole >= 0.9 * n_true
    assert n_true - 2 <= np.unique(linked[linked > 0]).size <= n_true
    # every linked object is connected in 3D
    for k, sl in enumerate(ndi.find_objects(linked), start=1):
        if sl is not None:
            assert ndi.label(linked[sl] == k, structure=np.ones((3, 3, 3)))[1] == 1


def test_in_place_and_bad_input():
    stack = np.zeros((3, 5, 5), np.int64)
    stack[:, 1:4, 1:4] = np.array([7, 8, 9])[:, None, None]
    out = link_slices(stack, out=stack)
    assert out is stack and np.all(stack[:, 2, 2] == 1)
    with pytest.raises(ValueError, match=r"\(Z, Y, X\) stack of 2D slices, got shape \(5, 5\)"):
        link_slices(np.zeros((5, 5), np.int32))
    with pytest.raises(ValueError, match=r"threshold .* must be in \(0, 1\], got 0"):
        link_slices(stack, threshold=0)
    with pytest.raises(ValueError, match="integer label image"):
        link_slices(np.zeros((2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="measure must be one of"):
        link_slices(stack, measure="dice")
    with pytest.raises(ValueError, match=r"out must have the labels' shape"):
        link_slices(stack, out=np.zeros((2, 5, 5), np.int32))
