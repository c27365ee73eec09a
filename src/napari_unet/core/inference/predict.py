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

Progress: :func:`predict_probabilities` and :func:`segment` are generators, like
:func:`napari_unet.core.training.train`: they yield progress events
(:class:`~napari_unet.core.progress.Step`) and return their result; a script that only wants
the result writes ``run_to_end(segment(model, image))``
(:func:`~napari_unet.core.progress.run_to_end`). Closing such a generator early ends its reader
thread; a ``stop`` event ends it with :class:`Cancelled`, finished tiles kept.

Test-time augmentation (``tta=True``) averages the 8 flips and 90-degree rotations of each tile.
When both image sides are multiples of ``model.config.grid`` this equals the mean of the 8
predictions of the transformed image, transformed back (otherwise the pooling grid sits
differently in the transformed images and the two differ slightly).

Lazy inputs (dask arrays, zarr arrays, anything with ``shape``, ``dtype`` and numpy-style
slicing) are read tile by tile; results can be written into a zarr array tile by tile
(``out=``). Normalisation uses each 2D slice's own percentiles, as in training; for slices of
more than :data:`PERCENTILE_MAX_PIXELS` pixels the percentiles are taken on a regular strided
subsample (every ``s``-th row and column, ``s`` the smallest step that brings the sample under
that many pixels), read in bands of at most that many pixels.

The public functions live here; the machinery in the sibling modules: :mod:`.source` (lazy slice
reads), :mod:`.runner` (the network on a device: precision, TTA, out-of-memory test),
:mod:`.runtimes` (torch, or on the CPU an exported graph in ONNX Runtime or OpenVINO),
:mod:`.plan` (tile shape and batch size from the memory at hand) and :mod:`.engine` (the reader
thread, the tile loop with its out-of-memory fallback, :class:`Cancelled`).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Generator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..device import select_device
from ..model import TrainedModel, UNetConfig
from ..normalize import check_finite, intensity_range, normalize_image
from ..progress import Step, run_to_end
from .engine import TileEngine
from .plan import Plan, make_plan
from .postprocess import model_labeller
from .runner import (
    NetworkRunner,
    cudnn_benchmark,
    make_runner,
    resolve_precision,
)
from .source import SliceSource

__all__ = [
    "PERCENTILE_MAX_PIXELS",
    "SliceLabels",
    "predict_probabilities",
    "predict_region",
    "predict_whole",
    "prediction_plan",
    "probability_shape",
    "segment",
    "slice_normalization",
]

logger = logging.getLogger(__name__)

#: 2D slices with more pixels than this get their percentiles from a strided subsample.
PERCENTILE_MAX_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class SliceLabels:
    """What :func:`segment` reports when a slice is labelled (the ``item`` of its event).

    Attributes
    ----------
    z : int
        Index of the slice in the stack (0 for a 2D image).
    labels : numpy.ndarray
        int32 ``(Y, X)`` labels of the slice, unique across the stack (uint8 class ids
        ``1..K`` for a model of the classes mode).
    probabilities : numpy.ndarray
        float32 ``(Y, X)`` foreground probability of the slice (``(K, Y, X)`` class
        probabilities for a classes model).
    """

    z: int
    labels: np.ndarray
    probabilities: np.ndarray


