from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_unet.core.model import UNetConfig, preset_config
from napari_unet.core.normalize import normalize_image
from napari_unet.core.targets import (
    BACKGROUND,
    FOREGROUND,
    IGNORE,
    SplitLabelsWarning,
    training_targets,
)
from napari_unet.core.training.data import (
    MIN_SIDE,
    AnnotatedImage,
    PatchSampler,
    TargetSpec,
    annotated_cell_areas,
    annotation_min_size,
    patch_geometry,
    prepare_samples,
)
from napari_unet.core.training.validation import hold_out, validation_tiles


def _cells(shape=(40, 40)):
    labels = np.zeros(shape, np.int32)
    labels[5:15, 5:15] = 1
    labels[5:15, 15:25] = 2  # touches 1
    labels[25:35, 20:30] = 3
    image = (labels > 0).astype(np.uint16) * 1000 + 100
    return image, labels


def test_single_2d_image_matches_normalisation_and_targets():
    image, labels = _cells()
    (s,) = prepare_samples(image, labels)
    assert s.source == (0, 0)
    np.testing.assert_array_equal(s.image, normalize_image(image[None]))
    ref = training_targets(labels)
    np.testing.assert_array_equal(s.classes, ref.classes)
    np.testing.assert_array_equal(s.weights, ref.weights)
    assert s.image.dtype == np.float32 and s.image.shape == (1, 40, 40)


def test_stack_uses_only_labelled_slices_and_any_dtype():
    image, labels = _cells()
    stack = np.stack([image, image * 2, image]).astype(np.float64)
    lab = np.stack([labels, np.zeros_like(labels), labels[::-1]])
    samples = prepare_samples(stack, lab)
    assert [s.source for s in samples] == [(0, 0), (0, 2)]
    # with a region, a slice without labels but marked as annotated is used (all background)
    region = np.zeros(lab.shape, bool)
    region[1] = True
    region[2, :, :20] = True
    samples = prepare_samples(stack, lab, region)
    assert [s.source for s in samples] == [(0, 1), (0, 2)]
    assert np.all(samples[0].classes == BACKGROUND)
    assert np.all(samples[1].classes[:, 20:] == IGNORE)
    assert np.all(samples[1].weights[:, 20:] == 0)


def test_multichannel_rgb_and_several_images():
    image, labels = _cells()
    two = np.stack([image, image[::-1]])  # (C, Y, X) with channel_axis=0
    samples = prepare_samples([two, two], [labels, labels], channel_axis=0)
    assert len(samples) == 2 and samples[1].source == (1, 0)
    assert samples[0].image.shape == (2, 40, 40)
    rgb = np.stack([image] * 3, axis=-1).astype(np.uint8)
    (s,) = prepare_samples(rgb, labels, rgb=True)
    assert s.image.shape == (3, 40, 40)
    with pytest.raises(ValueError, match=r"images\[1\] has 3 channel\(s\) but images\[0\] has 2"):
        prepare_samples([two, np.stack([image] * 3)], [labels, labels], channel_axis=0)
    with pytest.raises(ValueError, match="the model expects 1"):
        prepare_samples(two, labels, channel_axis=0, in_channels=1)


