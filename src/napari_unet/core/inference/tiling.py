"""Geometry of exact overlap-tile inference: tile layout, mirror indices and tile-size choice.

A U-Net output pixel depends only on the input pixels within the network's receptive radius,
and, through max-pooling, on where the image sits on the ``2 ** depth`` pooling grid. A tile
whose origin lies on that grid and which carries a halo of at least the receptive radius (for
valid padding: exactly the pixels the network loses per side) therefore produces, once its halo
is cropped away, exactly the pixels of one whole-image pass. This module computes such layouts;
:mod:`napari_unet.core.inference.predict` runs them.

Coordinates: image pixel ``y`` of an output tile starting at ``y0`` is read from the input tile
that starts at image row ``y0 - halo``; rows outside the image are mirrored (``'reflect'``
mode: ``d c b | a b c d | c b a``, repeated for halos larger than the image).

Tile convention (shared by the core, the command line and the widgets): ``tile`` is the edge of
the **input** tile in pixels, halo included, rounded up to the nearest admissible size. The
layout then uses the fewest tiles of at most that size along each axis and, among layouts with
that many tiles, the smallest admissible tile that still covers the image, so that tiles do not
overshoot the image edge. All tiles of one image have one shape.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass

import numpy as np

from ..model import UNetConfig

__all__ = [
    "AxisLayout",
    "TileLayout",
    "activation_bytes_per_pixel",
    "auto_tile",
    "available_memory_bytes",
    "axis_layout",
    "minimum_tile",
    "reflect_indices",
    "tile_layout",
    "volume_tile",
]

#: Largest number of elements of one activation tensor: beyond 2**31 some convolution kernels
#: (cuDNN's among them) fall back to slow paths or fail.
MAX_TENSOR_ELEMENTS = 2**31 - 1


def reflect_indices(start: int, length: int, size: int) -> np.ndarray:
    """Indices into an axis of ``size`` pixels for positions ``start .. start + length - 1``.

    Positions outside ``[0, size)`` are mirrored without repeating the edge pixel (numpy's
    ``'reflect'`` padding mode), as often as needed, so halos larger than the image work too.

    Parameters
    ----------
    start : int
        First position (may be negative).
    length : int
        Number of positions.
    size : int
        Length of the axis (at least 1).

    Returns
    -------
    numpy.ndarray
        int64 indices in ``[0, size)``.

    Examples
    --------
    >>> reflect_indices(-3, 10, 4).tolist()
    [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    pos = np.arange(start, start + length, dtype=np.int64)
    if size == 1:
        return np.zeros_like(pos)
    period = 2 * (size - 1)
    pos = np.mod(pos, period)
    return np.where(pos < size, pos, period - pos)


def minimum_tile(config: UNetConfig, axis: int = -1) -> int:
    """Smallest admissible input tile along ``axis`` whose output advances by one grid step."""
    return config.admissible_size(2 * config.axis_halo(axis) + config.axis_grid(axis), axis)


def _output(config: UNetConfig, tile: int, axis: int) -> int:
    """Output pixels of an admissible input tile that correspond to image pixels."""
    if config.padding == "valid":
        return config.output_size(tile, axis)
    return tile - 2 * config.axis_halo(axis)


@dataclass(frozen=True)
class AxisLayout:
    """Tiles along one axis.

    Attributes
    ----------
    size : int
        Image pixels along the axis.
    tile : int
        Input tile length (admissible, halo included).
    stride : int
        Distance between tile origins (a multiple of the grid unless there is one tile).
    count : int
        Number of tiles.
    """

    size: int
    tile: int
    stride: int
    count: int

    def origins(self) -> range:
        """Output origins of the tiles (image coordinates)."""
        return range(0, self.count * self.stride, self.stride)[: self.count]

    def extent(self, index: int) -> tuple[int, int]:
        """Image pixels ``[start, stop)`` that tile ``index`` contributes."""
        start = index * self.stride
        stop = self.size if index == self.count - 1 else start + self.stride
        return start, stop


def axis_layout(config: UNetConfig, size: int, tile: int, axis: int = -1) -> AxisLayout:
    """Lay out tiles of at most ``tile`` input pixels along an axis of ``size`` image pixels.

    Uses the fewest tiles that ``tile`` allows, then the smallest admissible tile that covers
    the axis with that many tiles.

    Parameters
    ----------
    config : UNetConfig
        The network's architecture.
    size : int
        Image pixels along the axis (at least 1).
    tile : int
        Largest input tile, halo included; rounded up to an admissible size.
    axis : int
        Which spatial axis of the network (its halo, grid and admissible sizes); default the
        last (in-plane).

    Returns
    -------
    AxisLayout
        The layout.

    Raises
    ------
    ValueError
        If ``tile`` is smaller than :func:`minimum_tile`.
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    halo, grid = config.axis_halo(axis), config.axis_grid(axis)
    smallest = minimum_tile(config, axis)
    tile = config.admissible_size(int(tile), axis)
    if tile < smallest:
        raise ValueError(
            f"tile must be at least {smallest} pixels for this network (halo {halo} px per side "
            f"plus one {grid}-pixel grid step), got {tile}"
        )
    cover = config.admissible_size(size + 2 * halo, axis)
    if cover <= tile:
        return AxisLayout(size=size, tile=cover, stride=_output(config, cover, axis), count=1)
    stride = _output(config, tile, axis) // grid * grid
    count = math.ceil(size / stride)
    # Smallest admissible tile that covers the axis with `count` tiles.
    t = config.admissible_size(math.ceil(size / count) + 2 * halo, axis)
    while _output(config, t, axis) // grid * grid * count < size:
        t = config.admissible_size(t + 1, axis)
    stride = _output(config, t, axis) // grid * grid
    return AxisLayout(size=size, tile=t, stride=stride, count=count)


Bounds = tuple[int, int] | None


@dataclass(frozen=True)
class TileLayout:
    """Tiles covering one 2D image or one 3D volume.

    Attributes
    ----------
    axes : tuple of AxisLayout
        The layout along each spatial axis (``(y, x)`` or ``(z, y, x)``).
    halo : tuple of int
        Input pixels read beyond an output tile on each side, per axis.
    crop : tuple of int
        Offset of the first image pixel in the network's output of a tile, per axis (``halo``
        for same padding, 0 for valid padding).
    """

    axes: tuple[AxisLayout, ...]
    halo: tuple[int, ...]
    crop: tuple[int, ...]

    @property
    def y(self) -> AxisLayout:
        """The layout along the rows."""
        return self.axes[-2]

    @property
    def x(self) -> AxisLayout:
        """The layout along the columns."""
        return self.axes[-1]

    @property
    def shape(self) -> tuple[int, ...]:
        """The image's spatial shape."""
        return tuple(a.size for a in self.axes)

    @property
    def tile_shape(self) -> tuple[int, ...]:
        """Input tile shape (``(ty, tx)`` or ``(tz, ty, tx)``)."""
        return tuple(a.tile for a in self.axes)

    @property
    def count(self) -> int:
        """Number of tiles."""
        return math.prod(a.count for a in self.axes)

    def tiles(self, *bounds: Bounds) -> list[tuple[int, ...]]:
        """Tile indices (one per axis) in row-major order, optionally only those that contribute
        to the image pixels ``bounds`` (one ``(start, stop)`` or None per leading axis; for a 2D
        image ``rows, cols``)."""
        per_axis = []
        for a, axis in enumerate(self.axes):
            limit = bounds[a] if a < len(bounds) else None
            per_axis.append(
                [
                    i
                    for i in range(axis.count)
                    if limit is None
                    or not (axis.extent(i)[1] <= limit[0] or axis.extent(i)[0] >= limit[1])
                ]
            )
        return list(itertools.product(*per_axis))