def slice_normalization(
    model: TrainedModel,
    image: Any,
    z: int = 0,
    *,
    channel_axis: int | None = None,
    rgb: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalisation of one 2D slice: ``normalised = (pixels - offset) / scale``.

    Uses the model's normalisation: per-channel percentiles of the slice (of the whole volume
    for a 3D model), minimum and maximum where they coincide
    (:func:`~napari_unet.core.normalize.intensity_range`, as in training). Slices of more than
    :data:`PERCENTILE_MAX_PIXELS` pixels are subsampled with a regular stride along every axis,
    read in bands, so that a lazy slice is never loaded whole. Up to that size the result is
    exactly that of :func:`napari_unet.core.normalize.normalize_image`.

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
        float32 arrays of shape ``(C, 1, 1)`` (``(C, 1, 1, 1)`` for a 3D model).

    Raises
    ------
    ValueError
        On an unknown normalisation method, NaN or infinite values, a slice whose every channel
        is constant, or a bad layout.
    """
    src = _source(model, image, channel_axis, rgb)
    if not 0 <= z < src.n:
        raise ValueError(f"z must be in [0, {src.n}), got {z}")
    return _slice_normalization(src, int(z), model.normalization)


def _slice_normalization(
    src: SliceSource, z: int, spec: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    if spec.get("method") != "percentile":
        raise ValueError(
            f"unknown normalisation method {spec.get('method')!r}; expected 'percentile'"
        )
    where = f"image slice {z}" if src.is_stack else "image"
    ndim, n_px = len(src.spatial), math.prod(src.spatial)
    whole = (slice(None),) * (ndim - 1)
    if n_px <= PERCENTILE_MAX_PIXELS:
        data = src.read(z, slice(None), *whole)
        check_finite(data, where)
    else:
        ratio = n_px / PERCENTILE_MAX_PIXELS
        step = math.ceil(math.sqrt(ratio) if ndim == 2 else ratio ** (1.0 / ndim))
        plane = n_px // src.spatial[0]  # pixels per row (2D) or per z plane (3D)
        band = max(step, PERCENTILE_MAX_PIXELS // plane // step * step)  # rows per read
        parts = []
        for r0 in range(0, src.spatial[0], band):
            block = src.read(z, slice(r0, min(r0 + band, src.spatial[0])), *whole)
            check_finite(block, where)
            parts.append(block[(slice(None), *(slice(None, None, step),) * ndim)])
        data = np.concatenate(parts, axis=1)
    return intensity_range(data.astype(np.float32, copy=False), spec["low"], spec["high"], where)


def _normalizer(
    src: SliceSource, model: TrainedModel
) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    """What the tile engine calls for a slice's ``(offset, scale)``."""
    return lambda z: _slice_normalization(src, z, model.normalization)


def _source(model: TrainedModel, image: Any, channel_axis: int | None, rgb: bool) -> SliceSource:
    """The image as the model reads it (2D slices, or one volume for a 3D model), checked."""
    if not isinstance(model, TrainedModel):
        raise ValueError(f"model must be a TrainedModel, got {type(model).__name__}")
    src = SliceSource(image, channel_axis, rgb, model.config.spatial_dims)
    _check_model(model, src)
    return src


def _check_model(model: TrainedModel, src: SliceSource) -> UNetConfig:
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
    runtime: str = "auto",
) -> np.ndarray:
    """Foreground probability of one 2D image (or volume) by one pass over the whole image.

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
        ``rgb``; for a 3D model one volume ``(Z, Y, X)`` (or with a channel axis).
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
    runtime : {'auto', 'torch', 'onnxruntime', 'openvino'}
        ``'auto'``: an exported graph in OpenVINO on the CPU, torch elsewhere; torch when
        export fails (see :mod:`~napari_unet.core.inference.runtimes`).

    Returns
    -------
    numpy.ndarray
        float32 ``(Y, X)`` (``(Z, Y, X)`` for a 3D model); ``(K, Y, X)`` class probabilities
        for a model of the classes mode.
    """
    src = _source(model, np.asarray(image), channel_axis, rgb)
    config = model.config
    if src.n != 1:
        raise ValueError(
            f"predict_whole takes one 2D image, got {src.n} slices ({src.description})"
        )
    x = normalize_image(src.read(0, *(slice(None),) * len(src.spatial)), model.normalization)
    halos = config.halos
    size = config.admissible_shape(
        tuple(n + 2 * h for n, h in zip(src.spatial, halos, strict=True))
    )
    pad = [(0, 0)] + [(h, s - n - h) for n, h, s in zip(src.spatial, halos, size, strict=True)]
    x = np.pad(x, pad, mode="reflect")
    dev = select_device(device)
    run = make_runner(model, dev, tta, precision, runtime)
    with torch.inference_mode(), cudnn_benchmark(dev):
        prob = run(torch.from_numpy(x)[None].to(dev))[0]
    run.release_memory()
    crop = halos if config.padding == "same" else (0,) * len(halos)
    crop = tuple(c - t for c, t in zip(crop, run.trim or (0,) * len(crop), strict=True))
    box = tuple(slice(c, c + n) for c, n in zip(crop, src.spatial, strict=True))
    return prob[(..., *box)].cpu().numpy()


