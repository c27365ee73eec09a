"""Training data: (images, labels, regions) -> normalised 2D samples and patches.

:func:`prepare_samples` checks everything a user can get wrong before any heavy work (shapes,
dtypes, NaN/inf, annotations without a single cell, a constant image), splits label values
painted on several separate cells (:class:`~napari_unet.core.targets.SplitLabelsWarning`) and
turns each annotated 2D image into an :class:`AnnotatedImage`: the image normalised by its own
percentiles, target classes and loss weights from
:func:`napari_unet.core.targets.training_targets`. Slices of a stack without any annotation are
skipped. :class:`PatchSampler` draws batches of patches centred on annotated pixels, with enough
context around them for :func:`napari_unet.core.training.augment.augment_batch`;
:func:`annotation_min_size` learns the smallest object worth keeping from the annotated cells.

Small images are mirrored up to the patch size (the mirrored pixels carry no loss); only an
image with a side below :data:`MIN_SIDE` pixels is refused, as no cell fits in it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..model import UNetConfig
from ..normalize import as_nchw, check_finite, normalization_spec, normalize_image
from ..targets import (
    IGNORE,
    SplitLabelsWarning,
    TrainingTargets,
    check_class_labels,
    check_labels,
    check_region,
    class_targets,
    painted_classes,
    split_components,
    training_targets,
)
from .sampling import AnnotatedRuns, cut_window
from .store import SampleStore, default_store, prepared_bytes

__all__ = [
    "LAZY_BYTES",
    "MIN_SIDE",
    "RESIDENT_BYTES",
    "AnnotatedImage",
    "LazyLabels",
    "LazyRegion",
    "PatchSampler",
    "TargetSpec",
    "annotated_cell_areas",
    "annotation_min_size",
    "as_list",
    "class_count",
    "gap_axes",
    "pad2d",
    "patch_geometry",
    "patch_shape",
    "prepare_samples",
]

logger = logging.getLogger(__name__)

#: Images with a side shorter than this many pixels are refused (mirrored up otherwise).
MIN_SIDE = 8
#: Padded training data up to this size are kept on the training device; larger data are read
#: patch by patch from where they are (:class:`PatchSampler`).
RESIDENT_BYTES = 1 << 30
#: Label stacks not in memory and larger than this are read one slice at a time.
LAZY_BYTES = 64 << 20


@dataclass
class AnnotatedImage:
    """One annotated 2D image (or 3D volume), ready for training.

    A volume's arrays have a z axis before ``Y``: ``(C, Z, Y, X)`` and ``(Z, Y, X)``.

    Attributes
    ----------
    image : numpy.ndarray
        float32 ``(C, Y, X)``, normalised by its own percentiles.
    classes : numpy.ndarray
        uint8 ``(Y, X)`` target classes (background, foreground, ignore).
    weights : numpy.ndarray
        float32 ``(Y, X)`` loss weights, 0 where ignored.
    source : tuple of int
        ``(index of the input, slice index)`` it came from.
    labels : numpy.ndarray, optional
        int32 ``(Y, X)`` instance labels the targets were made from (each connected region its
        own label, see :func:`~napari_unet.core.targets.split_components`).
    region : numpy.ndarray, optional
        bool ``(Y, X)`` annotated area; ``None``: the whole image.
    split_cells : int
        How many cells were made by splitting label values painted on several regions.
    """

    image: np.ndarray
    classes: np.ndarray
    weights: np.ndarray
    source: tuple[int, int]
    labels: np.ndarray | None = None
    region: np.ndarray | None = None
    split_cells: int = 0

    @property
    def annotated(self) -> np.ndarray:
        """bool mask of the pixels that carry loss."""
        return self.weights > 0

    @property
    def n_annotated(self) -> int:
        """Number of pixels that carry loss."""
        return int(np.count_nonzero(self.weights > 0))


def as_list(value: Any, name: str) -> list[Any]:
    """A single array, or a sequence of arrays, as a list of arrays.

    Parameters
    ----------
    value : array or sequence of arrays
        What the caller gave.
    name : str
        Argument name for error messages.

    Returns
    -------
    list
        The arrays.
    """
    if value is None:
        raise ValueError(f"{name} must be an array or a sequence of arrays, got None")
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return [value]
    if isinstance(value, list | tuple):
        return list(value)
    raise ValueError(f"{name} must be an array or a sequence of arrays, got {type(value).__name__}")


def _spatial_labels(
    labels: Any, n: int, yx: tuple[int, int], i: int, mode: str = "cells"
) -> np.ndarray:
    """Labels of input ``i`` as ``(N, Y, X)``, checked against the image's layout."""
    name = f"labels[{i}]"
    check = check_class_labels if mode == "classes" else check_labels
    if _lazy(labels):
        arr: Any = LazyLabels(labels, check, name)
    else:
        arr = check(labels, name=name, ndim=None)
    given = arr.shape
    if arr.ndim == 2 and n == 1:
        arr = arr[None]
    expected = (n, *yx)
    if arr.shape != expected:
        want = f"{yx}" if n == 1 else f"{expected}"
        raise ValueError(
            f"{name} has shape {given}, expected the image's spatial shape {want}; "
            f"images[{i}] has {n} 2D image(s) of {yx} once laid out as (N, C, Y, X)"
        )
    return arr