def tile_layout(
    config: UNetConfig, shape: tuple[int, ...], tile: int | tuple[int, ...]
) -> TileLayout:
    """Lay out tiles over a 2D image or a 3D volume.

    Parameters
    ----------
    config : UNetConfig
        The network's architecture (``config.spatial_dims`` axes).
    shape : tuple of int
        Spatial shape ``(Y, X)`` or ``(Z, Y, X)``.
    tile : int or tuple of int
        Largest input tile edge (or one per axis), halo included; rounded up to admissible
        sizes.

    Returns
    -------
    TileLayout
        The layout.

    Examples
    --------
    >>> from napari_unet.core.model import preset_config
    >>> layout = tile_layout(preset_config("fast"), (1000, 300), 512)
    >>> layout.tile_shape, layout.count
    ((480, 384), 8)
    """
    ndim = config.spatial_dims
    if len(shape) != ndim:
        raise ValueError(
            f"a {ndim}D network tiles {ndim}D images, got spatial shape {tuple(shape)}"
        )
    tiles = (tile,) * ndim if np.isscalar(tile) else tuple(tile)
    if len(tiles) != ndim:
        raise ValueError(f"tile must be one size or {ndim} sizes, got {tile!r}")
    halos = config.halos
    return TileLayout(
        axes=tuple(
            axis_layout(config, int(n), int(t), a)
            for a, (n, t) in enumerate(zip(shape, tiles, strict=True))
        ),
        halo=halos,
        crop=halos if config.padding == "same" else (0,) * ndim,
    )


def activation_bytes_per_pixel(config: UNetConfig, dtype_bytes: int = 4) -> float:
    """Estimated peak memory of a forward pass, in bytes per input pixel.

    The peak is reached in the last up-level, which holds the skip features, the up-sampled
    features, their concatenation and the convolution outputs at full resolution, plus the
    coarser levels still alive. Measured on the CPU under ``torch.inference_mode`` (peak resident
    memory, tiles of 512 to 2272 pixels) it is 7 to 10 (batch norm) or 4 to 6 (none) times
    ``base_channels`` floats per pixel; the estimate takes 10 and 6 and adds a quarter for
    allocator slack.

    Parameters
    ----------
    config : UNetConfig
        The network's architecture.
    dtype_bytes : int
        Bytes per activation value (4 for float32, 2 for bfloat16).

    Returns
    -------
    float
        Bytes per input pixel.
    """
    factor = 10.0 if config.batch_norm else 6.0
    return 1.25 * factor * config.base_channels * dtype_bytes + 8.0 * config.in_channels


