"""Exact overlap-tile inference over numpy, dask and zarr arrays, and instance segmentation.

The image is cut into tiles of one shape whose origins lie on the network's ``2 ** depth``
pooling grid and which carry a halo of at least the receptive radius (valid padding: the pixels
the network loses per side); pixels beyond the image border are mirrored. Cropping each tile's
output by its halo and placing it gives the same foreground probabilities as one pass over the
whole mirror-padded image (:func:`predict_whole`), to float rounding: no blending is needed.

Speed: tiles are batched and run under ``torch.inference_mode`` in channels-last layout (and
bfloat16 autocast on CUDA); a reader thread reads and normalises the next tiles while the
current batch runs; the tile size follows the memory at hand (:func:`prediction_plan`), and
when CUDA runs out of memory the batch and then the tile are halved and the work goes on.

Lazy inputs (dask arrays, zarr arrays, anything with ``shape``, ``dtype`` and numpy-style
slicing) are read tile by tile; results can be written into a zarr array tile by tile
(``out=``). Normalisation uses each 2D slice's own percentiles, as in training; for slices of
more than :data:`PERCENTILE_MAX_PIXELS` pixels the percentiles are taken on a regular strided
subsample (every ``s``-th row and column, ``s`` the smallest step that brings the sample under
that many pixels), read in bands of at most that many pixels.
"""

from __future__ import annotations

import copy
import logging
import math
import queue
import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from napari_unet.core.device import select_device
from napari_unet.core.model import TrainedModel, UNetConfig
from napari_unet.core.normalize import as_nchw, check_finite, normalize_image, percentile_range
from napari_unet.core.postprocess import DEFAULT_MIN_SIZE, probabilities_to_labels
from napari_unet.core.tiling import (
    TileLayout,
    activation_bytes_per_pixel,
    auto_tile,
    available_memory_bytes,
    minimum_tile,
    reflect_indices,
    tile_layout,
)

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "PERCENTILE_MAX_PIXELS",
    "Cancelled",
    "Plan",
    "foreground_probability",
    "predict_probabilities",
    "predict_region",
    "predict_whole",
    "prediction_plan",
    "segment",
    "slice_normalization",
]

logger = logging.getLogger(__name__)

#: 2D slices with more pixels than this get their percentiles from a strided subsample.
PERCENTILE_MAX_PIXELS = 4096 * 4096

#: Share of the memory at hand one forward pass may use (CPU: available RAM; CUDA: free memory).
CPU_MEMORY_SHARE = 0.35
CUDA_MEMORY_SHARE = 0.5
#: Largest automatic batch.
CPU_MAX_BATCH = 4
CUDA_MAX_BATCH = 16
#: On the CPU, batch small tiles only: past about 2 M pixels a batch gains nothing.
CPU_MAX_BATCH_PIXELS = 2**21

Progress = Callable[[int, int], None]


class Cancelled(Exception):
    """Raised when prediction stops because the caller set its ``stop`` event.

    Work finished before the stop (tiles already written to ``out``) stays written. The GUI
    catches this to tell a user's stop from a failure.
    """


# ----------------------------------------------------------------------------------------------
# Input
# ----------------------------------------------------------------------------------------------


class _Source:
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