def _lazy(array: Any) -> bool:
    """A stack not in memory (zarr, dask), worth reading slice by slice."""
    return (
        not isinstance(array, np.ndarray)
        and hasattr(array, "dtype")
        and len(getattr(array, "shape", ())) == 3
        and int(np.prod(array.shape)) * np.dtype(array.dtype).itemsize > LAZY_BYTES
    )


class LazyLabels:
    """A label stack read (and checked) one slice at a time.

    Parameters
    ----------
    array : array-like
        ``(Z, Y, X)`` labels (zarr, dask, ...).
    check : callable
        Checks one slice and returns it as numpy (e.g. :func:`~.targets.check_labels`).
    name : str
        The argument's name, for error messages.
    """

    def __init__(self, array: Any, check: Any, name: str) -> None:
        if not np.issubdtype(np.dtype(array.dtype), np.integer):
            check(np.zeros((1, 1), array.dtype), name=name, ndim=None)  # the dtype error
        self.array, self.check, self.name = array, check, name
        self.shape = tuple(int(n) for n in array.shape)
        self.ndim = 3
        self.dtype = np.dtype(array.dtype)

    def __getitem__(self, z: int) -> np.ndarray:
        return self.check(np.asarray(self.array[z]), name=f"{self.name} slice {z}", ndim=2)


class LazyRegion:
    """A region stack (annotated-area masks) read and checked one slice at a time.

    Parameters
    ----------
    array : array-like
        ``(Z, Y, X)`` masks (zarr, dask, ...), of the labels' shape.
    name : str
        The argument's name, for error messages.
    """

    def __init__(self, array: Any, name: str) -> None:
        self.array, self.name = array, name
        self.shape = tuple(int(n) for n in array.shape)
        self.ndim = 3

    def __getitem__(self, z: int) -> np.ndarray:
        mask = check_region(np.asarray(self.array[z]), self.shape[1:], f"{self.name} slice {z}")
        assert mask is not None
        return mask


def prepare_samples(
    images: Any,
    labels: Any,
    regions: Any = None,
    *,
    channel_axis: int | None = None,
    rgb: bool = False,
    normalization: dict[str, Any] | None = None,
    in_channels: int | None = None,
    targets: TargetSpec | None = None,
    store: SampleStore | None = None,
    spatial_dims: int = 2,
) -> list[AnnotatedImage]:
    """Check and prepare training data.

    Parameters
    ----------
    images : array or sequence of arrays
        2D ``(Y, X)``, multichannel (with ``channel_axis``), RGB (with ``rgb``) images, or
        stacks ``(Z, Y, X)`` of 2D images; any numeric dtype; numpy or dask.
    labels : array or sequence of arrays
        Integer instance labels of each image's spatial shape: ``(Y, X)`` or ``(Z, Y, X)``.
    regions : array, sequence of (array or None), or None
        Boolean masks of the annotated area, same shape as the labels; ``None`` means: the
        whole 2D image, and in a stack every slice that holds at least one label.
    channel_axis : int, optional
        Channel axis of the images (see :func:`napari_unet.core.normalize.as_nchw`).
    rgb : bool
        The images' last axis holds RGB(A).
    normalization : dict, optional
        From :func:`napari_unet.core.normalize.normalization_spec` (default percentiles 1, 99.8).
    in_channels : int, optional
        Number of channels the images must have (a model's input channels).
    targets : TargetSpec, optional
        How the targets are made (default ``TargetSpec()``: cells, the paper's weights). Its
        mode ``'classes'``: the labels are scribbles (0 = not painted, k = class k <= 255,
        targets by :func:`~napari_unet.core.targets.class_targets`) of ``targets.n_classes``
        classes (``None``: the largest value painted, :func:`class_count`); the samples'
        ``labels`` hold them. Its ``sampling``: the voxel size of volumes (distances of the
        border weights and the gap in 3D).
    store : SampleStore, optional
        Where the prepared samples are kept; default: in memory, or memory-mapped files in
        the temporary folder when they would take more than
        :data:`~napari_unet.core.training.store.STORE_BYTES`.
    spatial_dims : {2, 3}
        3: every image is one volume ``(Z, Y, X)`` (or with channels), normalised by its own
        percentiles, its targets made in 3D; without a region only its labelled slices count.

    Returns
    -------
    list of AnnotatedImage
        One per annotated 2D image (per annotated volume with ``spatial_dims=3``).

    Raises
    ------
    ValueError
        On mismatched numbers of images/labels/regions, mismatched shapes, non-integer labels,
        non-numeric images, NaN or infinity in an annotated image, channel counts that differ,
        an image side below :data:`MIN_SIDE`, or annotations without any foreground pixel.
    """
    targets = targets or TargetSpec()
    inputs = _check_inputs(images, labels, regions, channel_axis, rgb, in_channels, targets.mode)
    stack = {item.index: item.nchw.shape[0] > 1 for item in inputs}
    spec = normalization or normalization_spec()
    make = _with_classes(targets, inputs)
    if store is None:
        shapes = [item.nchw.shape[1:] for item in inputs for _ in item.used]
        store = default_store(prepared_bytes(shapes, any(it.region is not None for it in inputs)))
    reads = _read_volumes(inputs, make.mode) if spatial_dims == 3 else _read_slices(inputs)
    samples = _prepare_reads(reads, spec, stack, make, store)
    logger.info("prepared %d annotated %dD image(s)", len(samples), spatial_dims)
    return samples


