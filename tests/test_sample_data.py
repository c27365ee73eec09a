"""Tests of the synthetic touching-cells sample."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.sample_data import make_touching_cells, touching_cells_sample


def test_deterministic_and_typed() -> None:
    a_img, a_lab = make_touching_cells((96, 128), n_cells=12, seed=3)
    b_img, b_lab = make_touching_cells((96, 128), n_cells=12, seed=3)
    c_img, _ = make_touching_cells((96, 128), n_cells=12, seed=4)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == a_lab.shape == (96, 128)
    assert a_img.dtype == np.uint16 and a_lab.dtype == np.int32


def test_labels_are_consecutive_connected_instances() -> None:
    _, labels = make_touching_cells((256, 256), n_cells=40, seed=0)
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(labels.max() + 1))
    assert labels.max() >= 35
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        _, n = ndi.label(labels[sl] == k, structure=np.ones((3, 3)))
        assert n == 1


def test_many_cells_touch() -> None:
    _, labels = make_touching_cells((256, 256), n_cells=40, seed=0)
    touching = set()
    for dy, dx in [(0, 1), (1, 0), (1, 1), (1, -1)]:
        a = labels[max(dy, 0) :, max(dx, 0) or None : labels.shape[1] + min(dx, 0)]
        b = labels[: labels.shape[0] - dy, max(-dx, 0) : labels.shape[1] - max(dx, 0)]
        pairs = (a != b) & (a > 0) & (b > 0)
        touching |= set(a[pairs]) | set(b[pairs])
    assert len(touching) >= 0.3 * labels.max()


def test_cells_are_brighter_than_background() -> None:
    image, labels = make_touching_cells((128, 128), n_cells=15, seed=1)
    assert image[labels > 0].mean() > 2 * image[labels == 0].mean()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="shape must be"):
        make_touching_cells((8, 8))
    with pytest.raises(ValueError, match="touching must be"):
        make_touching_cells(touching=0.1)


def test_napari_sample_layers() -> None:
    (image, image_kw, image_type), (labels, labels_kw, labels_type) = touching_cells_sample()
    assert (image_type, labels_type) == ("image", "labels")
    assert image.shape == labels.shape
    assert image_kw["name"] == "touching cells" and labels_kw["name"] == "ground truth"


def test_same_output_as_the_reference() -> None:
    """The image and labels for a seed are fixed (hash taken before make_touching_cells was split
    into placing, drawing and rendering)."""
    import hashlib

    image, labels = make_touching_cells((64, 80), n_cells=8, seed=5)
    digest = hashlib.sha256(image.tobytes() + labels.tobytes()).hexdigest()
    assert int(image.sum()) == 23688181 and int(labels.max()) == 8
    assert digest == "127bf80c800479c9b93428aceb266835295c7fd87a0e54f68b0d6234dcc34b0b"


# ---------------------------------------------------------------------------------- 3D sample


def test_nuclei_3d_deterministic_typed_and_connected() -> None:
    from napari_unet.sample_data import make_touching_nuclei_3d

    a_img, a_lab = make_touching_nuclei_3d((16, 64, 64), 12, seed=2)
    b_img, b_lab = make_touching_nuclei_3d((16, 64, 64), 12, seed=2)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert a_img.shape == a_lab.shape == (16, 64, 64)
    assert a_img.dtype == np.uint16 and a_lab.dtype == np.int32
    np.testing.assert_array_equal(np.unique(a_lab), np.arange(a_lab.max() + 1))
    assert a_lab.max() >= 10
    for k, sl in enumerate(ndi.find_objects(a_lab), start=1):
        _, n = ndi.label(a_lab[sl] == k, structure=np.ones((3, 3, 3)))
        assert n == 1
    assert a_img[a_lab > 0].mean() > 2 * a_img[a_lab == 0].mean()


def test_nuclei_3d_are_anisotropic_and_touch() -> None:
    from napari_unet.sample_data import make_touching_nuclei_3d

    _, labels = make_touching_nuclei_3d((40, 160, 160), 60, spacing=(2.5, 1.0, 1.0), seed=0)
    # a nucleus of radius 7-11 spans about 2 r / 2.5 slices and 2 r columns
    extents = np.array([[s.stop - s.start for s in sl] for sl in ndi.find_objects(labels)])
    z_over_x = np.median(extents[:, 0] / extents[:, 2])
    assert 0.3 < z_over_x < 0.55
    touching = set()
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        pairs = (a[1:] != a[:-1]) & (a[1:] > 0) & (a[:-1] > 0)
        touching |= set(a[1:][pairs]) | set(a[:-1][pairs])
    assert len(touching) >= 0.3 * labels.max()


def test_nuclei_3d_bad_arguments_and_napari_sample() -> None:
    from napari_unet.sample_data import make_touching_nuclei_3d, touching_nuclei_3d_sample

    with pytest.raises(ValueError, match="shape must be"):
        make_touching_nuclei_3d((64, 64))
    with pytest.raises(ValueError, match="spacing must be"):
        make_touching_nuclei_3d(spacing=(0.0, 1.0, 1.0))
    (image, image_kw, image_type), (labels, labels_kw, labels_type) = touching_nuclei_3d_sample()
    assert (image_type, labels_type) == ("image", "labels")
    assert image.shape == labels.shape and image.ndim == 3
    assert image_kw["scale"] == labels_kw["scale"] == (2.5, 1.0, 1.0)
