"""Lazy read access to an image as 2D multichannel slices, for tiled inference.

:class:`SliceSource` validates a numpy, dask or zarr array (anything with ``shape``, ``dtype`` and
numpy-style slicing) with :func:`napari_unet.core.layout.image_layout`, as training lays images
out, and reads rectangles of one slice as numpy ``(C, h, w)`` arrays (boxes of a volume as
``(C, d, h, w)`` for a 3D network) without loading the whole image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..layout import image_layout

__all__ = ["SliceSource"]


class SliceSource:
    """Read-only view of an image as 2D multichannel slices ``(N, C, Y, X)``, read lazily; for
    a 3D network, as one multichannel volume ``(1, C, Z, Y, X)``.

    Parameters
    ----------
    image : array-like
        numpy, dask or zarr array (or anything numpy can turn into an array).
    channel_axis, rgb
        As for :func:`napari_unet.core.layout.image_layout`.
    spatial_dims : {2, 3}
        The network's: 2 reads a stack slice by slice, 3 reads a volume ``(Z, Y, X)`` (or
        ``(C, Z, Y, X)`` / ``(Z, C, Y, X)``) as one item.

    Attributes
    ----------
    n : int
        Number of items the network sees (2D slices, or 1 volume).
    c : int
        Channels.
    spatial : tuple of int
        Spatial shape of one item: ``(Y, X)`` or ``(Z, Y, X)``.
    h, w : int
        Rows and columns.
    is_stack : bool
        Whether the result has a slice axis that the network does not see (a stack of 2D
        slices for a 2D network).

    Raises
    ------
    ValueError
        If the image is empty, not real-valued or not laid out as described, or a 3D network is
        given a 2D image.
    """

    def __init__(
        self, image: Any, channel_axis: int | None, rgb: bool, spatial_dims: int = 2
    ) -> None:
        if not hasattr(image, "shape") or not hasattr(image, "__getitem__"):
            image = np.asarray(image)
        shape = tuple(int(s) for s in image.shape)
        dtype = np.dtype(image.dtype)
        if dtype.kind != "b" and (
            not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating)
        ):
            raise ValueError(f"image must hold real numbers, got dtype {dtype}")
        if any(s == 0 for s in shape):
            raise ValueError(f"image is empty: expected every axis to be non-empty, got {shape}")
        layout = image_layout(shape, channel_axis=channel_axis, rgb=rgb)
        if spatial_dims == 3 and not layout.is_stack:
            raise ValueError(
                f"a 3D model needs a volume (Z, Y, X) (or one with a channel axis), got "
                f"{layout.describe()} of shape {shape}; use a 2D model for 2D images"
            )
        self.layout, self.spatial_dims = layout, spatial_dims
        self.c = layout.n_channels
        self.h, self.w = layout.spatial_shape[-2:]
        self.spatial = layout.spatial_shape if spatial_dims == 3 else (self.h, self.w)
        self.n = 1 if spatial_dims == 3 else layout.n_slices
        self.image = image
        self.dtype = dtype
        self.is_stack = layout.is_stack and spatial_dims == 2
        self.description = f"shape {shape}, channel_axis={channel_axis}, rgb={rgb}"

    def read(self, z: int, *ranges: slice) -> np.ndarray:
        """Pixels of item ``z`` within ``ranges`` (one slice per spatial axis) as a numpy
        ``(C, h, w)`` or ``(C, d, h, w)`` array."""
        layout = self.layout
        index: list[Any] = [slice(None)] * len(layout.shape)
        index[layout.y_axis] = ranges[-2]
        index[layout.x_axis] = ranges[-1]
        if layout.z_axis is not None:
            index[layout.z_axis] = ranges[0] if self.spatial_dims == 3 else z
        block = self.image[tuple(index)]
        if hasattr(block, "compute"):  # dask: read in this thread, whatever the default scheduler
            block = block.compute(scheduler="synchronous")
        block = np.asarray(block)
        if layout.c_axis is None:
            return block[None]
        kept = [a for a in range(len(layout.shape)) if self.spatial_dims == 3 or a != layout.z_axis]
        return np.moveaxis(block, kept.index(layout.c_axis), 0)