def _prepare_reads(
    reads: Iterable[tuple[int, int, np.ndarray, np.ndarray, np.ndarray | None]],
    spec: dict[str, Any],
    stack: dict[int, bool],
    make: TargetSpec,
    store: SampleStore,
) -> list[AnnotatedImage]:
    """Normalise each read image, make its targets, keep it in ``store``; warn of splits."""
    samples, split_values, split_cells = [], 0, 0
    for i, z, data, lab, reg in reads:
        image = normalize_image(data, spec, f"images[{i}]" + (f" slice {z}" if stack[i] else ""))
        sample, values = _annotated(image, lab, reg, (i, z), make)
        split_values, split_cells = split_values + values, split_cells + sample.split_cells
        samples.append(store.keep(sample))
    _warn_split(split_values, split_cells)
    return samples


def _annotated(
    image: np.ndarray,
    lab: np.ndarray,
    reg: np.ndarray | None,
    source: tuple[int, int],
    make: TargetSpec,
) -> tuple[AnnotatedImage, int]:
    """One sample: instance labels split into connected cells (cells mode), targets made; the
    sample and the number of label values split."""
    lab, values, cells = split_components(lab) if make.mode == "cells" else (lab, 0, 0)
    if lab.ndim == 3 and values:  # a cell painted on several slices is one cell: warn
        values, cells = _split_in_slices(lab if reg is None else np.where(reg, lab, 0))
    targets = make.targets(lab, reg)
    return AnnotatedImage(image, targets.classes, targets.weights, source, lab, reg, cells), values


def _warn_split(values: int, cells: int) -> None:
    """Log and warn (:class:`SplitLabelsWarning`) when label values were split into cells."""
    if values:
        warning = SplitLabelsWarning(values, cells)
        logger.warning("%s", warning)
        warnings.warn(warning, stacklevel=4)


def _with_classes(targets: TargetSpec, inputs: list[_Input]) -> TargetSpec:
    """``targets`` with its number of classes: in the classes mode the classes painted,
    checked against ``targets.n_classes`` (:func:`class_count`); 2 otherwise."""
    if targets.mode == "classes":
        return replace(targets, n_classes=class_count(_painted(inputs), targets.n_classes))
    return replace(targets, n_classes=targets.n_classes or 2)


def _split_in_slices(labels: np.ndarray) -> tuple[int, int]:
    """Label values painted on several separate cells within one slice of a volume (a cell
    annotated on several slices is one cell, not a split one): ``(values, cells)``."""
    values = cells = 0
    for plane in labels:
        _, v, c = split_components(plane)
        values, cells = values + v, cells + c
    return values, cells


def _painted(inputs: list[_Input]) -> np.ndarray:
    """The class values painted in the used slices (inside their regions)."""
    parts = []
    for item in inputs:
        for z in item.used:
            lab = item.labels[z]
            parts.append(lab if item.region is None else lab[item.region[z]])
    return painted_classes(parts)