def test_bad_inputs_are_clear_value_errors():
    image, labels = _cells()
    with pytest.raises(ValueError, match=r"labels\[0\] has shape \(40, 39\).*\(40, 40\)"):
        prepare_samples(image, labels[:, :-1])
    with pytest.raises(ValueError, match=r"one label image per image: got 2 image\(s\) and 1"):
        prepare_samples([image, image], [labels])
    with pytest.raises(ValueError, match=r"regions must hold one mask"):
        prepare_samples([image], [labels], [None, None])
    with pytest.raises(ValueError, match=r"regions\[0\] must have the labels' shape"):
        prepare_samples(image, labels, np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="no annotated cell"):
        prepare_samples(image, np.zeros_like(labels))
    region = np.zeros(labels.shape, bool)
    region[36:, 36:] = True  # annotated area without a cell
    with pytest.raises(ValueError, match="no annotated cell"):
        prepare_samples(image, labels, region)
    bad = image.astype(np.float32)
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match=r"images\[0\] contains 1 NaN or infinite"):
        prepare_samples(bad, labels)
    bad[3, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        prepare_samples(bad, labels)
    with pytest.raises(ValueError, match=r"labels\[0\] must be an integer label image"):
        prepare_samples(image, labels.astype(np.float32))
    with pytest.raises(ValueError, match=r"images\[0\] must be numeric"):
        prepare_samples(image.astype(str), labels)
    with pytest.raises(ValueError, match=f"at least {MIN_SIDE} x {MIN_SIDE}"):
        prepare_samples(image[5:10, :20], labels[5:10, :20])
    with pytest.raises(ValueError, match=r"images\[0\]: expected a 2D image"):
        prepare_samples(np.zeros((2, 2, 40, 40)), labels)


def test_nan_in_an_unlabelled_slice_is_not_read():
    image, labels = _cells()
    stack = np.stack([image, image]).astype(np.float32)
    stack[1, 0, 0] = np.nan
    lab = np.stack([labels, np.zeros_like(labels)])
    (s,) = prepare_samples(stack, lab)
    assert s.source == (0, 0)


def test_dask_images_are_read_slice_by_slice():
    da = pytest.importorskip("dask.array")
    image, labels = _cells()
    stack = da.from_array(np.stack([image, image]), chunks=(1, 40, 40))
    lab = np.stack([np.zeros_like(labels), labels])
    (s,) = prepare_samples(stack, lab)
    assert s.source == (0, 1)
    np.testing.assert_array_equal(s.image, normalize_image(image[None]))


def test_patch_sampler_centres_on_annotations_and_pads_small_images():
    image, labels = _cells((20, 24))
    region = np.zeros(labels.shape, bool)
    region[5:10, 8:12] = True
    (s,) = prepare_samples(image, labels, region)
    sampler = PatchSampler([s], 33, "cpu", np.random.default_rng(0))
    x, y, w = sampler.sample(16)
    assert x.shape == (16, 1, 33, 33) and y.shape == (16, 33, 33) and w.shape == (16, 33, 33)
    assert y.dtype == torch.uint8 and x.dtype == torch.float32
    # the centre pixel is always annotated
    assert torch.all(w[:, 16, 16] > 0)
    # pixels outside the image are ignored, and the image is mirrored there
    assert torch.all((y == IGNORE) == (w == 0))
    for _, cy, cx in PatchSampler([s], 33, "cpu", np.random.default_rng(1)).centres(20):
        assert region[cy, cx]


def test_patch_sampler_content_matches_the_sample():
    rng = np.random.default_rng(0)
    img = rng.random((1, 50, 60)).astype(np.float32)
    classes = np.full((50, 60), IGNORE, np.uint8)
    weights = np.zeros((50, 60), np.float32)
    classes[30, 40] = FOREGROUND
    weights[30, 40] = 2.0
    s = AnnotatedImage(img, classes, weights, (0, 0))
    x, y, w = PatchSampler([s], 11, "cpu", rng).sample(1)
    np.testing.assert_array_equal(x[0].numpy(), img[:, 25:36, 35:46])
    assert y[0, 5, 5] == FOREGROUND and w[0, 5, 5] == 2.0
    assert int((w > 0).sum()) == 1


def test_hold_out_blocks():
    image, labels = _cells((128, 128))
    labels[60:70, 60:70] = 4
    labels[100:110, 10:20] = 5
    labels[90:100, 90:100] = 6
    samples = prepare_samples(image, labels)
    train, blocks = hold_out(samples, 0.1, 32, np.random.default_rng(0))
    assert len(blocks) >= 1
    held = np.zeros((128, 128), bool)
    for k, y0, x0 in blocks:
        assert k == 0 and y0 % 32 == 0 and x0 % 32 == 0
        held[y0 : y0 + 32, x0 : x0 + 32] = True
    assert np.all(train[0].classes[held] == IGNORE) and np.all(train[0].weights[held] == 0)
    np.testing.assert_array_equal(train[0].classes[~held], samples[0].classes[~held])
    assert np.all(samples[0].weights[held] > 0)  # the originals are untouched
    assert (samples[0].classes[held] == FOREGROUND).any()
    # too little annotation to spare a block: nothing held out
    small = prepare_samples(image[:40, :40], labels[:40, :40])
    train, blocks = hold_out(small, 0.1, 32, np.random.default_rng(0))
    assert blocks == [] and train[0] is small[0]
    assert hold_out(samples, 0.0, 32, np.random.default_rng(0))[1] == []
    # large annotations: at most max_blocks blocks
    big = prepare_samples(*_cells((256, 256)))
    big[0].classes[:] = FOREGROUND  # every block holds foreground
    big[0].classes[:, :8] = 0
    assert len(hold_out(big, 0.4, 16, np.random.default_rng(0), max_blocks=5)[1]) == 5
    with pytest.raises(ValueError, match="validation_fraction"):
        hold_out(samples, 0.6, 32, np.random.default_rng(0))


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_validation_tiles_line_up_with_the_network_output(padding):
    config = UNetConfig(depth=2, base_channels=4, padding=padding)
    rng = np.random.default_rng(0)
    img = rng.random((1, 64, 64)).astype(np.float32)
    classes = rng.integers(0, 2, (64, 64)).astype(np.uint8)
    s = AnnotatedImage(img, classes, np.ones((64, 64), np.float32), (0, 0))
    tiles = validation_tiles([s], [(0, 16, 32)], 16, config)
    n_in = tiles.images.shape[-1]
    assert config.is_admissible(n_in)
    out = config.output_size(n_in)
    assert 0 <= tiles.offset and tiles.offset + 16 <= out
    np.testing.assert_array_equal(tiles.classes[0].numpy(), classes[16:32, 32:48])
    # input pixel under output pixel `offset` is the block's first pixel
    loss = (n_in - out) // 2
    start = tiles.offset + loss
    np.testing.assert_array_equal(tiles.images[0, :, start, start].numpy(), img[:, 16, 32])
    if padding == "same":
        assert start >= config.halo  # enough context for an exact result


def test_patch_geometry():
    assert patch_geometry(preset_config("fast"), 128) == (128, 128)
    assert patch_geometry(preset_config("fast"), 120) == (120, 120)  # depth 3: grid 8
    assert patch_geometry(replace(preset_config("fast"), depth=4), 120) == (128, 128)  # grid 16
    n_in, n_out = patch_geometry(preset_config("paper"), 100)
    assert n_out >= 100 and preset_config("paper").output_size(n_in) == n_out
    with pytest.raises(ValueError, match="patch_size"):
        patch_geometry(preset_config("fast"), 0)
    # same padding: the loss area in the centre of an input with context around it
    assert patch_geometry(preset_config("fast"), 128, context=32) == (192, 128)
    assert patch_geometry(preset_config("fast"), 120, context=20) == (160, 120)
    # valid padding reads its context anyway
    assert patch_geometry(preset_config("paper"), 388, context=32) == (572, 388)
    with pytest.raises(ValueError, match="context"):
        patch_geometry(preset_config("fast"), 128, context=-1)


def test_one_label_on_separate_cells_is_split_and_reported():
    image, labels = _cells((48, 48))
    labels[30:40, 2:12] = 1  # label 1 again, on a separate cell
    with pytest.warns(SplitLabelsWarning, match="1 label value .* split into 2 cells") as rec:
        (s,) = prepare_samples(image, labels)
    assert (rec[0].message.values, rec[0].message.cells) == (1, 2)
    assert s.split_cells == 2
    assert len(np.unique(s.labels)) == 5  # background and four cells
    split = labels.copy()
    split[30:40, 2:12] = 7
    np.testing.assert_array_equal(s.weights, training_targets(split).weights)
    # the border term now sees two cells where the unsplit labels had one
    assert not np.array_equal(s.weights, training_targets(labels).weights)


def test_held_out_cells_do_not_shape_the_training_weights():
    image, labels = _cells((128, 128))
    labels[60:70, 60:70] = 4
    labels[100:110, 10:20] = 5
    labels[90:100, 90:100] = 6
    samples = prepare_samples(image, labels)
    spec = TargetSpec()
    train, blocks = hold_out(samples, 0.1, 32, np.random.default_rng(0), targets=spec)
    assert blocks
    held = np.zeros((128, 128), bool)
    for _, y0, x0 in blocks:
        held[y0 : y0 + 32, x0 : x0 + 32] = True
    assert (samples[0].classes[held] == FOREGROUND).any()  # held-out cells exist
    # the training targets are those of the labels with the held-out blocks unannotated:
    # the class balance counts training pixels only
    ref = training_targets(labels, region=~held)
    np.testing.assert_array_equal(train[0].weights, ref.weights)
    np.testing.assert_array_equal(train[0].classes, ref.classes)
    assert np.all(train[0].weights[held] == 0) and np.all(train[0].classes[held] == IGNORE)
    np.testing.assert_array_equal(train[0].region, ~held)
    # masking the full-annotation weights (the old way) gives other training weights
    masked = np.where(held, 0, samples[0].weights)
    assert not np.allclose(train[0].weights, masked)


def test_validation_tiles_keep_the_instances_of_the_blocks():
    image, labels = _cells((64, 64))
    region = np.ones(labels.shape, bool)
    region[:, 60:] = False
    (s,) = prepare_samples(image, labels, region)
    config = UNetConfig(depth=2, base_channels=4)
    tiles = validation_tiles([s], [(0, 0, 16)], 16, config)
    m = tiles.margin
    assert m > 0 and tiles.labels.shape == tiles.window.shape == (1, 16 + 2 * m, 16 + 2 * m)
    # the view starts `margin` before the block; outside the image and the region it is 0
    padded = np.pad(np.where(region, s.labels, 0), m)
    view = padded[0 : 16 + 2 * m, 16 : 32 + 2 * m]
    np.testing.assert_array_equal(tiles.labels[0], view)
    assert tiles.window[0].sum() == 16 * 16 and tiles.window[0, m, m]
    # hand-made samples without labels: no instances to score
    bare = AnnotatedImage(s.image, s.classes, s.weights, (0, 0))
    assert validation_tiles([bare], [(0, 0, 16)], 16, config).labels is None


def test_min_size_learnt_from_the_completely_annotated_cells():
    labels = np.zeros((64, 64), np.int32)
    for k, (y, x, side) in enumerate([(10, 10, 10), (10, 30, 8), (30, 10, 6), (30, 30, 12)]):
        labels[y : y + side, x : x + side] = k + 1
    labels[0:3, 50:53] = 5  # cut by the image's edge: counts, inference meets such cells too
    labels[50:60, 50:60] = 6  # cut by the region
    region = np.ones(labels.shape, bool)
    region[55:, :] = False
    image = (labels > 0).astype(np.uint8) * 200 + 10
    (s,) = prepare_samples(image, labels, region)
    assert sorted(annotated_cell_areas([s]).tolist()) == [9, 36, 64, 100, 144]
    assert annotation_min_size([s], fraction=0.25, percentile=0) == 2
    assert annotation_min_size([s], fraction=0.25, percentile=25) == 9
    assert annotation_min_size([s], fraction=0.5, percentile=100) == 72
    assert annotation_min_size([s], fraction=0.0) is None
