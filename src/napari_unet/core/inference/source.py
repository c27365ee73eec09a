"""Lazy read access to an image as 2D multichannel slices, for tiled inference.

:class:`SliceSource` validates a numpy, dask or zarr array (anything with ``shape``, ``dtype`` and
numpy-style slicing) exactly as training lays images out, and reads rectangles of one slice as
numpy ``(C, h, w)`` arrays without loading the whole image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..normalize import as_nchw


class SliceSource:
    """Read-only view of an image as 2D multichannel slices ``(N, C, Y, X)``, read lazily."""

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
        # Validate the layout exactly as training does, on a dummy that holds no data.
        dummy = np.broadcast_to(np.zeros((), np.uint8), shape)
        self.n, self.c, self.h, self.w = as_nchw(dummy, channel_axis=channel_axis, rgb=rgb).shape
        ndim = len(shape)
        if rgb:
            c_axis: int | None = ndim - 1
            y_axis, x_axis = ndim - 3, ndim - 2
        elif channel_axis is not None:
            c_axis = channel_axis % ndim
            y_axis, x_axis = ndim - 2, ndim - 1
        else:
            c_axis = None
            y_axis, x_axis = ndim - 2, ndim - 1
        rest = [a for a in range(ndim) if a not in (c_axis, y_axis, x_axis)]
        self.z_axis = rest[0] if rest else None
        self.c_axis, self.y_axis, self.x_axis = c_axis, y_axis, x_axis
        self.ndim = ndim
        self.image = image
        self.dtype = dtype
        self.is_stack = self.z_axis is not None
        self.description = f"shape {shape}, channel_axis={channel_axis}, rgb={rgb}"

    def read(self, z: int, rows: slice, cols: slice) -> np.ndarray:
        """Pixels of slice ``z`` as a numpy ``(C, h, w)`` array."""
        index: list[Any] = [slice(None)] * self.ndim
        index[self.y_axis] = rows
        index[self.x_axis] = cols
        if self.z_axis is not None:
            index[self.z_axis] = z
        block = self.image[tuple(index)]
        if hasattr(block, "compute"):  # dask: read in this thread, whatever the default scheduler
            block = block.compute(scheduler="synchronous")
        block = np.asarray(block)
        kept = [a for a in range(self.ndim) if a != self.z_axis]
        if self.c_axis is None:
            return block[None]
        return np.moveaxis(block, kept.index(self.c_axis), 0)