def class_count(painted: np.ndarray, n_classes: int | None = None) -> int:
    """The number of classes of a classes-mode run, checked against what was painted.

    Parameters
    ----------
    painted : numpy.ndarray
        The distinct class values painted (:func:`~napari_unet.core.targets.painted_classes`).
    n_classes : int, optional
        The classes of the model fine-tuned, if any.

    Returns
    -------
    int
        ``n_classes``, else the largest value painted.

    Raises
    ------
    ValueError
        If fewer than two classes are painted, or a value above ``n_classes``.

    Examples
    --------
    >>> class_count(np.array([1, 3]))
    3
    """
    if painted.size < 2:
        found = "no class" if painted.size == 0 else f"one class only (value {int(painted[0])})"
        raise ValueError(
            f"the scribbles hold {found}; paint at least two classes, each with its own "
            "label value (e.g. 1 = background, 2 = cells; 0 = not painted)"
        )
    top = int(painted.max())
    if n_classes is not None and top > n_classes:
        raise ValueError(
            f"the scribbles hold class {top} but the model fine-tuned has {n_classes} classes"
        )
    return int(n_classes) if n_classes is not None else top


@dataclass(frozen=True)
class TargetSpec:
    """How training targets are made from labels (:func:`~.targets.training_targets`).

    Attributes
    ----------
    gap : int
        Gap cut between touching cells.
    w0, sigma : float
        Border weight height and width.
    class_balance, border_weights : bool
        Balance the classes; add the border term.
    mode : {'cells', 'classes'}
        ``'classes'``: the labels are scribbles (:func:`~.targets.class_targets`).
    n_classes : int, optional
        Number of classes (classes mode); ``None``: :func:`prepare_samples` takes the largest
        value painted.
    sampling : tuple of float, optional
        Voxel size of 3D labels (distances of the border weights and the gap per axis).

    Raises
    ------
    ValueError
        If ``mode`` is neither ``'cells'`` nor ``'classes'``.
    """

    gap: int = 1
    w0: float = 10.0
    sigma: float = 5.0
    class_balance: bool = True
    border_weights: bool = True
    mode: str = "cells"
    n_classes: int | None = None
    sampling: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("cells", "classes"):
            raise ValueError(f"mode must be 'cells' or 'classes', got {self.mode!r}")

    def targets(self, labels: np.ndarray, region: np.ndarray | None) -> TrainingTargets:
        """Classes and weights of ``labels`` inside ``region``."""
        if self.mode == "classes":
            if self.n_classes is None:
                raise ValueError("TargetSpec.n_classes is needed to make classes-mode targets")
            return class_targets(
                labels, self.n_classes, region=region, class_balance=self.class_balance
            )
        return training_targets(
            labels,
            region=region,
            gap=self.gap,
            w0=self.w0,
            sigma=self.sigma,
            class_balance=self.class_balance,
            border_weights=self.border_weights,
            sampling=self.sampling if labels.ndim == 3 else None,
        )


@dataclass
class _Input:
    """One checked input, not read yet: its layout, labels, region and annotated slices."""

    index: int
    nchw: Any
    labels: np.ndarray
    region: np.ndarray | None
    used: list[int]


def _aligned_lists(images: Any, labels: Any, regions: Any) -> list[tuple[Any, Any, Any]]:
    """``(image, labels, region)`` per input, their numbers checked."""
    image_list = as_list(images, "images")
    label_list = as_list(labels, "labels")
    if not image_list:
        raise ValueError("images must hold at least one image, got an empty sequence")
    if len(label_list) != len(image_list):
        raise ValueError(
            f"labels must hold one label image per image: got {len(image_list)} image(s) and "
            f"{len(label_list)} label image(s)"
        )
    if regions is None:
        region_list: list[Any] = [None] * len(image_list)
    elif hasattr(regions, "shape"):
        region_list = [regions]
    else:
        region_list = list(regions)
    if len(region_list) != len(image_list):
        raise ValueError(
            f"regions must hold one mask (or None) per image: got {len(image_list)} image(s) and "
            f"{len(region_list)} region(s)"
        )
    return list(zip(image_list, label_list, region_list, strict=True))


