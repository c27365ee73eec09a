"""Compact patch sampling: annotated positions as row runs, patches cut from the images as drawn.

A fully annotated 2048 x 2048 image has 4.2 million annotated pixels; one int64 index each is
34 MB per image (3.4 GB for 100). :class:`AnnotatedRuns` keeps one run per row instead (two int64
per run: 32 KB for that image) and maps the k-th annotated pixel, in row-major order, to its
position, so that drawing ``integers(count)`` picks exactly the pixel a per-pixel index would.

:func:`cut_window` reads one patch from an image that may live on disk (a memory map, zarr,
dask): only the window is read, and pixels outside the image are mirrored (``numpy.pad``
``'reflect'``) or filled, exactly as if the image had been padded first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["AnnotatedRuns", "cut_window", "mirror_indices"]


class AnnotatedRuns:
    """The annotated pixels of a 2D image as runs along its rows.

    Parameters
    ----------
    mask : numpy.ndarray
        bool ``(Y, X)``: the annotated pixels.

    Examples
    --------
    >>> runs = AnnotatedRuns(np.array([[0, 1, 1], [1, 0, 1]], bool))
    >>> runs.count, [runs.position(k) for k in range(runs.count)]
    (4, [(0, 1), (0, 2), (1, 0), (1, 2)])
    """

    def __init__(self, mask: np.ndarray) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 2:
            raise ValueError(f"mask must be 2D (Y, X), got shape {mask.shape}")
        ny, nx = mask.shape
        self.width = int(nx)
        edges = np.zeros((ny, nx + 2), np.int8)
        edges[:, 1:-1] = mask
        step = np.diff(edges, axis=1)  # (Y, X + 1): +1 where a run starts, -1 after it ends
        rows_s, cols_s = np.nonzero(step == 1)
        _, cols_e = np.nonzero(step == -1)
        #: flat index of each run's first pixel, and the cumulative count at each run's end
        self.starts = rows_s.astype(np.int64) * nx + cols_s
        self.ends = np.cumsum((cols_e - cols_s).astype(np.int64))

    @property
    def count(self) -> int:
        """Number of annotated pixels."""
        return int(self.ends[-1]) if self.ends.size else 0

    @property
    def nbytes(self) -> int:
        """Memory the runs take."""
        return int(self.starts.nbytes + self.ends.nbytes)

    def position(self, k: int) -> tuple[int, int]:
        """``(y, x)`` of the ``k``-th annotated pixel in row-major order."""
        if not 0 <= k < self.count:
            raise IndexError(f"annotated pixel {k} of {self.count}")
        run = int(np.searchsorted(self.ends, k, side="right"))
        before = int(self.ends[run - 1]) if run else 0
        flat = int(self.starts[run]) + k - before
        return flat // self.width, flat % self.width


def mirror_indices(start: int, size: int, n: int, pad: int | None = None) -> np.ndarray:
    """Indices ``start .. start + size - 1`` into an axis of ``n``, mirrored at its ends.

    Exactly what reading the axis padded by ``pad`` pixels on each side with
    :func:`~napari_unet.core.training.data.pad2d` (``numpy.pad`` ``'reflect'``, ``'symmetric'``
    for a single pixel) gives, also where the pad is wider than the axis.

    Parameters
    ----------
    start, size : int
        The window along the axis (``start`` may be negative).
    n : int
        Length of the axis.
    pad : int, optional
        Width of the padding the window is read from; ``None``: just wide enough.

    Returns
    -------
    numpy.ndarray
        int64 indices into the axis.

    Examples
    --------
    >>> mirror_indices(-2, 7, 4).tolist()
    [2, 1, 0, 1, 2, 3, 2]
    """
    need = max(-start, start + size - n, 0)
    pad = need if pad is None else int(pad)
    if pad < need:
        raise ValueError(f"window {start}..{start + size} needs a pad of {need}, got {pad}")
    mode = "symmetric" if n == 1 else "reflect"
    padded = np.pad(np.arange(n, dtype=np.int64), (pad, pad), mode=mode)
    return padded[start + pad : start + pad + size]


def cut_window(
    array: Any, y0: int, x0: int, size: int, fill: float | None = None, pad: int | None = None
) -> np.ndarray:
    """A ``size`` x ``size`` window at ``(y0, x0)`` of an array's last two axes.

    Parameters
    ----------
    array : array-like
        ``(..., Y, X)``; numpy, a memory map, zarr or dask: only the window is read.
    y0, x0 : int
        Top-left corner; may lie outside the array.
    size : int
        Edge of the window.
    fill : float, optional
        Value outside the array; ``None``: mirrored (``'reflect'``).
    pad : int, optional
        Mirror as an array padded by this many pixels would (:func:`mirror_indices`).

    Returns
    -------
    numpy.ndarray
        ``(..., size, size)``, of the array's dtype.

    Examples
    --------
    >>> a = np.arange(9).reshape(3, 3)
    >>> cut_window(a, -1, 1, 3).tolist()
    [[4, 5, 4], [1, 2, 1], [4, 5, 4]]
    >>> cut_window(a, 2, 2, 2, fill=0).tolist()
    [[8, 0], [0, 0]]
    """
    ny, nx = array.shape[-2:]
    inside = y0 >= 0 and x0 >= 0 and y0 + size <= ny and x0 + size <= nx
    if inside:
        return np.asarray(array[..., y0 : y0 + size, x0 : x0 + size])
    if fill is not None:
        out = np.full((*array.shape[:-2], size, size), fill, dtype=array.dtype)
        ya, yb = max(y0, 0), min(y0 + size, ny)
        xa, xb = max(x0, 0), min(x0 + size, nx)
        if ya < yb and xa < xb:
            out[..., ya - y0 : yb - y0, xa - x0 : xb - x0] = np.asarray(array[..., ya:yb, xa:xb])
        return out
    iy, ix = mirror_indices(y0, size, ny, pad), mirror_indices(x0, size, nx, pad)
    ya, yb, xa, xb = int(iy.min()), int(iy.max()) + 1, int(ix.min()), int(ix.max()) + 1
    box = np.asarray(array[..., ya:yb, xa:xb])
    return box[..., (iy - ya)[:, None], (ix - xa)[None, :]]
