"""The layout of an image: which of its axes hold slices, channels, rows and columns.

Every part of the project reads images the same way: ``(Y, X)``; ``(C, Y, X)`` or
``(Z, C, Y, X)`` / ``(C, Z, Y, X)`` with a named channel axis; RGB(A) ``(Y, X, 3|4)`` or
``(Z, Y, X, 3|4)``; or a stack ``(Z, Y, X)`` of 2D slices. :func:`image_layout` checks a shape
against what the caller says about it (channel axis, RGB) and returns an :class:`ImageLayout`;
tiled inference, the command line and the widgets start from it. Training and model export
arrange their in-memory arrays with :func:`napari_unet.core.normalize.as_nchw`, which accepts the
same layouts with the same rules (its messages are worded for a list of training images).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ImageLayout", "image_layout"]


@dataclass(frozen=True)
class ImageLayout:
    """Where the slices, channels, rows and columns of an image are.

    Made by :func:`image_layout`, which checks the shape.

    Attributes
    ----------
    shape : tuple of int
        The image's shape.
    channel_axis : int or None
        The named channel axis (non-negative); None for one channel or for RGB.
    rgb : bool
        The last axis holds RGB(A) channels.
    z_axis : int or None
        The axis that numbers the 2D slices of a stack; None for a single 2D image.
    n_channels : int
        Channels per pixel (1 without a channel axis).
    """

    shape: tuple[int, ...]
    channel_axis: int | None
    rgb: bool
    z_axis: int | None
    n_channels: int

    @property
    def c_axis(self) -> int | None:
        """The axis holding the channels, RGB included; None for one channel."""
        return len(self.shape) - 1 if self.rgb else self.channel_axis

    @property
    def y_axis(self) -> int:
        """The rows' axis."""
        return len(self.shape) - (3 if self.rgb else 2)

    @property
    def x_axis(self) -> int:
        """The columns' axis."""
        return self.y_axis + 1

    @property
    def is_stack(self) -> bool:
        """Whether the image is a stack of 2D images."""
        return self.z_axis is not None

    @property
    def n_slices(self) -> int:
        """Number of 2D images (1 for a single image)."""
        return 1 if self.z_axis is None else self.shape[self.z_axis]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """``(Y, X)`` or ``(Z, Y, X)``: the shape annotations and results have."""
        yx = (self.shape[self.y_axis], self.shape[self.x_axis])
        return (self.n_slices, *yx) if self.is_stack else yx

    def describe(self) -> str:
        """A few words for messages, e.g. ``'a stack of 5 RGB images of 96 x 96'``."""
        yx = f"{self.spatial_shape[-2]} x {self.spatial_shape[-1]}"
        kind = "RGB" if self.rgb else f"{self.n_channels}-channel" if self.n_channels > 1 else ""
        if self.is_stack:
            return f"a stack of {self.n_slices} {kind + ' ' if kind else ''}images of {yx}"
        return f"a {kind + ' ' if kind else ''}{yx} image"

    def to_nchw(self, image: Any) -> Any:
        """``image`` (of this layout) as a stack of 2D multichannel images ``(N, C, Y, X)``.

        A view: no data is copied, and nothing is read from a dask array.

        Parameters
        ----------
        image : array-like
            numpy or dask array of shape :attr:`shape`.

        Returns
        -------
        array
            ``(N, C, Y, X)``.
        """
        if self.c_axis is None:
            return image[:, None] if self.is_stack else image[None, None]
        image = np.moveaxis(image, self.c_axis, -3)
        return image if self.is_stack else image[None]


def image_layout(
    shape: Sequence[int],
    *,
    channel_axis: int | None = None,
    rgb: bool = False,
    what: str = "image",
    channel_option: str = "channel_axis",
) -> ImageLayout:
    """Check an image's shape against its description and say where its axes are.

    Parameters
    ----------
    shape : sequence of int
        The image's shape.
    channel_axis : int, optional
        Axis of the channels, if the image has one (negative counts from the end; ignored when
        ``rgb``). The channel axis must come before the last two axes.
    rgb : bool
        The last axis holds RGB(A) colour channels (a napari ``rgb`` layer).
    what : str
        What to call the image in messages, e.g. ``"The image 'cells'"``.
    channel_option : str
        What the caller calls the channel-axis setting, for messages (``'channels'`` in a
        widget, ``--channel-axis`` on the command line).

    Returns
    -------
    ImageLayout
        The layout.

    Raises
    ------
    ValueError
        If the shape is not a 2D image, a multichannel or RGB image, or a stack of them, as
        described.

    Examples
    --------
    >>> image_layout((5, 64, 48)).spatial_shape
    (5, 64, 48)
    >>> layout = image_layout((2, 5, 64, 48), channel_axis=0)
    >>> layout.z_axis, layout.n_channels, layout.describe()
    (1, 2, 'a stack of 5 2-channel images of 64 x 48')
    >>> image_layout((64, 48, 3), rgb=True).to_nchw(np.zeros((64, 48, 3))).shape
    (1, 3, 64, 48)
    """
    shape = tuple(int(n) for n in shape)
    ndim = len(shape)
    if rgb:
        if ndim not in (3, 4) or shape[-1] not in (3, 4):
            raise ValueError(
                f"{what} has shape {shape}; an RGB image must have shape (Y, X, 3|4) or "
                "(Z, Y, X, 3|4)"
            )
        return ImageLayout(shape, None, True, 0 if ndim == 4 else None, shape[-1])
    if channel_axis is not None:
        if ndim not in (3, 4):
            raise ValueError(
                f"{what} has shape {shape}; a channel axis needs (C, Y, X) or a stack "
                f"(Z, C, Y, X) or (C, Z, Y, X); set {channel_option} to none for a 2D image or "
                "a stack (Z, Y, X)"
            )
        axis = channel_axis % ndim
        if axis >= ndim - 2:
            raise ValueError(
                f"{what} has shape {shape}, and its axis {channel_axis} is a spatial axis "
                "(Y or X); the channel axis must come before the last two"
            )
        z_axis = None if ndim == 3 else 1 - axis
        return ImageLayout(shape, axis, False, z_axis, shape[axis])
    if ndim in (2, 3):
        return ImageLayout(shape, None, False, 0 if ndim == 3 else None, 1)
    raise ValueError(
        f"{what} has {ndim} dimension(s), got shape {shape}; expected a 2D image (Y, X) or a "
        f"stack (Z, Y, X). Choose which axis holds the channels ({channel_option}) to read "
        "more dimensions"
    )