def _check_inputs(
    images: Any,
    labels: Any,
    regions: Any,
    channel_axis: int | None,
    rgb: bool,
    in_channels: int | None,
    mode: str = "cells",
) -> list[_Input]:
    """Cheap checks of every input (nothing heavy is read); the annotated ones."""
    inputs: list[_Input] = []
    channels = in_channels
    n_fg = 0
    for i, (img, lab, reg) in enumerate(_aligned_lists(images, labels, regions)):
        nchw = _layout(img, i, channel_axis, rgb)
        n, c, y, x = nchw.shape
        if channels is None:
            channels = c
        elif c != channels:
            what = "the model expects" if in_channels is not None else "images[0] has"
            raise ValueError(
                f"images[{i}] has {c} channel(s) but {what} {channels}; all images must have "
                "the same channels"
            )
        lab3 = _spatial_labels(lab, n, (y, x), i, mode)
        reg3 = None
        if reg is not None:
            if _lazy(reg) and tuple(reg.shape) == tuple(lab3.shape):
                reg3 = LazyRegion(reg, f"regions[{i}]")
            else:
                reg3 = check_region(
                    reg[None] if np.ndim(reg) == 2 and n == 1 else reg,
                    lab3.shape,
                    f"regions[{i}]",
                )
        used = [z for z in range(n) if (reg3[z] if reg3 is not None else lab3[z]).any()]
        if not used:
            continue
        if min(y, x) < MIN_SIDE:
            raise ValueError(
                f"images[{i}] is {y} x {x} pixels; training needs images of at least "
                f"{MIN_SIDE} x {MIN_SIDE} pixels (smaller ones are mirrored up to the patch size)"
            )
        for z in used:
            fg = lab3[z] > 0 if reg3 is None else (lab3[z] > 0) & reg3[z]
            n_fg += int(np.count_nonzero(fg))
        inputs.append(_Input(i, nchw, lab3, reg3, used))
    if not inputs or n_fg == 0:
        raise ValueError(
            "labels hold no annotated cell: paint at least one cell (label > 0) inside the "
            "annotated region before training"
        )
    return inputs


def _layout(img: Any, i: int, channel_axis: int | None, rgb: bool) -> Any:
    """Image ``i`` as ``(N, C, Y, X)``, its dtype checked (numeric, not complex)."""
    if not hasattr(img, "shape") or not hasattr(img, "dtype"):
        img = np.asarray(img)
    dtype = np.dtype(img.dtype)
    numeric = np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)
    if not numeric or np.issubdtype(dtype, np.complexfloating):
        raise ValueError(f"images[{i}] must be numeric, got dtype {dtype}")
    try:
        return as_nchw(img, channel_axis=channel_axis, rgb=rgb)
    except ValueError as exc:
        raise ValueError(f"images[{i}]: {exc}") from exc


def _read_slices(
    inputs: list[_Input],
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray | None]]:
    """Read the annotated 2D images (checked for NaN/inf) with their labels and regions.

    One at a time: images larger than memory are prepared slice by slice.
    """
    for item in inputs:
        for z in item.used:
            data = np.asarray(item.nchw[z])
            stack = item.nchw.shape[0] > 1
            check_finite(data, name=f"images[{item.index}]" + (f" slice {z}" if stack else ""))
            region = None if item.region is None else item.region[z]
            yield item.index, z, data, np.asarray(item.labels[z]), region


def _read_volumes(
    inputs: list[_Input], mode: str
) -> list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
    """Read each annotated input as one volume ``(C, Z, Y, X)`` with its labels and region
    (without a region: its labelled slices)."""
    if mode != "cells":
        raise ValueError("3D training takes cell annotations (mode 'cells'); got mode " + mode)
    reads = []
    for item in inputs:
        if item.nchw.shape[0] < 2:
            raise ValueError(
                f"images[{item.index}] is a 2D image; 3D training needs volumes (Z, Y, X) "
                "(train a 2D model for 2D images)"
            )
        data = np.moveaxis(np.asarray(item.nchw), 1, 0)
        check_finite(data, name=f"images[{item.index}]")
        region = item.region
        if region is None:
            region = np.zeros(item.labels.shape, bool)
            region[item.used] = True  # only the labelled slices count
        reads.append((item.index, 0, data, np.asarray(item.labels), region))
    return reads


def pad2d(array: np.ndarray, pad: Any, mode: str, spatial: int = 2, **kwargs: Any) -> np.ndarray:
    """:func:`numpy.pad` that also mirrors arrays of one pixel (``'reflect'`` needs two).

    Parameters
    ----------
    array : numpy.ndarray
        The array; its last ``spatial`` axes are the spatial ones.
    pad : sequence
        Pad widths, as for :func:`numpy.pad`.
    mode : str
        As for :func:`numpy.pad`.
    spatial : int
        Number of spatial axes (3 for a volume).
    **kwargs
        Passed to :func:`numpy.pad`.

    Returns
    -------
    numpy.ndarray
        The padded array.
    """
    if mode == "reflect" and min(array.shape[-spatial:]) < 2:
        mode = "symmetric"
    return np.pad(array, pad, mode=mode, **kwargs)


# --------------------------------------------------------------------------------------------
# Patch sampling
# --------------------------------------------------------------------------------------------