def available_memory_bytes() -> int:
    """Memory the operating system could give this process now, in bytes.

    ``MemAvailable`` from ``/proc/meminfo`` on Linux; elsewhere the free physical pages from
    ``os.sysconf``; 4 GiB when neither is known.
    """
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def _largest_admissible_at_most(config: UNetConfig, n: int) -> int:
    t = config.admissible_size(max(int(n), 1))
    if t > n:
        below = config.largest_admissible_below(t)
        if below is not None:
            t = below
    return max(t, minimum_tile(config))


def volume_tile(config: UNetConfig, shape: tuple[int, ...], voxels: float) -> tuple[int, ...]:
    """The largest input tile of at most ``voxels`` voxels for a volume (any number of axes).

    Starts from the tile that covers the whole volume and shortens its longest axis one grid
    step at a time until it holds at most ``voxels`` voxels or every axis is at its minimum.

    Parameters
    ----------
    config : UNetConfig
        The network's architecture.
    shape : tuple of int
        Spatial shape of the volume.
    voxels : float
        Largest number of input voxels of one tile.

    Returns
    -------
    tuple of int
        Admissible input tile, one size per axis.
    """
    tile = [
        config.admissible_size(int(n) + 2 * h, a)
        for a, (n, h) in enumerate(zip(shape, config.halos, strict=True))
    ]
    smallest = [minimum_tile(config, a) for a in range(len(tile))]
    while math.prod(tile) > voxels:
        order = sorted(range(len(tile)), key=lambda a: -tile[a])
        for a in order:
            below = config.largest_admissible_below(tile[a], a)
            if below is not None and below >= smallest[a]:
                tile[a] = below
                break
        else:
            break
    return tuple(tile)


def auto_tile(
    config: UNetConfig,
    shape: tuple[int, ...],
    budget_bytes: float,
    *,
    dtype_bytes: int = 4,
    n_slices: int = 1,
    max_batch: int = 8,
    max_batch_pixels: float | None = None,
) -> tuple[tuple[int, ...], int]:
    """Choose the tile shape and batch size for an image or a volume from a memory budget.

    Big tiles waste least on halos (the cost of a tile is ``(input / output) ** 2`` times its
    share of one whole-image pass), so the tile is the largest that the budget holds: the whole
    image when it fits, else the image's short side with as much of the long side as fits, else
    a square. The batch then takes as many such tiles as the budget still holds, up to
    ``max_batch`` and the number of tiles there are.

    Parameters
    ----------
    config : UNetConfig
        The network's architecture.
    shape : tuple of int
        Shape ``(Y, X)`` of one 2D image, or ``(Z, Y, X)`` of a volume (for a 3D network the
        tile is the largest that fits: :func:`volume_tile`).
    budget_bytes : float
        Memory the forward pass of one batch may use.
    dtype_bytes : int
        Bytes per activation value.
    n_slices : int
        Number of 2D images of this shape to process (tiles of all of them can share a batch).
    max_batch : int
        Largest batch.
    max_batch_pixels : float, optional
        Batch no more input pixels than this (more tiles in a batch help a GPU, not a CPU).

    Returns
    -------
    tile : tuple of int
        ``(ty, tx)`` (or ``(tz, ty, tx)``), to pass to :func:`tile_layout`.
    batch : int
        Tiles per forward pass.
    """
    per_px = activation_bytes_per_pixel(config, dtype_bytes)
    pixels = max(budget_bytes / per_px, 1.0)
    pixels = min(pixels, MAX_TENSOR_ELEMENTS / (2 * config.base_channels))
    if len(shape) == 2:
        tile = _image_tile(config, shape, pixels)
    else:
        tile = volume_tile(config, shape, pixels)
    layout = tile_layout(config, shape, tile)
    total = layout.count * max(int(n_slices), 1)
    limit = pixels if max_batch_pixels is None else min(pixels, max_batch_pixels)
    batch = int(max(1, min(limit // math.prod(layout.tile_shape), max_batch, total)))
    return layout.tile_shape, batch


def _image_tile(config: UNetConfig, shape: tuple[int, ...], pixels: float) -> tuple[int, int]:
    """The 2D tile of :func:`auto_tile`: the whole image, else a band, else a square."""
    smallest = minimum_tile(config)
    cover = [config.admissible_size(int(n) + 2 * config.halo) for n in shape]
    if cover[0] * cover[1] <= pixels:
        return cover[0], cover[1]
    if min(cover) * smallest <= pixels and min(cover) ** 2 <= pixels:
        short = int(np.argmin(cover))
        other = _largest_admissible_at_most(config, int(pixels // cover[short]))
        return (cover[0], other) if short == 0 else (other, cover[1])
    side = _largest_admissible_at_most(config, math.isqrt(int(pixels)))
    return side, side
