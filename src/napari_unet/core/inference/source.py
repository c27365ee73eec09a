"""Lazy read access to an image as 2D multichannel slices, for tiled inference.

:class:`SliceSource` validates a numpy, dask or zarr array (anything with ``shape``, ``dtype`` and
numpy-style slicing) with :func:`napari_unet.core.layout.image_layout`, as training lays images
out, and reads rectangles of one slice as numpy ``(C, h, w)`` arrays without loading the whole
image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..layout import image_layout

__all__ = ["SliceSource"]


class SliceSource:
    """Read-only view of an image as 2D multichannel slices ``(N, C, Y, X)``, read lazily.

    Parameters
    ----------
    image : array-like
        numpy, dask or zarr array (or anything numpy can turn into an array).
    channel_axis, rgb
        As for :func:`napari_unet.core.layout.image_layout`.

    Raises
    ------
    ValueError
        If the image is empty, not real-valued or not laid out as described.
    """

    def __init__(self, image: Any, channel_axis: int | None, rgb: bool) -> None:
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
        self.layout = layout
        self.n, self.c = layout.n_slices, layout.n_channels
        self.h, self.w = layout.spatial_shape[-2:]
        self.image = image
        self.dtype = dtype
        self.is_stack = layout.is_stack
        self.description = f"shape {shape}, channel_axis={channel_axis}, rgb={rgb}"

    def read(self, z: int, rows: slice, cols: slice) -> np.ndarray:
        """Pixels of slice ``z`` as a numpy ``(C, h, w)`` array."""
        layout = self.layout
        index: list[Any] = [slice(None)] * len(layout.shape)
        index[layout.y_axis] = rows
        index[layout.x_axis] = cols
        if layout.z_axis is not None:
            index[layout.z_axis] = z
        block = self.image[tuple(index)]
        if hasattr(block, "compute"):  # dask: read in this thread, whatever the default scheduler
            block = block.compute(scheduler="synchronous")
        block = np.asarray(block)
        if layout.c_axis is None:
            return block[None]
        kept = [a for a in range(len(layout.shape)) if a != layout.z_axis]
        return np.moveaxis(block, kept.index(layout.c_axis), 0)
