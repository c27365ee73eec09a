"""Tests of probabilities -> instance labels."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.inference import DEFAULT_MIN_SIZE, probabilities_to_labels
from napari_unet.core.targets import cut_gap


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images describe the same instances (up to renumbering)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = {(int(x), int(y)) for x, y in zip(a[a > 0], b[b > 0], strict=True)}
    return len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})


def _two_cores(core: float, bridge: float) -> np.ndarray:
    """Two 3 x 4 cores of probability ``core`` joined by a 3 px bridge of ``bridge``."""
    prob = np.zeros((5, 13), np.float32)
    prob[1:4, 1:5] = prob[1:4, 8:12] = core
    prob[2, 5:8] = bridge
    return prob


def test_touching_cells_come_back_separate_and_whole() -> None:
    truth = np.zeros((30, 40), np.int32)
    truth[5:20, 3:15] = 1
    truth[5:20, 15:30] = 2  # touches cell 1 along a straight line
    truth[25:29, 5:12] = 3  # free: more than 2 * gap from the others
    for gap in (1, 2):
        prob = (cut_gap(truth, gap) > 0).astype(np.float32) * 0.9
        labels = probabilities_to_labels(prob, gap=gap, min_size=1)
        assert labels.dtype == np.int32
        assert _same_partition(labels, truth)
        # Without growing back, the cells are smaller by the gap.
        shrunk = probabilities_to_labels(prob, gap=0, min_size=1)
        assert (shrunk > 0).sum() < (truth > 0).sum()
        assert labels.max() == 3


def test_small_objects_dropped_and_labels_consecutive_from_start() -> None:
    prob = np.zeros((20, 20), np.float32)
    prob[1:5, 1:5] = 1.0  # 16 px
    prob[10:13, 10:13] = 1.0  # 9 px
    prob[15:19, 2:7] = 1.0  # 20 px
    labels = probabilities_to_labels(prob, gap=0, min_size=10, start_label=7)
    assert sorted(np.unique(labels).tolist()) == [0, 7, 8]
    assert labels[2, 2] == 7 and labels[16, 3] == 8 and labels[11, 11] == 0
    assert probabilities_to_labels(prob, gap=0).max() == 2  # DEFAULT_MIN_SIZE = 16 keeps 16 px
    assert DEFAULT_MIN_SIZE == 16


def test_threshold_is_strict_and_connectivity() -> None:
    prob = np.array([[0.5, 0.0, 0.0], [0.0, 0.6, 0.0], [0.0, 0.0, 0.7]], np.float32)
    four = probabilities_to_labels(prob, gap=0, min_size=0)
    assert four[0, 0] == 0  # exactly at the threshold: background
    assert four[1, 1] == 1 and four[2, 2] == 2
    eight = probabilities_to_labels(prob, gap=0, min_size=0, connectivity=2)
    assert eight[1, 1] == eight[2, 2] == 1
    assert probabilities_to_labels(prob, threshold=0.65, gap=0, min_size=0).max() == 1


def test_empty_prediction() -> None:
    labels = probabilities_to_labels(np.zeros((8, 9), np.float32), start_label=5)
    assert labels.dtype == np.int32 and not labels.any()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prob": np.zeros((2, 2, 3, 4))}, "2D or 3D"),
        ({"prob": np.array([[np.nan]])}, "NaN"),
        ({"threshold": 1.0}, "threshold"),
        ({"gap": -1}, "gap"),
        ({"min_size": 2.5}, "min_size"),
        ({"start_label": 0}, "start_label"),
        ({"connectivity": 3}, "connectivity"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    prob = kwargs.pop("prob", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=match):
        probabilities_to_labels(prob, **kwargs)


def test_broken_gap_still_separates_touching_cells() -> None:
    truth = np.zeros((30, 40), np.int32)
    truth[5:20, 3:15] = 1
    truth[5:20, 15:30] = 2
    prob = (cut_gap(truth, 1) > 0).astype(np.float32) * 0.95
    prob[10:13, 14:16] = 0.6  # the predicted gap is broken by a weak 3-pixel bridge
    labels = probabilities_to_labels(prob, gap=1, min_size=1)
    assert _same_partition(labels, truth)
    # plain connected components (seeds at the threshold) merge the two cells
    merged = probabilities_to_labels(prob, gap=1, min_size=1, seed_threshold=0.5)
    assert merged.max() == 1


def test_foreground_without_a_confident_core_is_kept() -> None:
    prob = np.zeros((10, 20), np.float32)
    prob[2:8, 2:8] = 0.95
    prob[2:8, 12:18] = 0.6  # never above the seed threshold
    labels = probabilities_to_labels(prob, gap=0, min_size=1)
    assert labels.max() == 2 and labels[4, 4] == 1 and labels[4, 14] == 2
    with pytest.raises(ValueError, match="seed_threshold"):
        probabilities_to_labels(prob, threshold=0.5, seed_threshold=0.4)


def test_postprocessing_defaults_come_from_the_model() -> None:
    from napari_unet.core.inference import postprocessing_defaults

    assert postprocessing_defaults({"threshold": 0.3, "min_size": 7}) == (0.3, 7, 0.98)
    assert postprocessing_defaults({"threshold": 0.3}, 0.55, 3) == (0.55, 3, 0.98)
    assert postprocessing_defaults({}) == (0.5, DEFAULT_MIN_SIZE, 0.98)
    recorded = postprocessing_defaults({"min_confidence": 0.6})
    assert recorded.min_confidence == 0.6
    assert postprocessing_defaults({"min_confidence": 0.6}, min_confidence=0.0).min_confidence == 0


def test_objects_without_a_confident_core_are_dropped() -> None:
    prob = np.zeros((6, 13), np.float32)
    prob[1:5, 1:5] = 0.7
    prob[2, 2] = 0.99  # an object with one confident pixel
    prob[1:5, 7:11] = 0.6  # haze above the threshold
    prob[2:4, 8:10] = 0.92  # with a core of 0.92
    keep_all = probabilities_to_labels(prob, gap=0, min_size=1)
    assert keep_all.max() == 2  # the default of the low-level function keeps all
    labels = probabilities_to_labels(prob, gap=0, min_size=1, min_confidence=0.98)
    assert labels.max() == 1 and (labels[1:5, 1:5] == 1).all() and not labels[:, 6:].any()
    lower = probabilities_to_labels(prob, gap=0, min_size=1, min_confidence=0.9)
    assert lower.max() == 2 and (lower[1:5, 7:11] == 2).all()
    with pytest.raises(ValueError, match="min_confidence must be in"):
        probabilities_to_labels(prob, min_confidence=1.0)


def test_model_labeller_applies_the_model_post_processing(tiny_model) -> None:
    from dataclasses import replace

    from napari_unet.core.inference import StackLabeller, class_ids, model_labeller

    model = replace(tiny_model(), gap=2, training={"threshold": 0.3, "min_size": 7})
    labeller = model_labeller(model)
    assert isinstance(labeller, StackLabeller)
    chosen = (labeller.threshold, labeller.min_size, labeller.gap, labeller.sampling)
    assert chosen == (0.3, 7, 2, None)
    labeller = model_labeller(model, threshold=0.6, min_size=3)  # the caller's win
    assert (labeller.threshold, labeller.min_size) == (0.6, 3)
    volume = tiny_model(spatial_dims=3, voxel_size=(2.0, 1.0, 1.0))
    assert model_labeller(volume).sampling == (2.0, 1.0, 1.0)
    classes = replace(tiny_model(n_classes=3), mode="classes")
    assert model_labeller(classes) is class_ids
    prob = np.zeros((5, 9), np.float32)
    prob[1:4, 1:4] = prob[1:4, 5:8] = 0.4  # above the model's 0.3, below the default 0.5
    small = replace(model, gap=0, training={"threshold": 0.3, "min_size": 1})
    assert model_labeller(small).min_confidence == 0.98  # the default: a peak of 0.4 is unsure
    assert model_labeller(small)(prob).max() == 0
    assert model_labeller(small, min_confidence=0.0)(prob).max() == 2  # the caller's win
    recorded = replace(small, training={**small.training, "min_confidence": 0.35})
    assert model_labeller(recorded)(prob).max() == 2


@pytest.mark.parametrize(
    ("core", "bridge", "record", "key", "value"),
    [
        # two confident cores (0.99) joined by a bridge at 0.9: seeds at 0.75 make one object
        (0.99, 0.9, {}, "seed_threshold", 0.95),
        # two cores (0.999) joined by a confident bridge at 0.99: one object with any seed
        # threshold below 0.99, two where the model records a seed split
        (0.999, 0.99, {"seed_threshold": 0.98}, "seed_split", 0.15),
    ],
)
def test_model_labeller_separates_bridged_cores_as_the_model_records(
    tiny_model, core, bridge, record, key, value
) -> None:
    from dataclasses import replace

    from napari_unet.core.inference import model_labeller

    prob = _two_cores(core, bridge=bridge)
    training = {"threshold": 0.5, "min_size": 1, **record}
    plain = replace(tiny_model(), gap=0, training=training)
    assert getattr(model_labeller(plain), key) is None
    assert model_labeller(plain)(prob).max() == 1
    recorded = replace(plain, training={**training, key: value})
    assert getattr(model_labeller(recorded), key) == value
    labels = model_labeller(recorded)(prob)
    assert labels.max() == 2 and labels[2, 2] != labels[2, 10]


def test_a_caller_threshold_above_the_model_seed_threshold_takes_the_default_seeds(
    tiny_model,
) -> None:
    from dataclasses import replace

    from napari_unet.core.inference import model_labeller

    training = {"threshold": 0.5, "min_size": 1, "seed_threshold": 0.95}
    seeded = replace(tiny_model(), gap=0, training=training)
    assert model_labeller(seeded, threshold=0.96).seed_threshold is None


def _ellipsoid(shape: tuple[int, int, int], centre: tuple[float, ...], radii: tuple[float, ...]):
    """bool mask of an axis-aligned ellipsoid in a volume."""
    grid = np.indices(shape, dtype=np.float64)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0


def test_seed_split_parts_objects_joined_by_a_confident_bridge() -> None:
    from napari_unet.core.inference import seed_levels, split_seeds

    # two nuclei stacked in z, touching: confident (0.99) everywhere but near their centres
    # (0.999), with a contact at 0.985 -- above any fixed seed threshold up to 0.98
    shape = (16, 12, 20)
    upper = _ellipsoid(shape, (4.0, 5.5, 5.5), (3.6, 4.5, 4.5))
    lower = _ellipsoid(shape, (11.0, 5.5, 5.5), (3.6, 4.5, 4.5)) & ~upper
    prob = np.where(upper | lower, 0.99, 0.02).astype(np.float32)
    prob[_ellipsoid(shape, (4.0, 5.5, 5.5), (2.8, 3.8, 3.8))] = 0.999
    prob[_ellipsoid(shape, (11.0, 5.5, 5.5), (2.8, 3.8, 3.8))] = 0.999
    contact = (upper | lower) & (np.abs(np.indices(shape)[0] - 7.5) < 1)
    prob[contact] = 0.985
    # a weak object beside them: foreground at 0.9, a single voxel above 0.99
    weak = _ellipsoid(shape, (8.0, 5.5, 16.0), (3.0, 2.0, 2.0))
    assert weak.sum() > 10 and not (weak & (upper | lower)).any()
    prob[weak] = 0.9
    prob[tuple(np.argwhere(weak)[len(np.argwhere(weak)) // 2])] = 0.995
    kwargs = {"gap": 0, "min_size": 1, "sampling": (2.0, 1.0, 1.0)}
    for seeds in (None, 0.98):  # a fixed seed threshold joins the two nuclei
        joined = probabilities_to_labels(prob, seed_threshold=seeds, **kwargs)
        assert joined[4, 5, 5] == joined[11, 5, 5] > 0
    labels = probabilities_to_labels(prob, seed_split=0.15, **kwargs)
    assert labels.max() == 3
    assert 0 < labels[4, 5, 5] != labels[11, 5, 5] > 0
    assert np.array_equal(labels[upper] == labels[4, 5, 5], np.ones(upper.sum(), bool))
    assert len(np.unique(labels[weak])) == 1 and labels[weak][0] > 0  # the weak one is whole
    # split_seeds itself: the one seed at 0.75 becomes two at 0.99875; the input unchanged
    seeds = (prob > 0.75) & (upper | lower)
    parts, n = split_seeds(prob, seeds.astype(np.int32), seed_levels(0.75)[1:], 0.15)
    assert seeds.dtype == bool and len(np.unique(parts[parts > 0])) == 2 and n >= 3
    assert seed_levels(0.75)[:4] == (0.75, 0.875, 0.9375, 0.96875)
    assert len(seed_levels(0.75)) == 8 and seed_levels(0.75)[-1] == 1 - 0.25 / 2**7


def test_seed_split_is_checked() -> None:
    from napari_unet.core.inference import StackLabeller, seed_levels

    prob = np.zeros((4, 4), np.float32)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"seed_split must be in \(0, 1\]"):
            probabilities_to_labels(prob, seed_split=bad)
        with pytest.raises(ValueError, match="seed_split"):
            StackLabeller(seed_split=bad)
    with pytest.raises(ValueError, match="seed_threshold must be in"):
        seed_levels(1.0)


def test_model_labeller_grows_the_gap_along_the_model_gap_axes(tiny_model) -> None:
    from dataclasses import replace

    from napari_unet.core.inference import model_labeller

    prob = np.zeros((5, 6, 7), np.float32)
    prob[0:2, :, 0:3] = prob[3:5, :, 0:3] = 0.99  # two objects, one slice apart along z
    volume = tiny_model(spatial_dims=3, voxel_size=(2.0, 1.0, 1.0))
    model = replace(volume, gap=1, training={"threshold": 0.5, "min_size": 1})
    assert model_labeller(model).grow_axes is None
    assert model_labeller(model)(prob)[2, :, 0:3].all()  # grown across the slice (all axes)
    sliced = replace(model, training={**model.training, "gap_axes": [1, 2]})
    assert model_labeller(sliced).grow_axes == (1, 2)
    labels = model_labeller(sliced)(prob)
    assert not labels[2].any() and labels.max() == 2
