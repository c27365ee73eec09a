"""Tests for border-weight maps, training targets and the gap between touching cells."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.core import targets as W
from napari_unet.core.targets import (
    BACKGROUND,
    FOREGROUND,
    IGNORE,
    BorderWeightMap,
    border_radius,
    border_weight_map,
    border_weight_stack,
    check_labels,
    cut_gap,
    grow_instances,
    live,
    touching_gap,
    training_targets,
    update_border_weights,
)
from napari_unet.sample_data import make_touching_cells


def naive_weight_map(labels, *, w0=10.0, sigma=5.0, class_balance=True, region=None):
    """Reference: eq. 2 with one full-image distance transform per cell, in float64."""
    ids = [k for k in np.unique(labels) if k != 0]
    fg = labels > 0
    border = np.zeros(labels.shape)
    if len(ids) >= 2:
        dist = np.stack([ndi.distance_transform_edt(labels != k) for k in ids])
        dist.sort(axis=0)
        border = w0 * np.exp(-((dist[0] + dist[1]) ** 2) / (2 * sigma**2))
        border[fg] = 0
    annotated = np.ones(labels.shape, bool) if region is None else region
    n = annotated.sum()
    if class_balance:
        n_fg = (fg & annotated).sum()
        n_bg = n - n_fg
        wc = np.where(fg, n / (2 * n_fg) if n_fg else 1.0, n / (2 * n_bg) if n_bg else 1.0)
    else:
        wc = np.ones(labels.shape)
    return np.where(annotated, wc + border, 0.0)


def cells(shape=(128, 128), n=25, seed=0, **kw):
    return make_touching_cells(shape, n, seed=seed, **kw)[1]


# ------------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.zeros((8, 8), np.float32), "integer label image.*float32"),
        (np.zeros((8, 8), bool), "integer label image.*bool"),
        (np.full((8, 8), -1, np.int32), "non-negative.*-1"),
        (np.zeros((2, 8, 8), np.int32), "2D.*got 3D"),
        (np.zeros(8, np.int32), "2D.*got 1D"),
    ],
)
def test_bad_labels_are_refused(labels, match):
    with pytest.raises(ValueError, match=match):
        border_weight_map(labels)
    with pytest.raises(ValueError, match=match):
        training_targets(labels)
    with pytest.raises(ValueError, match=match):
        check_labels(labels)


def test_bad_region_and_params_are_refused():
    labels = np.zeros((8, 8), np.int32)
    with pytest.raises(
        ValueError, match=r"region must have the labels' shape \(8, 8\), got \(8, 9\)"
    ):
        border_weight_map(labels, region=np.ones((8, 9), bool))
    with pytest.raises(ValueError, match=r"region must be a boolean mask.*float64"):
        border_weight_map(labels, region=np.ones((8, 8)))
    with pytest.raises(ValueError, match="sigma must be a finite number > 0, got 0"):
        border_weight_map(labels, sigma=0)
    with pytest.raises(ValueError, match="w0 must be a finite number >= 0, got -1"):
        border_weight_map(labels, w0=-1)
    with pytest.raises(ValueError, match="gap must be an integer >= 0"):
        training_targets(labels, gap=-1)
    with pytest.raises(ValueError, match=r"labels must be 3D \(Z, Y, X\)"):
        border_weight_stack(labels)


def test_unsigned_and_sparse_ids_are_accepted():
    labels = cells((96, 96), 15, seed=3)
    expected = border_weight_map(labels)
    np.testing.assert_array_equal(border_weight_map(labels.astype(np.uint16)), expected)
    sparse = np.where(labels > 0, labels.astype(np.int64) * 10**9 + 7, 0)
    np.testing.assert_array_equal(border_weight_map(sparse), expected)


# ------------------------------------------------------------------------------------ the gap


def test_touching_gap_takes_both_sides_of_a_border_and_diagonal_contacts():
    lab = np.array(
        [
            [1, 1, 2, 2, 0, 0],
            [1, 1, 2, 2, 0, 0],
            [0, 0, 0, 0, 3, 3],
            [0, 0, 0, 0, 3, 3],
        ]
    )
    expected = np.array(
        [
            [0, 1, 1, 0, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 0],
            [0, 0, 0, 0, 0, 0],
        ],
        bool,
    )
    np.testing.assert_array_equal(touching_gap(lab), expected)
    assert not touching_gap(lab, gap=0).any()
    cut = cut_gap(lab)
    assert cut.dtype == lab.dtype
    np.testing.assert_array_equal(cut, np.where(expected, 0, lab))


def test_touching_gap_width_and_separate_cells():
    lab = np.zeros((5, 12), np.int32)
    lab[:, :6] = 1
    lab[:, 6:] = 2
    np.testing.assert_array_equal(np.flatnonzero(touching_gap(lab, 2)[2]), [4, 5, 6, 7])
    apart = np.zeros((5, 12), np.int32)
    apart[:, :5] = 1
    apart[:, 6:] = 2
    assert not touching_gap(apart).any()  # one pixel of background already separates them


def test_cut_separates_touching_cells_into_components():
    labels = cells((128, 128), 30, seed=1)
    cut = cut_gap(labels)
    _, n = ndi.label(cut > 0, structure=np.ones((3, 3)))
    assert n == len(np.unique(cut[cut > 0]))
    assert np.all((cut == labels) | (cut == 0))


def test_grow_instances_restores_cut_sample_cells():
    for seed in range(3):
        labels = cells((192, 192), 45, seed=seed)
        grown = grow_instances(cut_gap(labels, 1), 1)
        # Never a pixel of one cell given to another.
        both = (labels > 0) & (grown > 0)
        assert np.array_equal(labels[both], grown[both])
        ious = []
        for k in range(1, labels.max() + 1):
            a, b = labels == k, grown == k
            ious.append((a & b).sum() / (a | b).sum())
        # Not exact: where two sample cells were themselves 1-2 px apart (where a border meets
        # the background) the gap is filled too.
        assert np.mean(ious) > 0.97
        assert np.median(ious) > 0.975
        assert min(ious) > 0.85


@pytest.mark.parametrize("gap", [1, 2, 3])
def test_grow_instances_exactly_inverts_straight_and_diagonal_borders(gap):
    yy, xx = np.mgrid[:40, :40]
    for lab in (
        np.where(xx < 20, 1, 2),  # vertical border
        np.where(yy < 17, 3, 1),  # horizontal border
        np.where(xx + yy < 40, 1, 2),  # diagonal borders
        np.where(xx - yy < 3, 2, 7),
    ):
        lab = lab.astype(np.int32)
        cut = cut_gap(lab, gap)
        assert (cut == 0).any()
        # exact away from the image edge, where a diagonal run can leave the image
        inner = (slice(2 * gap, -2 * gap),) * 2
        np.testing.assert_array_equal(grow_instances(cut, gap)[inner], lab[inner])


def test_grow_instances_tiny_cases():
    lab = np.array([[0, 1, 1, 2, 2, 0], [1, 1, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0]])
    np.testing.assert_array_equal(grow_instances(cut_gap(lab)), lab)
    lonely = np.zeros((7, 7), np.int32)
    lonely[3, 3] = 4
    np.testing.assert_array_equal(grow_instances(lonely), lonely)  # nothing to close
    far = np.zeros((1, 9), np.int32)
    far[0, 0], far[0, 4], far[0, 8] = 1, 2, 3  # runs of 3 background pixels: wider than 2
    np.testing.assert_array_equal(grow_instances(far), far)
    np.testing.assert_array_equal(grow_instances(far, 2), [[1, 1, 2, 2, 2, 2, 3, 3, 3]])
    everywhere = grow_instances(lonely, 2, everywhere=True)
    np.testing.assert_array_equal(everywhere, np.pad(np.full((5, 5), 4), 1))
    # Two cells reaching the same pixel: the larger label wins, never overwriting a cell.
    pair = np.array([[1, 0, 5]])
    np.testing.assert_array_equal(grow_instances(pair), [[1, 5, 5]])
    assert grow_instances(np.zeros((3, 3), np.uint8)).sum() == 0


# ------------------------------------------------------------------------- border weight map


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_border_weight_map_matches_naive_reference(seed):
    labels = cells((160, 160), 40, seed=seed, radius=(5.0, 12.0))
    for kw in ({}, {"sigma": 3.0, "w0": 5.0}, {"class_balance": False, "sigma": 8.0}):
        ours = border_weight_map(labels, **kw)
        assert ours.dtype == np.float32 and ours.shape == labels.shape
        diff = np.abs(ours - naive_weight_map(labels, **kw)).max()
        assert diff <= 1e-3
        # the truncation (BORDER_TOLERANCE * w0) keeps it well inside that budget
        assert diff <= W.BORDER_TOLERANCE * kw.get("w0", 10.0) + 1e-5
    # training computes the map on the cut labels
    cut = cut_gap(labels)
    assert np.abs(border_weight_map(cut) - naive_weight_map(cut)).max() <= 1e-3


def test_border_weight_map_with_region_matches_reference():
    labels = cells((128, 128), 30, seed=4)
    yy, xx = np.mgrid[:128, :128]
    region = (yy - 60) ** 2 + (xx - 70) ** 2 < 50**2
    ours = border_weight_map(labels, region=region)
    assert np.abs(ours - naive_weight_map(labels, region=region)).max() <= 1e-3
    assert np.all(ours[~region] == 0)
    assert np.all(ours[region] > 0)


def test_two_cells_one_pixel_apart():
    lab = np.zeros((9, 11), np.int32)
    lab[2:7, 2:5] = 1
    lab[2:7, 6:9] = 2
    w = border_weight_map(lab, w0=10.0, sigma=5.0, class_balance=False)
    # middle column: d1 = d2 = 1
    assert w[4, 5] == pytest.approx(1 + 10 * np.exp(-4 / 50), abs=1e-5)
    # one pixel left of cell 1: d1 = 1, d2 = 5
    assert w[4, 1] == pytest.approx(1 + 10 * np.exp(-36 / 50), abs=1e-5)
    # corner (0, 0): d1 = |(2, 2)| = sqrt(8), d2 = |(2, 6)| = sqrt(40)
    expected = 1 + 10 * np.exp(-((np.sqrt(8) + np.sqrt(40)) ** 2) / 50)
    assert w[0, 0] == pytest.approx(expected, abs=1e-5)
    assert np.all(w[lab > 0] == 1.0)  # no border term on foreground
    balanced = border_weight_map(lab, class_balance=True)
    n, n_fg = lab.size, np.count_nonzero(lab)
    assert balanced[3, 3] == pytest.approx(n / (2 * n_fg))
    assert balanced[4, 5] - w[4, 5] == pytest.approx(n / (2 * (n - n_fg)) - 1, abs=1e-5)


def test_one_cell_and_no_cell_have_no_border_term():
    one = np.zeros((20, 20), np.int32)
    one[5:10, 5:10] = 3
    w = border_weight_map(one, class_balance=False)
    np.testing.assert_array_equal(w, np.ones((20, 20), np.float32))
    wb = border_weight_map(one)
    assert set(np.unique(wb)) == {np.float32(400 / (2 * 375)), np.float32(400 / (2 * 25))}
    none = np.zeros((20, 20), np.uint8)
    np.testing.assert_array_equal(border_weight_map(none, class_balance=False), 1.0)
    np.testing.assert_array_equal(border_weight_map(none), 0.5)  # n / (2 * n_background)
    np.testing.assert_array_equal(border_weight_map(np.ones((4, 4), np.int32)), 0.5)


def test_cells_at_the_image_border():
    lab = np.zeros((12, 12), np.int32)
    lab[0:5, 0:3] = 1
    lab[0:5, 4:8] = 2
    lab[9:, 9:] = 5
    w = border_weight_map(lab, class_balance=False)
    assert np.abs(w - naive_weight_map(lab, class_balance=False)).max() <= 1e-3
    assert w[0, 3] == pytest.approx(1 + 10 * np.exp(-4 / 50), abs=1e-5)


def test_far_apart_cells_get_no_border_term():
    lab = np.zeros((40, 200), np.int32)
    lab[10:20, 5:15] = 1
    lab[10:20, 185:195] = 2
    w = border_weight_map(lab, class_balance=False)
    # d1 + d2 >= 170 everywhere: exp(-170^2 / 50) is 0 in float32 anyway
    np.testing.assert_array_equal(w, 1.0)


def test_truncation_radius():
    r = border_radius(5.0)
    assert np.exp(-(r**2) / 50) == pytest.approx(W.BORDER_TOLERANCE)
    with pytest.raises(ValueError, match="tolerance"):
        border_radius(5.0, tolerance=2.0)


def test_border_weight_stack_is_slice_by_slice():
    stack = np.stack([cells((64, 64), 8, seed=s) for s in range(3)])
    region = np.ones(stack.shape, bool)
    region[1, :10] = False
    out = border_weight_stack(stack, sigma=4.0, region=region)
    for z in range(3):
        np.testing.assert_array_equal(
            out[z], border_weight_map(stack[z], sigma=4.0, region=region[z])
        )


# ------------------------------------------------------------------------------------ targets


def test_training_targets_classes_and_weights():
    labels = cells((128, 128), 30, seed=5)
    region = np.zeros(labels.shape, bool)
    region[10:100, 20:120] = True
    t = training_targets(labels, region=region, gap=1)
    assert t.classes.dtype == np.uint8 and t.weights.dtype == np.float32
    cut = cut_gap(labels, 1)
    expected = np.where(cut > 0, FOREGROUND, BACKGROUND)
    expected[~region] = IGNORE
    np.testing.assert_array_equal(t.classes, expected)
    assert np.all(t.weights[t.classes == IGNORE] == 0)
    np.testing.assert_array_equal(t.weights, border_weight_map(cut, region=region))
    # gap pixels are background with a border weight, well above the class weight
    gap = touching_gap(labels) & region
    assert gap.any() and np.all(t.classes[gap] == BACKGROUND)
    assert np.median(t.weights[gap]) > 5
    plain = training_targets(labels, region=region, border_weights=False)
    w_bg, w_fg = W.class_weights(cut > 0, region)
    np.testing.assert_allclose(
        plain.weights, np.where(region, np.where(cut > 0, w_fg, w_bg), 0), rtol=1e-6
    )
    no_gap = training_targets(labels, gap=0, class_balance=False)
    np.testing.assert_array_equal(no_gap.classes, (labels > 0).astype(np.uint8))


# ----------------------------------------------------------------------------- live updates


def _paint_disc(labels, y, x, r, value):
    yy, xx = np.mgrid[: labels.shape[0], : labels.shape[1]]
    labels[(yy - y) ** 2 + (xx - x) ** 2 <= r**2] = value


@pytest.mark.parametrize("gap", [0, 1])
def test_incremental_update_equals_full_recompute(gap):
    labels = cells((160, 160), 35, seed=6)
    region = np.ones(labels.shape, bool)
    region[:, 150:] = False
    live = BorderWeightMap(labels, gap=gap, region=region, sigma=4.0)
    rng = np.random.default_rng(0)

    def full():
        src = cut_gap(labels, gap) if gap else labels
        return border_weight_map(src, region=region, sigma=4.0)

    np.testing.assert_array_equal(live.weights, full())
    for step in range(6):
        y, x = rng.integers(0, 160, 2)
        value = 0 if step % 3 == 2 else int(labels.max()) + 1 if step % 2 else int(labels[y, x])
        _paint_disc(labels, y, x, int(rng.integers(2, 8)), value)
        box = live.update(labels)
        if box is not None:  # a recomputed box is local, not the whole image
            assert (box[0].stop - box[0].start) * (box[1].stop - box[1].start) < labels.size
        np.testing.assert_array_equal(live.weights, full())
    # two strokes far apart in one update (e.g. an undo): recomputed as two separate boxes
    _paint_disc(labels, 10, 10, 4, 0)
    _paint_disc(labels, 150, 140, 5, int(labels.max()) + 1)
    live.update(labels)
    np.testing.assert_array_equal(live.weights, full())
    # erase a whole cell, with a hint of where the change is
    k = int(labels[labels > 0][0])
    sl = ndi.find_objects(labels)[k - 1]
    labels[labels == k] = 0
    out = update_border_weights(live, labels, changed=sl)
    np.testing.assert_array_equal(out, full())
    if gap:
        np.testing.assert_array_equal(
            out, training_targets(labels, region=region, gap=gap, sigma=4.0).weights
        )
    assert live.update(labels) is None  # nothing changed


def test_change_clusters_merge_only_when_close():
    mask = np.zeros((200, 200), bool)
    mask[10:12, 10:12] = True
    mask[10:12, 20:22] = True  # 8 px away: merged with the first
    mask[150:160, 150:155] = True  # far: its own box
    boxes = sorted(live.clusters(mask, reach=20), key=lambda b: b[0].start)
    assert boxes == [(slice(10, 12), slice(10, 22)), (slice(150, 160), slice(150, 155))]
    assert live.clusters(np.zeros((5, 5), bool), reach=3) == []


def test_live_settings_changes_equal_full_recompute():
    labels = cells((128, 128), 25, seed=7)
    live = BorderWeightMap(labels)
    live.set_params(w0=3.0, class_balance=False)
    np.testing.assert_array_equal(
        live.weights, border_weight_map(labels, w0=3.0, class_balance=False)
    )
    live.set_params(sigma=7.0)
    np.testing.assert_array_equal(
        live.weights, border_weight_map(labels, w0=3.0, sigma=7.0, class_balance=False)
    )
    region = np.zeros(labels.shape, bool)
    region[:64] = True
    live.set_region(region)
    live.set_params(class_balance=True)
    np.testing.assert_array_equal(
        live.weights, border_weight_map(labels, w0=3.0, sigma=7.0, region=region)
    )
    assert live.params == {"w0": 3.0, "sigma": 7.0, "class_balance": True, "gap": 0}
    with pytest.raises(ValueError, match="labels must keep the shape"):
        live.update(labels[:10])
    with pytest.raises(ValueError, match="changed must be a bool mask"):
        live.update(labels, changed=np.ones(3))
    with pytest.raises(ValueError, match="state must be a BorderWeightMap"):
        update_border_weights(object(), labels)  # type: ignore[arg-type]


def test_live_map_keeps_its_own_copy():
    labels = cells((64, 64), 8, seed=8)
    live = BorderWeightMap(labels)
    before = live.weights.copy()
    labels[:] = 0  # napari paints in place into the layer's array
    np.testing.assert_array_equal(live.weights, before)
    live.update(labels)
    np.testing.assert_array_equal(live.weights, border_weight_map(labels))


def test_split_components_gives_each_region_its_own_label():
    from napari_unet.core.targets import split_components

    lab = np.zeros((8, 10), np.uint16)
    lab[1:3, 1:3] = 5
    lab[5:7, 6:9] = 5  # value 5 again, elsewhere
    lab[4, 4] = 5  # and a third time, touching neither
    lab[1:3, 6:8] = 9
    lab[3, 3] = 9  # touches the first 5-region and the 9... at a corner of 5 only
    out, values, cells = split_components(lab)
    assert (values, cells) == (2, 5)
    assert out.dtype == np.int32 and len(np.unique(out)) == 6
    # every region is one label, and no label spans two input values
    for v in np.unique(out)[1:]:
        assert len(np.unique(lab[out == v])) == 1
    # corner contact joins: a diagonal stroke stays one cell
    diagonal = np.eye(5, dtype=np.int32) * 3
    same, values, cells = split_components(diagonal)
    assert same is diagonal and (values, cells) == (0, 0)