def prediction_plan(
    model: TrainedModel,
    image: Any,
    *,
    tile: int | tuple[int, int] | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    channel_axis: int | None = None,
    rgb: bool = False,
) -> Plan:
    """The tile shape, batch size and layout :func:`predict_probabilities` would use.

    Parameters
    ----------
    model, image
        As for :func:`predict_probabilities`.
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
    precision : {'auto', 'float32', 'bfloat16'}
        ``'auto'``: bfloat16 autocast on CUDA, float32 elsewhere.
    channel_axis : int, optional
        Axis of the channels, if the image has one.
    rgb : bool
        The last axis holds RGB(A) channels (a napari ``rgb`` layer).

    Returns
    -------
    Plan
        The plan. Pass ``plan.tile`` and ``plan.batch_size`` on to run the same tiling
        elsewhere (e.g. on the workers of a cluster).
    """
    return _source_plan(model, image, (channel_axis, rgb, tile, batch_size, device), precision)[2]


def _source_plan(
    model: TrainedModel, image: Any, layout: tuple[Any, ...], precision: str
) -> tuple[SliceSource, torch.device, Plan]:
    """The checked source, the device and the plan; ``layout`` is ``(channel_axis, rgb, tile,
    batch_size, device)`` as the public functions take them."""
    channel_axis, rgb, tile, batch_size, device = layout
    src = _source(model, image, channel_axis, rgb)
    dev = select_device(device)
    autocast = resolve_precision(precision, dev)
    return src, dev, make_plan(model.config, src, dev, tile, batch_size, autocast)


def _prepare(
    model: TrainedModel, image: Any, *args: Any
) -> tuple[SliceSource, Plan, NetworkRunner]:
    """:func:`_source_plan` and the network runner; ``args`` are ``(channel_axis, rgb, tile,
    batch_size, device, tta, precision, runtime)`` as the public functions take them."""
    *layout, tta, precision, runtime = args
    src, dev, plan = _source_plan(model, image, tuple(layout), precision)
    return src, plan, make_runner(model, dev, tta, precision, runtime)


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
    precision: str = "auto",
    tta: bool = False,
    out: Any = None,
    stop: threading.Event | None = None,
    runtime: str = "auto",
) -> Generator[Step, None, Any]:
    """Foreground probability of a 2D image or a stack by exact overlap-tile inference.

    A generator of progress that returns the result. The result equals one whole-image pass
    (:func:`predict_whole`) to float rounding, for any tile size, padding and image size.

    Parameters
    ----------
    model : TrainedModel
        The network (run in eval mode on a copy, never modified) and its normalisation.
    image : array-like
        numpy, dask or zarr array (read tile by tile; never loaded whole): ``(Y, X)``,
        ``(Z, Y, X)``, ``(C, Y, X)`` / ``(Z, C, Y, X)`` with ``channel_axis``, or
        ``(Y, X, 3)`` / ``(Z, Y, X, 3)`` with ``rgb``. Any real dtype; NaN is an error.
    channel_axis, rgb, tile, batch_size, device, precision
        The channel layout, the tiling and the device, as for :func:`prediction_plan`.
    tta : bool
        Test-time augmentation: the mean over the 8 flips and 90-degree rotations of each tile.
    out : array-like, optional
        numpy or zarr array of the result's shape, written tile by tile; default: new.
    stop : threading.Event, optional
        Checked between batches of tiles; when set, :class:`Cancelled` is raised (tiles already
        written to ``out`` stay written).
    runtime : {'auto', 'torch', 'onnxruntime', 'openvino'}
        ``'auto'``: an exported graph in OpenVINO on the CPU, torch elsewhere; torch when
        export fails (see :mod:`~napari_unet.core.inference.runtimes`).

    Yields
    ------
    Step
        ``Step(done, total, 'tiles')`` after each tile (counting starts again with a new total
        if the tile shrinks after running out of GPU memory).

    Returns
    -------
    array
        float32 foreground probability, ``(Y, X)`` for a 2D image, ``(Z, Y, X)`` for a stack;
        ``out`` when given. A classes model: every class's, ``(K, ...)`` (class 1 first).

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
    >>> prob = run_to_end(predict_probabilities(model, image, tile=64, device="cpu"))
    >>> prob.shape, bool(np.allclose(prob, predict_whole(model, image, device="cpu"), atol=1e-4))
    ((40, 30), True)
    """
    src, plan, runner = _prepare(
        model, image, channel_axis, rgb, tile, batch_size, device, tta, precision, runtime
    )
    out = _output(out, probability_shape(model, plan.shape), np.float32, "out")
    yield from _tile_events(
        TileEngine(model, src, plan, runner, _normalizer(src, model), stop=stop), src, out
    )
    return out