def slice_normalization(
    model: TrainedModel,
    image: Any,
    z: int = 0,
    *,
    channel_axis: int | None = None,
    rgb: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalisation of one 2D slice: ``normalised = (pixels - offset) / scale``.

    Uses the model's normalisation (per-channel percentiles of the slice). Slices of more than
    :data:`PERCENTILE_MAX_PIXELS` pixels are subsampled with a regular stride, read in bands,
    so that a lazy slice is never loaded whole. Up to that size the result is exactly that of
    :func:`napari_unet.core.normalize.normalize_image`.

    Parameters
    ----------
    model : TrainedModel
        Supplies the normalisation spec.
    image : array-like
        numpy, dask or zarr array, laid out as for :func:`predict_probabilities`.
    z : int
        Index of the 2D slice in a stack (0 for a 2D image).
    channel_axis : int, optional
        Axis of the channels, if any.
    rgb : bool
        The last axis holds RGB(A) channels.

    Returns
    -------
    offset, scale : numpy.ndarray
        float32 arrays of shape ``(C, 1, 1)``.

    Raises
    ------
    ValueError
        On an unknown normalisation method, NaN or infinite values, or a bad layout.
    """
    src = _Source(image, channel_axis, rgb)
    if not 0 <= z < src.n:
        raise ValueError(f"z must be in [0, {src.n}), got {z}")
    return _slice_normalization(src, int(z), model.normalization)


def _slice_normalization(
    src: _Source, z: int, spec: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    if spec.get("method") != "percentile":
        raise ValueError(
            f"unknown normalisation method {spec.get('method')!r}; expected 'percentile'"
        )
    where = f"image slice {z}" if src.is_stack else "image"
    n_px = src.h * src.w
    if n_px <= PERCENTILE_MAX_PIXELS:
        data = src.read(z, slice(None), slice(None))
        check_finite(data, where)
    else:
        step = math.ceil(math.sqrt(n_px / PERCENTILE_MAX_PIXELS))
        band = max(step, PERCENTILE_MAX_PIXELS // src.w // step * step)  # rows per read
        parts = []
        for r0 in range(0, src.h, band):
            block = src.read(z, slice(r0, min(r0 + band, src.h)), slice(None))
            check_finite(block, where)
            parts.append(block[:, ::step, ::step])
        data = np.concatenate(parts, axis=1)
    data = data.astype(np.float32, copy=False)
    lo, hi = percentile_range(data, spec["low"], spec["high"])
    scale = np.where(hi > lo, hi - lo, 1.0).astype(np.float32)
    return lo, scale


# ----------------------------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------------------------


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """Foreground probability from class logits ``(N, K, H, W)``: ``1 - softmax[:, 0]``.

    For two classes this is ``sigmoid(l1 - l0)``, computed in float32.

    Parameters
    ----------
    logits : torch.Tensor
        Network output.

    Returns
    -------
    torch.Tensor
        float32 ``(N, H, W)``.
    """
    logits = logits.float()
    if logits.shape[1] == 2:
        return torch.sigmoid(logits[:, 1] - logits[:, 0])
    return 1.0 - torch.softmax(logits, dim=1)[:, 0]


@dataclass(frozen=True)
class _Runner:
    """A network ready for inference on one device."""

    net: nn.Module
    device: torch.device
    autocast: torch.dtype | None
    channels_last: bool
    tta: bool

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.tta:
            return self._one(x)
        total = None
        for k in range(4):
            for flip in (False, True):
                xt = torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1))
                p = torch.rot90(self._one(xt), -k, dims=(-2, -1))
                p = p.flip(-1) if flip else p
                total = p if total is None else total + p
        return total / 8.0

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = (
            torch.autocast(self.device.type, dtype=self.autocast)
            if self.autocast is not None
            else nullcontext()
        )
        with ctx:
            logits = self.net(x)
        return foreground_probability(logits)


def _resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    raise ValueError(f"precision must be 'auto', 'float32' or 'bfloat16', got {precision!r}")


def _runner(model: TrainedModel, device: torch.device, tta: bool, precision: str) -> _Runner:
    """A private copy of the network in eval mode on ``device`` (the model is left untouched)."""
    net = copy.deepcopy(model.net).to(device).eval()
    channels_last = device.type in ("cuda", "cpu")
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return _Runner(net, device, _resolve_precision(precision, device), channels_last, bool(tta))


@contextmanager
def _cudnn_benchmark(device: torch.device):
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # one tile shape: the fastest kernel is found once
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _check_model(model: TrainedModel, src: _Source) -> UNetConfig:
    if not isinstance(model, TrainedModel):
        raise ValueError(f"model must be a TrainedModel, got {type(model).__name__}")
    config = model.config
    if src.c != config.in_channels:
        raise ValueError(
            f"the model expects images with {config.in_channels} channel(s) but the image has "
            f"{src.c} ({src.description}); name the channel axis (channel_axis=) or set rgb= "
            "to match the images the model was trained on"
        )
    return config


#: CUDA's out-of-memory error (``torch.OutOfMemoryError`` since torch 2.5).
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, _OUT_OF_MEMORY):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


# ----------------------------------------------------------------------------------------------
# The reference: one whole-image pass
# ----------------------------------------------------------------------------------------------


def predict_whole(
    model: TrainedModel,
    image: Any,
    *,
    channel_axis: int | None = None,
    rgb: bool = False,
    device: str | torch.device = "auto",
    tta: bool = False,
    precision: str = "auto",
) -> np.ndarray:
    """Foreground probability of one 2D image by one forward pass over the whole image.

    The reference that tiled inference reproduces: the image is normalised
    (:func:`~napari_unet.core.normalize.normalize_image`), mirror-padded by the network's halo
    on each side and, at the far end, up to the next admissible size, passed through the
    network once, and the output is cropped back to the image. Memory grows with the image;
    use :func:`predict_probabilities` for real work.

    Parameters
    ----------
    model : TrainedModel
        The network and its normalisation.
    image : array-like
        One 2D image: ``(Y, X)``, ``(C, Y, X)`` with ``channel_axis``, or ``(Y, X, 3)`` with
        ``rgb``.
    channel_axis : int, optional
        Axis of the channels, if any.
    rgb : bool
        The last axis holds RGB(A) channels.
    device : str or torch.device
        As for :func:`~napari_unet.core.device.select_device`.
    tta : bool
        Mean over the 8 flips and 90-degree rotations of the padded image.
    precision : {'auto', 'float32', 'bfloat16'}
        ``'auto'``: bfloat16 autocast on CUDA, float32 elsewhere.

    Returns
    -------
    numpy.ndarray
        float32 ``(Y, X)``.
    """
    src = _Source(np.asarray(image), channel_axis, rgb)
    config = _check_model(model, src)
    if src.n != 1:
        raise ValueError(
            f"predict_whole takes one 2D image, got {src.n} slices ({src.description})"
        )
    x = normalize_image(src.read(0, slice(None), slice(None)), model.normalization)
    halo = config.halo
    size = [config.admissible_size(n + 2 * halo) for n in (src.h, src.w)]
    pad = ((0, 0), (halo, size[0] - src.h - halo), (halo, size[1] - src.w - halo))
    x = np.pad(x, pad, mode="reflect")
    dev = select_device(device)
    run = _runner(model, dev, tta, precision)
    with torch.inference_mode(), _cudnn_benchmark(dev):
        prob = run(torch.from_numpy(x)[None].to(dev))[0]
    crop = halo if config.padding == "same" else 0
    return prob[crop : crop + src.h, crop : crop + src.w].cpu().numpy()


# ----------------------------------------------------------------------------------------------
# Planning
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How an image will be tiled.

    Attributes
    ----------
    tile : tuple of int
        Input tile shape ``(ty, tx)``, halo included.
    batch_size : int
        Tiles per forward pass.
    layout : TileLayout
        Tile positions over one 2D slice.
    n_slices : int
        Number of 2D slices.
    device : torch.device
        Where the network runs.
    stack : bool
        Whether the image is a stack (the result is then ``(Z, Y, X)``, else ``(Y, X)``).
    """

    tile: tuple[int, int]
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
        """Shape of the result: ``(Z, Y, X)`` for a stack, ``(Y, X)`` for a 2D image."""
        yx = (self.layout.y.size, self.layout.x.size)
        return (self.n_slices, *yx) if self.stack else yx


def _memory_budget(device: torch.device) -> float:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return CUDA_MEMORY_SHARE * free
    return CPU_MEMORY_SHARE * available_memory_bytes()


def _plan(
    config: UNetConfig,
    src: _Source,
    device: torch.device,
    tile: int | tuple[int, int] | None,
    batch_size: int | None,
    autocast: torch.dtype | None,
) -> Plan:
    bad_batch = isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer)
    if batch_size is not None and (bad_batch or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    shape = (src.h, src.w)
    cuda = device.type == "cuda"
    budget = _memory_budget(device)
    if tile is None:
        tile_shape, _ = auto_tile(config, shape, budget, dtype_bytes=2 if autocast else 4)
    else:
        sizes = (tile, tile) if np.isscalar(tile) else tuple(tile)
        if len(sizes) != 2 or any(
            isinstance(t, bool) or not isinstance(t, int | np.integer) or t < 1 for t in sizes
        ):
            raise ValueError(f"tile must be a positive integer or a pair of them, got {tile!r}")
        tile_shape = (int(sizes[0]), int(sizes[1]))
    layout = tile_layout(config, shape, tile_shape)
    if batch_size is None:
        ty, tx = layout.tile_shape
        per_px = activation_bytes_per_pixel(config, 2 if autocast else 4)
        limit = budget / per_px if cuda else min(budget / per_px, CPU_MAX_BATCH_PIXELS)
        most = CUDA_MAX_BATCH if cuda else CPU_MAX_BATCH
        batch_size = int(max(1, min(limit // (ty * tx), most, layout.count * src.n)))
    return Plan(layout.tile_shape, int(batch_size), layout, src.n, device, src.is_stack)


def prediction_plan(
    model: TrainedModel,
    image: Any,
    *,
    channel_axis: int | None = None,
    rgb: bool = False,
    tile: int | tuple[int, int] | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> Plan:
    """The tile shape, batch size and layout :func:`predict_probabilities` would use.

    Parameters
    ----------
    model, image, channel_axis, rgb, tile, batch_size, device, precision
        As for :func:`predict_probabilities`.

    Returns
    -------
    Plan
        The plan. Pass ``plan.tile`` and ``plan.batch_size`` on to run the same tiling
        elsewhere (e.g. on the workers of a cluster).
    """
    src = _Source(image, channel_axis, rgb)
    config = _check_model(model, src)
    dev = select_device(device)
    return _plan(config, src, dev, tile, batch_size, _resolve_precision(precision, dev))


# ----------------------------------------------------------------------------------------------
# The tile engine
# ----------------------------------------------------------------------------------------------

_Item = tuple[int, int, int]  # (z, iy, ix)


class _Reader(threading.Thread):
    """Reads and normalises batches of tiles ahead of the network, in a background thread."""

    def __init__(
        self,
        src: _Source,
        items: list[_Item],
        layout: TileLayout,
        batch: int,
        norm: Callable[[int], tuple[np.ndarray, np.ndarray]],
        pin: bool,
        stop: threading.Event | None,
        depth: int = 2,
    ) -> None:
        super().__init__(name="napari-unet-tile-reader", daemon=True)
        self.src, self.items, self.layout, self.batch = src, items, layout, batch
        self.norm, self.pin, self.user_stop = norm, pin, stop
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.halt = threading.Event()

    def _put(self, item: Any) -> bool:
        while not self.halt.is_set():
            try:
                self.queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        try:
            for start in range(0, len(self.items), self.batch):
                if self.halt.is_set() or (self.user_stop is not None and self.user_stop.is_set()):
                    break
                chunk = self.items[start : start + self.batch]
                if not self._put((chunk, self._read_batch(chunk))):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(exc)
            return
        self._put(None)

    def _read_batch(self, chunk: list[_Item]) -> np.ndarray | torch.Tensor:
        ty, tx = self.layout.tile_shape
        shape = (len(chunk), self.src.c, ty, tx)
        if self.pin:
            buf = torch.empty(shape, dtype=torch.float32, pin_memory=True)
            arr = buf.numpy()
        else:
            buf = arr = np.empty(shape, np.float32)
        for i, (z, iy, ix) in enumerate(chunk):
            offset, scale = self.norm(z)
            block = self._read_tile(z, iy, ix)
            arr[i] = (block.astype(np.float32, copy=False) - offset) / scale
        return buf

    def _read_tile(self, z: int, iy: int, ix: int) -> np.ndarray:
        lay, src = self.layout, self.src
        y0 = iy * lay.y.stride - lay.halo
        x0 = ix * lay.x.stride - lay.halo
        ty, tx = lay.tile_shape
        ry = reflect_indices(y0, ty, src.h)
        rx = reflect_indices(x0, tx, src.w)
        ya, yb = int(ry.min()), int(ry.max()) + 1
        xa, xb = int(rx.min()), int(rx.max()) + 1
        block = src.read(z, slice(ya, yb), slice(xa, xb))
        check_finite(block, f"image slice {z}" if src.is_stack else "image")
        inside_y = y0 >= 0 and y0 + ty <= src.h
        inside_x = x0 >= 0 and x0 + tx <= src.w
        if not inside_y:
            block = block[:, ry - ya]
        if not inside_x:
            block = block[:, :, rx - xa]
        return block


Writer = Callable[[int, tuple[int, int], tuple[int, int], np.ndarray], None]


class _Engine:
    """Runs a tile layout over the slices of a source and hands out cropped tile outputs."""

    def __init__(
        self,
        model: TrainedModel,
        src: _Source,
        plan: Plan,
        runner: _Runner,
        *,
        norm: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
        rows: tuple[int, int] | None = None,
        cols: tuple[int, int] | None = None,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.model, self.src, self.plan, self.runner = model, src, plan, runner
        self.config = model.config
        self._norm: dict[int, tuple[np.ndarray, np.ndarray]] = dict(norm or {})
        self._norm_lock = threading.Lock()
        self.rows, self.cols = rows, cols
        self.progress, self.stop = progress, stop

    def normalization(self, z: int) -> tuple[np.ndarray, np.ndarray]:
        with self._norm_lock:
            if z not in self._norm:
                self._norm = {k: v for k, v in self._norm.items() if k >= z - 1}
                self._norm[z] = _slice_normalization(self.src, z, self.model.normalization)
            return self._norm[z]

    def run(
        self,
        slices: Sequence[int],
        write: Writer,
        slice_done: Callable[[int], None] | None = None,
    ) -> None:
        """Compute every tile of ``slices``; on running out of memory, shrink and go on."""
        remaining = list(slices)
        while remaining:
            finished: list[int] = []
            try:
                self._run_once(remaining, write, slice_done, finished)
                return
            except Exception as exc:
                if not _is_oom(exc):
                    raise
                remaining = [z for z in remaining if z not in set(finished)]
                self._shrink(exc)

    def _shrink(self, exc: BaseException) -> None:
        if self.plan.device.type == "cuda":
            torch.cuda.empty_cache()
        plan = self.plan
        if plan.batch_size > 1:
            new = replace(plan, batch_size=plan.batch_size // 2)
        else:
            smallest = minimum_tile(self.config)
            halved = tuple(max(smallest, self.config.admissible_size(t // 2)) for t in plan.tile)
            halved = tuple(min(h, t) for h, t in zip(halved, plan.tile, strict=True))
            if halved == plan.tile:
                raise MemoryError(
                    f"out of memory on {plan.device} even with the smallest tile "
                    f"({plan.tile[0]}x{plan.tile[1]}) and batch 1"
                ) from exc
            layout = tile_layout(self.config, (self.src.h, self.src.w), halved)
            new = replace(plan, tile=layout.tile_shape, batch_size=1, layout=layout)
        logger.warning(
            "out of memory on %s with %d tile(s) of %dx%d: going on with %d of %dx%d",
            plan.device,
            plan.batch_size,
            *plan.tile,
            new.batch_size,
            *new.tile,
        )
        self.plan = new

    def _run_once(
        self,
        slices: list[int],
        write: Writer,
        slice_done: Callable[[int], None] | None,
        finished: list[int],
    ) -> None:
        plan, layout = self.plan, self.plan.layout
        per_slice = layout.tiles(self.rows, self.cols)
        items = [(z, iy, ix) for z in slices for iy, ix in per_slice]
        left = {z: len(per_slice) for z in slices}
        total, done = len(items), 0
        logger.info(
            "predicting %d tile(s) of %dx%d in batches of %d on %s",
            total,
            *plan.tile,
            plan.batch_size,
            plan.device,
        )
        cuda = plan.device.type == "cuda"
        reader = _Reader(
            self.src, items, layout, plan.batch_size, self.normalization, cuda, self.stop
        )
        pending: tuple[list[_Item], torch.Tensor, Any] | None = None

        def finish(entry: tuple[list[_Item], torch.Tensor, Any]) -> None:
            nonlocal done
            chunk, host, event = entry
            if event is not None:
                event.synchronize()
            probs = host.numpy()
            for (z, iy, ix), prob in zip(chunk, probs, strict=True):
                self._write_tile(z, iy, ix, prob, write)
                done += 1
                left[z] -= 1
                if left[z] == 0:
                    finished.append(z)
                    if slice_done is not None:
                        slice_done(z)
                if self.progress is not None:
                    self.progress(done, total)

        reader.start()
        try:
            with torch.inference_mode(), _cudnn_benchmark(plan.device):
                while True:
                    item = reader.queue.get()
                    if isinstance(item, BaseException):
                        raise item
                    if self.stop is not None and self.stop.is_set():
                        raise Cancelled(f"prediction stopped after {done} of {total} tiles")
                    if item is None:
                        break
                    chunk, batch = item
                    x = torch.as_tensor(batch)
                    if plan.device.type != "cpu":
                        x = x.to(plan.device, non_blocking=cuda)
                    prob = self.runner(x)
                    if cuda:
                        host = torch.empty(prob.shape, dtype=prob.dtype, pin_memory=True)
                        host.copy_(prob, non_blocking=True)
                        event = torch.cuda.Event()
                        event.record()
                    else:
                        host, event = prob.cpu(), None
                    if pending is not None:
                        finish(pending)
                    pending = (chunk, host, event)
                if pending is not None:
                    finish(pending)
                    pending = None
        finally:
            if pending is not None:
                # A batch that finished before an error or a stop is good: keep it.
                try:
                    finish(pending)
                except Exception:  # pragma: no cover - the first error is the one to report
                    logger.debug("could not keep the last finished batch", exc_info=True)
            reader.halt.set()
            reader.join()

    def _write_tile(self, z: int, iy: int, ix: int, prob: np.ndarray, write: Writer) -> None:
        lay = self.plan.layout
        (ya, yb), (xa, xb) = lay.y.extent(iy), lay.x.extent(ix)
        if self.rows is not None:
            ya, yb = max(ya, self.rows[0]), min(yb, self.rows[1])
        if self.cols is not None:
            xa, xb = max(xa, self.cols[0]), min(xb, self.cols[1])
        oy = ya - iy * lay.y.stride + lay.crop
        ox = xa - ix * lay.x.stride + lay.crop
        write(z, (ya, yb), (xa, xb), prob[oy : oy + yb - ya, ox : ox + xb - xa])


def _prepare(
    model: TrainedModel,
    image: Any,
    channel_axis: int | None,
    rgb: bool,
    tile: int | tuple[int, int] | None,
    batch_size: int | None,
    device: str | torch.device,
    tta: bool,
    precision: str,
) -> tuple[_Source, Plan, _Runner]:
    src = _Source(image, channel_axis, rgb)
    config = _check_model(model, src)
    dev = select_device(device)
    autocast = _resolve_precision(precision, dev)
    plan = _plan(config, src, dev, tile, batch_size, autocast)
    return src, plan, _runner(model, dev, tta, precision)


def _check_out(out: Any, shape: tuple[int, ...], what: str) -> None:
    if tuple(int(s) for s in out.shape) != tuple(shape):
        raise ValueError(f"{what} must have shape {tuple(shape)}, got {tuple(out.shape)}")


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------


def predict_probabilities(
    model: TrainedModel,
    image: Any,
    *,
    channel_axis: int | None = None,
    rgb: bool = False,
    tile: int | tuple[int, int] | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    tta: bool = False,
    out: Any = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    precision: str = "auto",
) -> Any:
    """Foreground probability of a 2D image or a stack by exact overlap-tile inference.

    The result equals one whole-image pass (:func:`predict_whole`) up to float rounding, for
    any tile size, both paddings and images of any size (smaller than one tile included).

    Parameters
    ----------
    model : TrainedModel
        The network (used in eval mode; the model itself is not modified) and its
        normalisation.
    image : array-like
        numpy, dask or zarr array (read tile by tile; never loaded whole): ``(Y, X)``,
        ``(Z, Y, X)``, ``(C, Y, X)`` / ``(Z, C, Y, X)`` with ``channel_axis``, or
        ``(Y, X, 3)`` / ``(Z, Y, X, 3)`` with ``rgb``. Any real dtype; NaN is an error.
    channel_axis : int, optional
        Axis of the channels, if the image has one.
    rgb : bool
        The last axis holds RGB(A) channels (a napari ``rgb`` layer).
    tile : int or tuple of int, optional
        Edge of the **input** tile in pixels, halo included (or ``(ty, tx)``), rounded up to
        the nearest admissible size; the layout then uses the fewest tiles of at most that size
        and the smallest admissible tile that covers the image with them. Default: the largest
        tile that the memory at hand holds (CPU: a share of the available RAM; CUDA: a share of
        the free GPU memory), which is the whole image when it fits.
    batch_size : int, optional
        Tiles per forward pass; default from the memory at hand.
    device : str or torch.device
        ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or ``'mps'``.
    tta : bool
        Test-time augmentation: the mean over the 8 flips and 90-degree rotations of each
        tile. When both image sides are multiples of ``model.config.grid`` this equals the mean
        of the 8 predictions of the transformed image, transformed back (otherwise the pooling
        grid sits differently in the transformed images and the two differ slightly).
    out : array-like, optional
        Where to write: a numpy or zarr array of shape ``(Y, X)`` (2D input) or ``(Z, Y, X)``,
        written tile by tile. Default: a new float32 numpy array.
    progress : callable, optional
        ``progress(done, total)`` after each tile, counting tiles. If the tile shrinks after
        running out of GPU memory, counting starts again with the new total.
    stop : threading.Event, optional
        Checked between batches of tiles; when set, :class:`Cancelled` is raised (tiles already
        written to ``out`` stay written).
    precision : {'auto', 'float32', 'bfloat16'}
        ``'auto'``: bfloat16 autocast on CUDA, float32 elsewhere.

    Returns
    -------
    array
        float32 foreground probability, ``(Y, X)`` for a 2D image, ``(Z, Y, X)`` for a stack;
        ``out`` when given.

    Raises
    ------
    ValueError
        If the image's channels do not match the model, the image is empty, not numeric or
        holds NaN or infinity, or an argument is out of range.
    Cancelled
        When ``stop`` is set.
    MemoryError
        When even the smallest tile does not fit on the device.

    Examples
    --------
    >>> from napari_unet.core.model import UNet, UNetConfig
    >>> model = TrainedModel(UNet(UNetConfig(depth=2, base_channels=4)))
    >>> image = np.random.default_rng(0).random((40, 30))
    >>> prob = predict_probabilities(model, image, tile=64, device="cpu")
    >>> prob.shape, bool(np.allclose(prob, predict_whole(model, image, device="cpu"), atol=1e-4))
    ((40, 30), True)
    """
    src, plan, runner = _prepare(
        model, image, channel_axis, rgb, tile, batch_size, device, tta, precision
    )
    shape = (src.n, src.h, src.w) if src.is_stack else (src.h, src.w)
    if out is None:
        out = np.empty(shape, np.float32)
    else:
        _check_out(out, shape, "out")

    def write(z: int, ys: tuple[int, int], xs: tuple[int, int], data: np.ndarray) -> None:
        index = (slice(*ys), slice(*xs))
        out[(z, *index) if src.is_stack else index] = data

    engine = _Engine(model, src, plan, runner, progress=progress, stop=stop)
    engine.run(range(src.n), write)
    return out


def predict_region(
    model: TrainedModel,
    image: Any,
    *,
    z: int = 0,
    rows: tuple[int, int],
    cols: tuple[int, int],
    tile: int | tuple[int, int],
    normalization: tuple[np.ndarray, np.ndarray] | None = None,
    channel_axis: int | None = None,
    rgb: bool = False,
    batch_size: int = 1,
    device: str | torch.device = "auto",
    tta: bool = False,
    precision: str = "auto",
) -> np.ndarray:
    """Foreground probability of a rectangle of one 2D slice, as the whole-slice run gives it.

    The tiles are laid out over the whole slice exactly as :func:`predict_probabilities` lays
    them out with the same ``tile``, and only those that reach the rectangle are computed, so
    that rectangles computed apart (e.g. as the chunks of a zarr array on the workers of a
    cluster) put together give the whole-slice result.

    Parameters
    ----------
    model : TrainedModel
        The network and its normalisation.
    image : array-like
        As for :func:`predict_probabilities` (read only around the rectangle).
    z : int
        Slice index (0 for a 2D image).
    rows, cols : tuple of int
        The rectangle: image rows ``[rows[0], rows[1])`` and columns ``[cols[0], cols[1])``.
    tile : int or tuple of int
        Input tile, as for :func:`predict_probabilities` (required: the layout must be the
        same wherever the rectangles run; see :func:`prediction_plan`).
    normalization : tuple of numpy.ndarray, optional
        ``(offset, scale)`` of the slice from :func:`slice_normalization`; computed here (from
        the whole slice) when not given.
    channel_axis, rgb, batch_size, device, tta, precision
        As for :func:`predict_probabilities`.

    Returns
    -------
    numpy.ndarray
        float32 ``(rows[1] - rows[0], cols[1] - cols[0])``.
    """
    src, plan, runner = _prepare(
        model, image, channel_axis, rgb, tile, batch_size, device, tta, precision
    )
    if not 0 <= z < src.n:
        raise ValueError(f"z must be in [0, {src.n}), got {z}")
    for name, (a, b), n in (("rows", rows, src.h), ("cols", cols, src.w)):
        if not 0 <= a < b <= n:
            raise ValueError(f"{name} must satisfy 0 <= start < stop <= {n}, got {(a, b)}")
    result = np.empty((rows[1] - rows[0], cols[1] - cols[0]), np.float32)

    def write(_z: int, ys: tuple[int, int], xs: tuple[int, int], data: np.ndarray) -> None:
        result[ys[0] - rows[0] : ys[1] - rows[0], xs[0] - cols[0] : xs[1] - cols[0]] = data

    norm = {int(z): normalization} if normalization is not None else None
    engine = _Engine(model, src, plan, runner, norm=norm, rows=rows, cols=cols)
    engine.run([int(z)], write)
    return result


def segment(
    model: TrainedModel,
    image: Any,
    *,
    threshold: float = 0.5,
    min_size: int | None = None,
    channel_axis: int | None = None,
    rgb: bool = False,
    tile: int | tuple[int, int] | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    tta: bool = False,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    out: Any = None,
    probabilities_out: Any = None,
    precision: str = "auto",
    on_slice: Callable[[int, np.ndarray], None] | None = None,
) -> Any:
    """Instance labels of a 2D image or a stack.

    Foreground probability by :func:`predict_probabilities`, then, slice by slice as each
    finishes, :func:`~napari_unet.core.postprocess.probabilities_to_labels`: threshold,
    connected components, instances grown back by the model's training gap (``model.gap``),
    small objects dropped. Labels are consecutive and unique across the whole stack.

    Parameters
    ----------
    model : TrainedModel
        The network, its normalisation and its gap.
    image : array-like
        As for :func:`predict_probabilities`.
    threshold : float
        Foreground where the probability exceeds this (in ``[0, 1)``).
    min_size : int, optional
        Objects of fewer pixels (after growing) are dropped. Default:
        ``model.training['min_size']`` when the model holds one, else
        :data:`~napari_unet.core.postprocess.DEFAULT_MIN_SIZE` (16 pixels).
    channel_axis, rgb, tile, batch_size, device, tta, progress, stop, precision
        As for :func:`predict_probabilities`.
    out : array-like, optional
        numpy or zarr array for the labels, ``(Y, X)`` or ``(Z, Y, X)``, written one slice at
        a time. Default: a new int32 numpy array.
    probabilities_out : array-like, optional
        Also write the probabilities here (shape as ``out``), tile by tile.
    on_slice : callable, optional
        ``on_slice(z, labels2d)`` after each slice is labelled (for live display).

    Returns
    -------
    array
        int32 labels (0 = background), ``out`` when given.

    Raises
    ------
    ValueError, Cancelled, MemoryError
        As for :func:`predict_probabilities`.
    """
    src, plan, runner = _prepare(
        model, image, channel_axis, rgb, tile, batch_size, device, tta, precision
    )
    if min_size is None:
        min_size = int(model.training.get("min_size", DEFAULT_MIN_SIZE))
    shape = (src.n, src.h, src.w) if src.is_stack else (src.h, src.w)
    if out is None:
        out = np.zeros(shape, np.int32)
    else:
        _check_out(out, shape, "out")
    if probabilities_out is not None:
        _check_out(probabilities_out, shape, "probabilities_out")
    # Check the post-processing arguments before any work is done.
    probabilities_to_labels(
        np.zeros((1, 1), np.float32), threshold=threshold, gap=model.gap, min_size=min_size
    )
    buffers: dict[int, np.ndarray] = {}
    next_label = 1

    def write(z: int, ys: tuple[int, int], xs: tuple[int, int], data: np.ndarray) -> None:
        buf = buffers.get(z)
        if buf is None:
            buf = buffers[z] = np.empty((src.h, src.w), np.float32)
        buf[ys[0] : ys[1], xs[0] : xs[1]] = data
        if probabilities_out is not None:
            index = (slice(*ys), slice(*xs))
            probabilities_out[(z, *index) if src.is_stack else index] = data

    def slice_done(z: int) -> None:
        nonlocal next_label
        labels = probabilities_to_labels(
            buffers.pop(z),
            threshold=threshold,
            gap=model.gap,
            min_size=min_size,
            start_label=next_label,
        )
        if labels.size and labels.max() >= next_label:
            next_label = int(labels.max()) + 1
        if src.is_stack:
            out[z] = labels
        else:
            out[...] = labels
        if on_slice is not None:
            on_slice(z, labels)

    engine = _Engine(model, src, plan, runner, progress=progress, stop=stop)
    engine.run(range(src.n), write, slice_done)
    return out
