"""Planning tiled inference: tile shape, batch size and layout from the memory at hand."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..model import UNetConfig
from .source import SliceSource
from .tiling import (
    TileLayout,
    activation_bytes_per_pixel,
    auto_tile,
    available_memory_bytes,
    tile_layout,
)

__all__ = ["Plan", "make_plan"]

#: Share of the memory at hand one forward pass may use (CPU: available RAM; CUDA: free memory).
CPU_MEMORY_SHARE = 0.35
CUDA_MEMORY_SHARE = 0.5
#: Largest automatic batch.
CPU_MAX_BATCH = 4
CUDA_MAX_BATCH = 16
#: On the CPU, batch small tiles only: past about 2 M pixels a batch gains nothing.
CPU_MAX_BATCH_PIXELS = 2**21


@dataclass(frozen=True)
class Plan:
    """How an image will be tiled.

    Attributes
    ----------
    tile : tuple of int
        Input tile shape ``(ty, tx)`` (``(tz, ty, tx)`` for a 3D network), halo included.
    batch_size : int
        Tiles per forward pass.
    layout : TileLayout
        Tile positions over one 2D slice (or over the volume, for a 3D network).
    n_slices : int
        Number of 2D slices (1 for a volume and a 3D network).
    device : torch.device
        Where the network runs.
    stack : bool
        Whether the image is a stack (the result is then ``(Z, Y, X)``, else ``(Y, X)``).
    """

    tile: tuple[int, ...]
    batch_size: int
    layout: TileLayout
    n_slices: int
    device: torch.device
    stack: bool = False

    @property
    def n_tiles(self) -> int:
        """Tiles over the whole image (all slices)."""
        return self.layout.count * self.n_slices

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the result: ``(Z, Y, X)`` for a stack or a volume, ``(Y, X)`` for a 2D
        image."""
        spatial = self.layout.shape
        return (self.n_slices, *spatial) if self.stack else spatial


def _memory_budget(device: torch.device) -> float:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return CUDA_MEMORY_SHARE * free
    return CPU_MEMORY_SHARE * available_memory_bytes()


def make_plan(
    config: UNetConfig,
    src: SliceSource,
    device: torch.device,
    tile: int | tuple[int, ...] | None,
    batch_size: int | None,
    autocast: torch.dtype | None,
) -> Plan:
    """Plan the tiling of ``src`` on ``device``.

    Parameters
    ----------
    config : UNetConfig
        The network's configuration (admissible sizes, halo, activation memory).
    src : SliceSource
        The image.
    device : torch.device
        Where the network runs (its memory sets the default tile and batch).
    tile : int or tuple of int, optional
        Input tile edge, as for :func:`~napari_unet.core.inference.prediction_plan`; default:
        the largest tile the memory at hand holds.
    batch_size : int, optional
        Tiles per forward pass; default from the memory at hand.
    autocast : torch.dtype, optional
        The autocast dtype (bfloat16 halves the activation memory).

    Returns
    -------
    Plan
        The plan.

    Raises
    ------
    ValueError
        On a ``tile`` or ``batch_size`` that is not a positive integer.
    """
    bad_batch = isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer)
    if batch_size is not None and (bad_batch or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    shape = src.spatial
    ndim = len(shape)
    cuda = device.type == "cuda"
    budget = _memory_budget(device)
    if tile is None:
        tile_shape, _ = auto_tile(config, shape, budget, dtype_bytes=2 if autocast else 4)
    else:
        sizes = (tile,) * ndim if np.isscalar(tile) else tuple(tile)
        if len(sizes) != ndim or any(
            isinstance(t, bool) or not isinstance(t, int | np.integer) or t < 1 for t in sizes
        ):
            what = "a pair of them" if ndim == 2 else f"{ndim} of them (z, y, x)"
            raise ValueError(f"tile must be a positive integer or {what}, got {tile!r}")
        tile_shape = tuple(int(t) for t in sizes)
    layout = tile_layout(config, shape, tile_shape)
    if batch_size is None:
        voxels = math.prod(layout.tile_shape)
        per_px = activation_bytes_per_pixel(config, 2 if autocast else 4)
        limit = budget / per_px if cuda else min(budget / per_px, CPU_MAX_BATCH_PIXELS)
        most = CUDA_MAX_BATCH if cuda else CPU_MAX_BATCH
        batch_size = int(max(1, min(limit // voxels, most, layout.count * src.n)))
    return Plan(layout.tile_shape, int(batch_size), layout, src.n, device, src.is_stack)
