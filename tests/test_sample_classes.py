"""Tests of the synthetic sample of the classes mode."""

from __future__ import annotations

import numpy as np

from napari_unet.sample_data import CELL_CLASS_NAMES, cell_classes_sample, make_cell_classes


def test_deterministic_typed_and_every_class_present() -> None:
    a = make_cell_classes((128, 160), 14, seed=2)
    b = make_cell_classes((128, 160), 14, seed=2)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    image, scribbles, truth = a
    assert image.dtype == np.uint16 and scribbles.dtype == truth.dtype == np.uint8
    assert image.shape == scribbles.shape == truth.shape == (128, 160)
    assert np.unique(truth).tolist() == [1, 2, 3]
    assert np.unique(scribbles).tolist() == [0, 1, 2, 3]


def test_scribbles_are_sparse_and_true() -> None:
    _, scribbles, truth = make_cell_classes((256, 256), 40, seed=0)
    painted = scribbles > 0
    assert 0.003 < painted.mean() <= 0.05
    np.testing.assert_array_equal(scribbles[painted], truth[painted])


def test_the_two_kinds_differ_in_shape_and_texture_not_in_mean_brightness() -> None:
    image, _, truth = make_cell_classes((256, 256), 40, seed=0)
    round_cells, rods = image[truth == 2].astype(float), image[truth == 3].astype(float)
    assert abs(round_cells.mean() - rods.mean()) < 0.05 * rods.mean()
    assert rods.std() > 2 * round_cells.std()  # speckled vs smooth


def test_napari_sample_names_the_classes() -> None:
    (image, _, kind), (scribbles, meta, kind2), (truth, truth_meta, _meta) = cell_classes_sample()
    assert (kind, kind2) == ("image", "labels")
    assert meta["features"]["name"][1:] == list(CELL_CLASS_NAMES)
    assert truth_meta["visible"] is False
    assert image.shape == scribbles.shape == truth.shape
