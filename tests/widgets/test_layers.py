"""Reading napari layers in the core's layout: channels, RGB, stacks, regions, paint boxes."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from napari.layers import Image, Labels, Shapes

from napari_unet.widgets.border_weights import paint_boxes
from napari_unet.widgets.layers import (
    auto_channel_axis,
    image_layout,
    labels_array,
    region_mask,
)


def test_layout_of_2d_stack_rgb_and_channels() -> None:
    grey = image_layout(Image(np.zeros((32, 40)), name="g"))
    assert (grey.spatial_shape, grey.n_channels, grey.z_axis, grey.rgb) == (
        (32, 40),
        1,
        None,
        False,
    )
    stack = image_layout(Image(np.zeros((5, 32, 40)), name="s"))
    assert (stack.spatial_shape, stack.n_slices, stack.z_axis) == ((5, 32, 40), 5, 0)
    rgb = image_layout(Image(np.zeros((32, 40, 3), np.uint8), rgb=True, name="c"))
    assert (rgb.spatial_shape, rgb.n_channels, rgb.rgb, rgb.is_stack) == ((32, 40), 3, True, False)
    chan = image_layout(Image(np.zeros((2, 32, 40)), name="m"), channel_axis=0)
    assert (chan.spatial_shape, chan.n_channels, chan.is_stack) == ((32, 40), 2, False)
    zc = image_layout(Image(np.zeros((4, 2, 32, 40)), name="zc"), channel_axis=1)
    assert (zc.spatial_shape, zc.n_channels, zc.z_axis) == ((4, 32, 40), 2, 0)
    cz = image_layout(Image(np.zeros((2, 4, 32, 40)), name="cz"), channel_axis=0)
    assert (cz.spatial_shape, cz.n_channels, cz.z_axis) == ((4, 32, 40), 2, 1)


def test_slices_of_a_stack_keep_the_channel_axis_right() -> None:
    data = np.arange(2 * 4 * 6 * 8).reshape(2, 4, 6, 8)  # (C, Z, Y, X)
    layout = image_layout(Image(data, name="cz"), channel_axis=0)
    image, axis = layout.slice(3)
    assert image.shape == (2, 6, 8) and axis == 0
    np.testing.assert_array_equal(image, data[:, 3])
    zc = image_layout(Image(np.moveaxis(data, 0, 1), name="zc"), channel_axis=1)
    image, axis = zc.slice(3)
    assert image.shape == (2, 6, 8) and axis == 0
    np.testing.assert_array_equal(image, data[:, 3])


def test_dask_data_stays_lazy() -> None:
    data = da.zeros((3, 64, 64), chunks=(1, 32, 32))
    layout = image_layout(Image(data, name="lazy"))
    image, _ = layout.slice(1)
    assert isinstance(image, da.Array) and image.shape == (64, 64)


@pytest.mark.parametrize(
    ("shape", "axis", "words"),
    [
        ((2, 3, 32, 40), None, "Choose which axis holds the channels"),
        ((32, 40), 0, "a channel axis needs"),
        ((3, 32, 40), 1, "is a spatial axis"),
    ],
)
def test_layouts_that_do_not_fit(shape: tuple[int, ...], axis: int | None, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        image_layout(Image(np.zeros(shape), name="x"), channel_axis=axis)


def test_auto_channel_axis() -> None:
    assert auto_channel_axis(Image(np.zeros((3, 32, 40)), name="a"), 3) == 0
    assert auto_channel_axis(Image(np.zeros((5, 3, 32, 40)), name="a"), 3) == 1
    assert auto_channel_axis(Image(np.zeros((5, 32, 40)), name="a"), 1) is None
    assert auto_channel_axis(Image(np.zeros((5, 32, 40)), name="a"), 3) is None
    assert auto_channel_axis(Image(np.zeros((32, 40, 3), np.uint8), rgb=True, name="a"), 3) is None


def test_labels_are_copied_and_checked() -> None:
    layout = image_layout(Image(np.zeros((32, 40)), name="img"))
    layer = Labels(np.ones((32, 40), np.int32), name="ann")
    copy = labels_array(layer, layout)
    copy[0, 0] = 7
    assert layer.data[0, 0] == 1
    with pytest.raises(ValueError, match=r"'ann' has shape \(30, 40\)"):
        labels_array(Labels(np.ones((30, 40), np.int32), name="ann"), layout)


def test_region_from_shapes_and_labels() -> None:
    rect = Shapes([np.array([[2, 3], [2, 9], [6, 9], [6, 3]])], shape_type="rectangle", name="r")
    mask = region_mask(rect, (16, 20))
    assert mask.dtype == bool and mask.shape == (16, 20)
    assert mask[4, 5] and not mask[10, 15]
    stack = region_mask(rect, (3, 16, 20))
    assert stack.shape == (3, 16, 20) and all(np.array_equal(s, mask) for s in stack)
    lab = np.zeros((16, 20), np.int32)
    lab[:8] = 2
    np.testing.assert_array_equal(region_mask(Labels(lab, name="l"), (16, 20)), lab > 0)


def test_regions_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="holds no shapes"):
        region_mask(Shapes(name="empty"), (16, 20))
    with pytest.raises(ValueError, match="marks no pixel"):
        region_mask(Labels(np.zeros((16, 20), np.int32), name="l"), (16, 20))
    with pytest.raises(ValueError, match="expected"):
        region_mask(Labels(np.ones((8, 20), np.int32), name="l"), (16, 20))


def test_paint_boxes_from_napari_history_atoms() -> None:
    layer = Labels(np.zeros((3, 20, 30), np.int32), name="l")
    events: list = []
    layer.events.paint.connect(lambda e: events.append(e.value))
    layer.paint((1, 10, 12), 5, refresh=False)  # brush of size 10 on slice 1 (2D painting)
    boxes = paint_boxes(events[-1], 3)
    assert boxes is not None and set(boxes) == {1}
    rows, cols = boxes[1]
    assert rows.start <= 10 < rows.stop and cols.start <= 12 < cols.stop
    changed = np.argwhere(layer.data[1] == 5)
    assert rows.start <= changed[:, 0].min() and changed[:, 0].max() < rows.stop
    layer.data_setitem((np.array([2]), np.array([4]), np.array([7])), 9)
    assert paint_boxes(events[-1], 3) == {2: (slice(4, 5), slice(7, 8))}
    assert paint_boxes([object()], 2) is None


def test_multiscale_layers_use_level_0_lazily() -> None:
    level0 = da.zeros((3, 64, 48), chunks=(1, 32, 32), dtype=np.uint16)
    layer = Image([level0, level0[:, ::2, ::2], level0[:, ::4, ::4]], multiscale=True, name="ome")
    layout = image_layout(layer)
    assert layout.data is level0  # level 0 itself: nothing read, nothing copied
    assert layout.spatial_shape == (3, 64, 48) and layout.levels == 3
    assert layout.multiscale_note == (
        "'ome' is multiscale (3 levels): using level 0, the full resolution, read lazily tile "
        "by tile."
    )
    plain = image_layout(Image(np.zeros((8, 8)), name="p"))
    assert plain.levels == 1 and plain.multiscale_note == ""
    labels = Labels([np.ones((3, 64, 48), np.int32), np.ones((3, 32, 24), np.int32)], name="l")
    assert labels_array(labels, layout).shape == (3, 64, 48)