def probability_shape(model: TrainedModel, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the probabilities of an image of spatial ``shape`` (``(K, *shape)`` for classes).

    Parameters
    ----------
    model : TrainedModel
        The model.
    shape : tuple of int
        ``(Y, X)`` or ``(Z, Y, X)``.

    Returns
    -------
    tuple of int
        ``shape`` for a cells model; ``(K, *shape)`` for a model of the classes mode.
    """
    if model.mode == "classes":
        return (model.config.n_classes, *shape)
    return tuple(shape)


def _tile_events(engine: TileEngine, src: SliceSource, out: Any) -> Generator[Step, None, None]:
    """Run ``engine`` over every slice into ``out``, passing its tile events on."""
    classes = engine.runner.classes
    with closing(engine.run(range(src.n), _writer(out, src.is_stack, classes))) as events:
        for event in events:
            if event.stage == "tiles":
                yield event


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
    runtime: str = "auto",
) -> np.ndarray:
    """Foreground probability of a rectangle of one 2D slice, as the whole-slice run gives it.

    The tiles are laid out over the whole slice exactly as :func:`predict_probabilities` lays
    them out with the same ``tile``, and only those that reach the rectangle are computed, so
    that rectangles computed apart (e.g. as the chunks of a zarr array on the workers of a
    cluster) put together give the whole-slice result. A plain function (no progress).

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
        Input tile, as for :func:`prediction_plan` (required: the layout must be the same
        wherever the rectangles run).
    normalization : tuple of numpy.ndarray, optional
        ``(offset, scale)`` of the slice from :func:`slice_normalization`; computed here (from
        the whole slice) when not given.
    channel_axis, rgb, batch_size, device, tta, precision, runtime
        As for :func:`predict_probabilities`.

    Returns
    -------
    numpy.ndarray
        float32 ``(rows[1] - rows[0], cols[1] - cols[0])`` (with a leading class axis ``K``
        for a model of the classes mode).
    """
    src, plan, runner = _prepare(
        model, image, channel_axis, rgb, tile, batch_size, device, tta, precision, runtime
    )
    if model.config.spatial_dims != 2:
        raise ValueError("predict_region takes 2D models; run predict_probabilities for volumes")
    if not 0 <= z < src.n:
        raise ValueError(f"z must be in [0, {src.n}), got {z}")
    for name, (a, b), n in (("rows", rows, src.h), ("cols", cols, src.w)):
        if not 0 <= a < b <= n:
            raise ValueError(f"{name} must satisfy 0 <= start < stop <= {n}, got {(a, b)}")
    result = np.empty(probability_shape(model, (rows[1] - rows[0], cols[1] - cols[0])), np.float32)

    def write(_z: int, bounds: tuple[tuple[int, int], ...], data: np.ndarray) -> None:
        (ya, yb), (xa, xb) = bounds
        result[..., ya - rows[0] : yb - rows[0], xa - cols[0] : xb - cols[0]] = data

    norm = {int(z): normalization} if normalization is not None else None
    engine = TileEngine(
        model, src, plan, runner, _normalizer(src, model), norm=norm, rows=rows, cols=cols
    )
    run_to_end(engine.run([int(z)], write))
    return result


def segment(
    model: TrainedModel,
    image: Any,
    *,
    threshold: float | None = None,
    min_size: int | None = None,
    min_confidence: float | None = None,
    channel_axis: int | None = None,
    rgb: bool = False,
    tile: int | tuple[int, int] | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    tta: bool = False,
    stop: threading.Event | None = None,
    out: Any = None,
    probabilities_out: Any = None,
    precision: str = "auto",
    runtime: str = "auto",
) -> Generator[Step, None, Any]:
    """Instance labels (or class ids, for a model of the classes mode) of a 2D image or a stack.

    A generator: it yields progress and returns the labels (``run_to_end`` drains it).
    Foreground probability as :func:`predict_probabilities` computes it, then, slice by slice
    as each finishes, :func:`~napari_unet.core.inference.probabilities_to_labels`: threshold,
    instances grown from their confident cores, unsure objects dropped, instances grown back by
    the model's training gap (``model.gap``), small objects dropped. Labels are consecutive and
    unique across the whole stack. A classes model gives the class id ``1..K`` of every pixel
    instead (:func:`class_ids`).

    Parameters
    ----------
    model : TrainedModel
        The network, its normalisation and its gap.
    image : array-like
        As for :func:`predict_probabilities`.
    threshold, min_size, min_confidence : optional
        Foreground threshold, smallest object (pixels, after growing) and smallest peak
        probability of an object kept (:func:`probabilities_to_labels`). Default: the
        model's (chosen on its held-out annotations), else 0.5, 16 and 0.98.
    channel_axis, rgb, tile, batch_size, device, tta, stop, precision, runtime
        As for :func:`predict_probabilities`.
    out : array-like, optional
        numpy or zarr array for the labels, ``(Y, X)`` or ``(Z, Y, X)``, written one slice at
        a time. Default: a new int32 numpy array.
    probabilities_out : array-like, optional
        Also write the probabilities here, tile by tile (:func:`probability_shape`).

    Yields
    ------
    Step
        ``Step(done, total, 'tiles')`` after each tile, and ``Step(done, total, 'labels',
        item=SliceLabels(z, labels, probabilities))`` as each slice is labelled (for live
        display), ``done`` of ``total`` slices.

    Returns
    -------
    array
        int32 labels (0 = background; a classes model: uint8 ids), ``out`` when given.

    Raises
    ------
    ValueError, Cancelled, MemoryError
        As for :func:`predict_probabilities`.
    """
    src, plan, runner = _prepare(
        model, image, channel_axis, rgb, tile, batch_size, device, tta, precision, runtime
    )
    out = _output(out, plan.shape, np.uint8 if runner.classes else np.int32, "out")
    if probabilities_out is not None:
        _check_out(probabilities_out, probability_shape(model, plan.shape), "probabilities_out")
    labeller = model_labeller(model, threshold, min_size, min_confidence)
    slices = _SliceLabelling(src, labeller, out, probabilities_out, model)
    engine = TileEngine(model, src, plan, runner, _normalizer(src, model), stop=stop)
    with closing(engine.run(range(src.n), slices.write)) as events:
        for event in events:
            yield slices.label(event.item) if event.stage == "slice" else event
    return out


# ----------------------------------------------------------------------------------------------
# Steps shared by the entry points
# ----------------------------------------------------------------------------------------------


def _output(out: Any, shape: tuple[int, ...], dtype: type, what: str) -> Any:
    """``out`` checked against ``shape``, or a new array."""
    if out is None:
        return np.zeros(shape, dtype)
    _check_out(out, shape, what)
    return out


def _writer(out: Any, stack: bool, classes: bool = False) -> Callable[..., None]:
    """A tile writer into ``out`` (``(Z, Y, X)`` for a stack or a volume, else ``(Y, X)``;
    with ``classes`` a leading class axis: ``(K, Z, Y, X)`` or ``(K, Y, X)``)."""
    lead = (slice(None),) if classes else ()

    def write(z: int, bounds: tuple[tuple[int, int], ...], data: np.ndarray) -> None:
        index = tuple(slice(*b) for b in bounds)
        out[(*lead, z, *index) if stack else (*lead, *index)] = data

    return write


class _SliceLabelling:
    """The labelling side of :func:`segment`: tile outputs gathered into whole-slice probability
    maps (and copied to ``probabilities_out``), each finished slice labelled into ``out``."""

    def __init__(
        self,
        src: SliceSource,
        labeller: Callable[[np.ndarray], np.ndarray],
        out: Any,
        probabilities_out: Any,
        model: TrainedModel,
    ) -> None:
        self.shape = probability_shape(model, src.spatial)
        self.n, self.stack = src.n, src.is_stack
        self.labeller, self.out, self.labelled = labeller, out, 0
        self.buffers: dict[int, np.ndarray] = {}
        classes = model.mode == "classes"
        self.copy = (
            None if probabilities_out is None else _writer(probabilities_out, self.stack, classes)
        )

    def write(self, z: int, bounds: tuple[tuple[int, int], ...], data: np.ndarray) -> None:
        """Write a tile output into slice ``z``'s buffer."""
        buf = self.buffers.get(z)
        if buf is None:
            buf = self.buffers[z] = np.empty(self.shape, np.float32)
        buf[(..., *(slice(*b) for b in bounds))] = data
        if self.copy is not None:
            self.copy(z, bounds, data)

    def label(self, z: int) -> Step:
        """Label the finished slice ``z``, write it to ``out``; the 'labels' progress event."""
        prob = self.buffers.pop(z)
        labels = self.labeller(prob)
        self.out[z if self.stack else ...] = labels
        self.labelled += 1
        return Step(self.labelled, self.n, "labels", SliceLabels(z, labels, prob))
