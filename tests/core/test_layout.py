"""The one image-layout function: axes of 2D, stack, multichannel and RGB images."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_unet.core.layout import image_layout
from napari_unet.core.normalize import as_nchw


@pytest.mark.parametrize(
    ("shape", "kwargs", "axes", "spatial", "channels"),
    [
        ((5, 7), {}, (None, None, 0, 1), (5, 7), 1),
        ((4, 5, 7), {}, (0, None, 1, 2), (4, 5, 7), 1),
        ((2, 5, 7), {"channel_axis": 0}, (None, 0, 1, 2), (5, 7), 2),
        ((5, 2, 7, 9), {"channel_axis": 1}, (0, 1, 2, 3), (5, 7, 9), 2),
        ((2, 5, 7, 9), {"channel_axis": -4}, (1, 0, 2, 3), (5, 7, 9), 2),
        ((5, 7, 3), {"rgb": True}, (None, 2, 0, 1), (5, 7), 3),
        ((2, 5, 7, 4), {"rgb": True}, (0, 3, 1, 2), (2, 5, 7), 4),
    ],
)
def test_axes_of_each_layout(shape, kwargs, axes, spatial, channels) -> None:
    layout = image_layout(shape, **kwargs)
    assert (layout.z_axis, layout.c_axis, layout.y_axis, layout.x_axis) == axes
    assert layout.spatial_shape == spatial and layout.n_channels == channels
    assert layout.is_stack == (len(spatial) == 3)
    assert layout.n_slices == (spatial[0] if len(spatial) == 3 else 1)
    image = np.arange(np.prod(shape)).reshape(shape)
    np.testing.assert_array_equal(layout.to_nchw(image), as_nchw(image, **kwargs))


def test_to_nchw_stays_lazy_and_describe() -> None:
    lazy = da.zeros((2, 3, 64, 48), chunks=(1, 1, 32, 32))
    layout = image_layout(lazy.shape, channel_axis=0)
    out = layout.to_nchw(lazy)
    assert isinstance(out, da.Array) and out.shape == (3, 2, 64, 48)
    assert layout.describe() == "a stack of 3 2-channel images of 64 x 48"
    assert image_layout((64, 48, 3), rgb=True).describe() == "a RGB 64 x 48 image"
    assert image_layout((64, 48)).describe() == "a 64 x 48 image"


@pytest.mark.parametrize(
    ("shape", "kwargs", "words"),
    [
        ((2, 3, 4, 5), {}, r"got shape \(2, 3, 4, 5\).*Choose which axis holds the channels"),
        ((5,), {}, "expected a 2D image"),
        ((4, 5), {"channel_axis": 0}, "a channel axis needs"),
        ((3, 7, 9), {"channel_axis": -1}, "axis -1 is a spatial axis"),
        ((4, 5, 6), {"rgb": True}, "RGB image must have shape"),
        ((4, 5), {"rgb": True}, "RGB image must have shape"),
    ],
)
def test_layouts_that_do_not_fit(shape, kwargs, words) -> None:
    with pytest.raises(ValueError, match=words):
        image_layout(shape, **kwargs)


def test_messages_name_the_image_and_the_option() -> None:
    with pytest.raises(ValueError, match=r"^The image 'x' has shape .* set --channel-axis to none"):
        image_layout((4, 5), channel_axis=0, what="The image 'x'", channel_option="--channel-axis")