class PatchSampler:
    """Draw batches of patches centred on annotated pixels.

    The annotated positions are kept as row runs (:class:`~.sampling.AnnotatedRuns`), not one
    index per pixel. Small data are padded once (image mirrored, targets ignored, weights 0) and
    moved to the training device, where a batch costs a few tensor slices; data larger than
    :data:`RESIDENT_BYTES` (or ``stream=True``) stay where they are (memory or disk) and each
    patch is read as it is drawn (:func:`~.sampling.cut_window`), only the batch moving to the
    device. Both give the same patches. Volumes (3D samples) give 3D patches, their annotated
    voxels kept as flat indices and the padded volumes kept on the device.

    Parameters
    ----------
    samples : sequence of AnnotatedImage
        The training data (all 2D, or all volumes).
    size : int or tuple of int
        Edge of the patches returned (the network input plus the augmentation's margin); for
        volumes one edge per axis.
    device : torch.device or str
        Where patches are returned (and small data kept).
    rng : numpy.random.Generator
        Source of randomness for the patch positions.
    stream : bool, optional
        Read patches from the samples as drawn; ``None``: when the padded data would take
        more than :data:`RESIDENT_BYTES`.

    Examples
    --------
    >>> s = AnnotatedImage(np.zeros((1, 20, 20), np.float32), np.zeros((20, 20), np.uint8),
    ...                    np.ones((20, 20), np.float32), (0, 0))
    >>> x, y, w = PatchSampler([s], 32, "cpu", np.random.default_rng(0)).sample(2)
    >>> tuple(x.shape), tuple(y.shape), tuple(w.shape)
    ((2, 1, 32, 32), (2, 32, 32), (2, 32, 32))
    """

    def __init__(
        self,
        samples: Sequence[AnnotatedImage],
        size: int | tuple[int, ...],
        device: torch.device | str,
        rng: np.random.Generator,
        stream: bool | None = None,
    ) -> None:
        if not samples:
            raise ValueError("samples must hold at least one annotated image")
        ndim = samples[0].weights.ndim
        self.sizes = (int(size),) * ndim if np.isscalar(size) else tuple(int(n) for n in size)
        self.size = self.sizes[-1]
        self.device = torch.device(device)
        self.rng = rng
        self._pad = self.size // 2 + 1
        self._pads = tuple(n // 2 + 1 for n in self.sizes)
        self.samples = list(samples)
        if ndim == 3:  # volumes: flat indices of the annotated voxels, data on the device
            self._where = [np.flatnonzero(np.asarray(s.weights) > 0) for s in self.samples]
            counts = [where.size for where in self._where]
            stream = False
        else:
            self._where = None
            self._runs = [AnnotatedRuns(s.weights > 0) for s in self.samples]
            counts = [runs.count for runs in self._runs]
        total = float(sum(counts))
        if total == 0:
            raise ValueError("samples hold no annotated pixel to centre patches on")
        self._p = np.asarray(counts, dtype=np.float64) / total
        if stream is None:
            p2 = 2 * self._pad
            padded = sum(
                (s.image.shape[0] * 4 + 5) * (s.weights.shape[0] + p2) * (s.weights.shape[1] + p2)
                for s in self.samples
            )
            stream = padded > RESIDENT_BYTES
        self.stream = bool(stream)
        self._images, self._classes, self._weights = [], [], []
        if not self.stream:
            for s in self.samples:
                self._resident(s)

    def _resident(self, s: AnnotatedImage) -> None:
        """Pad a sample once and keep it on the device."""
        pad2 = tuple((p, p) for p in self._pads)
        image = pad2d(np.asarray(s.image), ((0, 0), *pad2), "reflect", spatial=len(pad2))
        self._images.append(torch.from_numpy(image).to(self.device))
        classes = np.pad(np.asarray(s.classes), pad2, mode="constant", constant_values=IGNORE)
        self._classes.append(torch.from_numpy(classes).to(self.device))
        weights = np.pad(np.asarray(s.weights), pad2, mode="constant")
        self._weights.append(torch.from_numpy(weights).to(self.device))

    def centres(self, n: int) -> list[tuple[int, ...]]:
        """``n`` random ``(sample, y, x)`` (``(sample, z, y, x)``) annotated pixels, samples
        weighted by their size."""
        ks = self.rng.choice(len(self._p), size=n, p=self._p)
        out: list[tuple[int, ...]] = []
        for k in ks:
            if self._where is not None:
                flat = int(self._where[k][self.rng.integers(self._where[k].size)])
                at = np.unravel_index(flat, self.samples[k].weights.shape)
                out.append((int(k), *(int(i) for i in at)))
                continue
            runs = self._runs[k]
            y, x = runs.position(int(self.rng.integers(runs.count)))
            out.append((int(k), y, x))
        return out

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cut a batch of ``n`` patches.

        Returns
        -------
        images : torch.Tensor
            float32 ``(n, C, size, size)``.
        classes : torch.Tensor
            uint8 ``(n, size, size)``.
        weights : torch.Tensor
            float32 ``(n, size, size)``.
        """
        if self.stream:
            return self._read(self.centres(n))
        xs, ys, ws = [], [], []
        for k, *centre in self.centres(n):
            # the centre in the unpadded sample -> the patch's corner in the padded one
            sl = tuple(
                slice(c + p - m // 2, c + p - m // 2 + m)
                for c, p, m in zip(centre, self._pads, self.sizes, strict=True)
            )
            xs.append(self._images[k][(slice(None), *sl)])
            ys.append(self._classes[k][sl])
            ws.append(self._weights[k][sl])
        return torch.stack(xs), torch.stack(ys), torch.stack(ws)

    def _read(
        self, centres: list[tuple[int, int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Read the patches around ``centres`` from the samples; the batch to the device."""
        half, size = self.size // 2, self.size
        xs, ys, ws = [], [], []
        for k, cy, cx in centres:
            s, y0, x0 = self.samples[k], cy - half, cx - half
            xs.append(cut_window(s.image, y0, x0, size, pad=self._pad))
            ys.append(cut_window(s.classes, y0, x0, size, fill=IGNORE))
            ws.append(cut_window(s.weights, y0, x0, size, fill=0))
        batch = (np.stack(xs), np.stack(ys), np.stack(ws))
        x, y, w = (torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in batch)
        return x, y, w


def patch_geometry(config: UNetConfig, patch_size: int, context: int = 0) -> tuple[int, int]:
    """Network input and loss-area edge for a training patch of ``patch_size`` output pixels.

    Parameters
    ----------
    config : UNetConfig
        The network.
    patch_size : int
        Requested edge of the area the loss is computed on.
    context : int
        With same padding, pixels of image around the loss area in the network's input, so
        that the pixels that carry loss see image (or its mirror) rather than the network's
        zero padding. Valid convolutions always read their full context; ignored there.

    Returns
    -------
    in_size, out_size : int
        The network's input edge and the edge of the area the loss is computed on (the centre
        of the network's output). Valid padding: the smallest admissible input whose output is
        at least ``patch_size``, and that output. Same padding: ``patch_size + 2 * context``
        rounded up to a multiple of ``2**depth``, and that minus ``2 * context``.

    Examples
    --------
    >>> from napari_unet.core.model import preset_config
    >>> patch_geometry(preset_config("paper"), 388)
    (572, 388)
    >>> patch_geometry(preset_config("fast"), 100)
    (104, 104)
    >>> patch_geometry(preset_config("fast"), 128, context=32)
    (192, 128)
    """
    if isinstance(patch_size, bool) or not isinstance(patch_size, int | np.integer):
        raise ValueError(f"patch_size must be an integer number of pixels, got {patch_size!r}")
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    if isinstance(context, bool) or not isinstance(context, int | np.integer) or context < 0:
        raise ValueError(f"context must be an integer >= 0 pixels, got {context!r}")
    if config.padding == "same":
        n_in = config.admissible_size(int(patch_size) + 2 * int(context))
        return n_in, n_in - 2 * int(context)
    n_in = config.input_size_for_output(int(patch_size))
    return n_in, config.output_size(n_in)


def patch_shape(
    config: UNetConfig,
    patch_size: int,
    context: int = 0,
    limit: tuple[int, ...] | None = None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """:func:`patch_geometry` per spatial axis, for 2D and 3D networks.

    Along an axis ``k`` times coarser than the finest (``config.voxel_size``) the patch and its
    context are ``k`` times fewer voxels, so that a 3D patch is about a cube in physical units.

    Parameters
    ----------
    config : UNetConfig
        The network.
    patch_size : int
        Requested in-plane edge of the area the loss is computed on.
    context : int
        In-plane context (same padding), at most the halo along each axis.
    limit : tuple of int, optional
        The largest image extent per axis: no patch axis grows beyond what covers it.

    Returns
    -------
    in_shape, out_shape : tuple of int
        The network's input and the loss area, per axis.

    Examples
    --------
    >>> from napari_unet.core.model import preset_config
    >>> patch_shape(preset_config("fast", spatial_dims=3, voxel_size=(4, 1, 1)), 64, 16)
    ((24, 96, 96), (16, 64, 64))
    """
    spacing = config.spacing
    in_shape, out_shape = [], []
    for axis, s in enumerate(spacing):
        ratio = min(spacing) / s
        patch = max(1, round(int(patch_size) * ratio))
        if limit is not None:
            patch = min(patch, config.admissible_size(int(limit[axis]), axis))
        ctx = min(round(int(context) * ratio), config.axis_halo(axis))
        if config.padding == "same":
            n_in = config.admissible_size(patch + 2 * ctx, axis)
            in_shape.append(n_in)
            out_shape.append(n_in - 2 * ctx)
        else:
            n_in = config.input_size_for_output(patch, axis)
            in_shape.append(n_in)
            out_shape.append(config.output_size(n_in, axis))
    return tuple(in_shape), tuple(out_shape)


def gap_axes(samples: Sequence[AnnotatedImage]) -> tuple[int, ...]:
    """The axes along which the targets of volumes had their gap cut.

    The gap between touching cells is cut where an annotated voxel has another cell within the
    gap, along any axis; along z only where a voxel and its neighbour in the next slice are both
    annotated. Volumes annotated on separate slices (every third, say) get their gap cut
    in-plane only, and inference grows it back in-plane only
    (:func:`~napari_unet.core.targets.grow_instances` ``axes=``).

    Parameters
    ----------
    samples : sequence of AnnotatedImage
        Volumes from :func:`prepare_samples`.

    Returns
    -------
    tuple of int
        ``(0, 1, 2)`` when some annotated voxel has an annotated neighbour along z, else
        ``(1, 2)``.

    Examples
    --------
    >>> region = np.zeros((6, 4, 4), bool)
    >>> region[::3] = True  # slices 0 and 3
    >>> s = AnnotatedImage(np.zeros((1, 6, 4, 4), np.float32), np.zeros((6, 4, 4), np.uint8),
    ...                    region.astype(np.float32), (0, 0), region=region)
    >>> gap_axes([s])
    (1, 2)
    """
    for s in samples:
        region = s.region if s.region is not None else np.ones(s.weights.shape, bool)
        if np.any(region[1:] & region[:-1]):
            return (0, 1, 2)
    return (1, 2)


def annotated_cell_areas(samples: Sequence[AnnotatedImage]) -> np.ndarray:
    """Areas in pixels of the completely annotated cells.

    A cell counts when all its pixels lie inside the annotated region (a cell cut by the
    region's edge is only partly annotated). Cells cut by the image's edge count: inference
    meets them too, and they are among the smallest objects it must keep.

    Parameters
    ----------
    samples : sequence of AnnotatedImage
        Samples from :func:`prepare_samples` (with their labels).

    Returns
    -------
    numpy.ndarray
        int64 areas, one per cell, in no particular order.
    """
    areas = []
    for s in samples:
        if s.labels is None or not s.labels.any():
            continue
        labels = s.labels
        sizes = np.bincount(labels.ravel())
        cut = np.zeros(sizes.size, bool)
        if s.region is not None:
            cut[labels[~s.region]] = True
        cut[0] = True
        areas.append(sizes[(sizes > 0) & ~cut])
    return np.concatenate(areas) if areas else np.zeros(0, np.int64)


def annotation_min_size(
    samples: Sequence[AnnotatedImage], fraction: float = 0.25, percentile: float = 5.0
) -> int | None:
    """Smallest object worth keeping, learnt from the annotated cells.

    Parameters
    ----------
    samples : sequence of AnnotatedImage
        Samples from :func:`prepare_samples`.
    fraction : float
        Share of the small cells' area (0 learns nothing).
    percentile : float
        Which cell area stands for "small": this percentile of the completely annotated cells
        (:func:`annotated_cell_areas`; all cells when none is complete), robust to a stray
        fragment.

    Returns
    -------
    int or None
        ``max(1, round(fraction * area))`` pixels; ``None`` when ``fraction`` is 0 or there is
        no cell.

    Examples
    --------
    >>> lab = np.zeros((40, 40), np.int32)
    >>> lab[5:15, 5:15], lab[20:24, 20:24] = 1, 2  # 100 and 16 pixels
    >>> s = AnnotatedImage(np.zeros((1, 40, 40), np.float32), lab > 0, np.ones((40, 40)),
    ...                    (0, 0), labels=lab)
    >>> annotation_min_size([s], fraction=0.25, percentile=0)
    4
    """
    if not fraction > 0:
        return None
    areas = annotated_cell_areas(samples)
    if areas.size == 0:
        areas = np.concatenate(
            [np.bincount(s.labels.ravel())[1:] for s in samples if s.labels is not None]
            or [np.zeros(0, np.int64)]
        )
        areas = areas[areas > 0]
    if areas.size == 0:
        return None
    return max(1, round(fraction * float(np.percentile(areas, percentile))))
