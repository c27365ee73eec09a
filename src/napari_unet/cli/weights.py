"""``napari-unet weights``: compute the U-Net border-weight map of a label image, to a file.

A 2D label image gives a 2D map; a ``(Z, Y, X)`` stack is weighted slice by slice (each slice is
an independent 2D image, see :func:`napari_unet.core.targets.border_weight_stack`), or as one
volume with ``--ndim 3`` (distances in 3D, measured in the voxel size ``--scale Z Y X``, by
default the pixel size an OME-Zarr file states). The
map is that of the labels as given: no gap is cut (training cuts it before weighting).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from napari_unet.cli.options import (
    add_dataclass_options,
    add_output,
    add_volume,
    check_output_path,
    given_fields,
    volume_sampling,
)

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "check_label_shape", "file_voxel_size", "run"]

logger = logging.getLogger(__name__)

_WRITABLE = (".tif", ".tiff", ".npy")


#: the line in ``napari-unet --help``
HELP = "compute the U-Net border-weight map of a label image"
DESCRIPTION = (
    "Compute the border-weight map of Ronneberger et al. (2015, eq. 2), "
    "w = w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2)), of an integer label image "
    "(0 = background, k > 0 = cell k) and write it as float32. A (Z, Y, X) stack is "
    "weighted slice by slice, or as one volume with --ndim 3 (voxel size --scale Z Y X)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``weights`` arguments; ``--w0``, ``--sigma`` as in training."""
    from napari_unet.core.training import TrainSettings

    parser.add_argument(
        "labels", type=Path, metavar="LABELS", help="label image (.tif, .png, .npy, .zarr)"
    )
    add_output(
        parser,
        metavar="WEIGHTS",
        help="where to write the float32 weight map (.tif, .tiff or .npy)",
    )
    add_dataclass_options(parser, TrainSettings, only=("w0", "sigma", "class_balance"))
    add_volume(parser, what="each weighted on its own")


def check_label_shape(shape: tuple[int, ...], name: str) -> None:
    """Refuse shapes that are not one integer per pixel of a 2D image or a stack.

    A colour image ``(Y, X, 3)`` or ``(Y, X, 4)`` (an RGB(A) PNG, e.g. a screenshot or a label
    image saved with a colour map) would otherwise be weighted as a stack of 3 or 4 slices.

    Parameters
    ----------
    shape : tuple of int
        The label image's shape.
    name : str
        What to call it in messages.

    Raises
    ------
    ValueError
        If the image is not 2D or 3D, or looks like a colour image.

    Examples
    --------
    >>> check_label_shape((3, 64, 64), "labels")  # a stack of 3 slices
    >>> check_label_shape((64, 64, 3), "labels")
    Traceback (most recent call last):
    ...
    ValueError: labels has shape (64, 64, 3), a colour (RGB) image: labels must be one integer \
per pixel (0 = background, k > 0 = cell k), 2D (Y, X) or a (Z, Y, X) stack; save the labels as a \
single-channel integer image (e.g. a TIFF of a napari Labels layer)
    """
    if len(shape) not in (2, 3):
        raise ValueError(
            f"{name} must be 2D (Y, X) or a 3D (Z, Y, X) stack, got {len(shape)}D with shape "
            f"{tuple(shape)}"
        )
    if len(shape) == 3 and shape[-1] in (3, 4) and min(shape[:2]) > shape[-1]:
        kind = "RGB" if shape[-1] == 3 else "RGBA"
        raise ValueError(
            f"{name} has shape {tuple(shape)}, a colour ({kind}) image: labels must be one "
            "integer per pixel (0 = background, k > 0 = cell k), 2D (Y, X) or a (Z, Y, X) "
            "stack; save the labels as a single-channel integer image (e.g. a TIFF of a "
            "napari Labels layer)"
        )


def file_voxel_size(pixel_size: dict[str, float]) -> tuple[float, float, float] | None:
    """The ``(z, y, x)`` voxel size an image file states (OME-Zarr), None when it does not.

    Parameters
    ----------
    pixel_size : dict of str to float
        Physical size per space axis, as :class:`napari_unet.cli.files.ImageFile` holds it.

    Returns
    -------
    tuple of float or None
        The spacings of ``z``, ``y`` and ``x`` when all three are stated.

    Examples
    --------
    >>> file_voxel_size({"z": 2.0, "y": 0.5, "x": 0.5})
    (2.0, 0.5, 0.5)
    >>> file_voxel_size({"y": 0.5, "x": 0.5}) is None
    True
    """
    if not all(axis in pixel_size for axis in "zyx"):
        return None
    return float(pixel_size["z"]), float(pixel_size["y"]), float(pixel_size["x"])


def run(args: argparse.Namespace) -> int:
    """Compute and write the weight map.

    Parameters
    ----------
    args : argparse.Namespace
        The labels file, ``--out``, ``--w0`` / ``--sigma`` / ``--class-balance``, and
        ``--ndim`` / ``--scale`` for a volume.

    Returns
    -------
    int
        0 on success.

    Raises
    ------
    ValueError, UsageError, FileNotFoundError
        On unreadable or unsuitable input, or an unwritable output path.
    """
    from napari_unet.cli.files import open_image, write_image
    from napari_unet.core.targets import border_weight_map, border_weight_stack, check_labels

    out = check_output_path(args.out, "--out", _WRITABLE)
    ndim, sampling = volume_sampling(args)
    image = open_image(args.labels)
    labels = np.asarray(image.data)  # a zarr store is read whole: labels are small
    if ndim == 3 and sampling is None:
        sampling = file_voxel_size(image.pixel_size)
    name = f"label image {args.labels}"
    check_label_shape(labels.shape, name)
    labels = check_labels(labels, name=name, ndim=labels.ndim)
    if ndim == 3 and labels.ndim != 3:
        raise ValueError(
            f"--ndim 3 needs a (Z, Y, X) label volume, got {name} of shape {labels.shape}"
        )
    from napari_unet.core.training import TrainSettings

    given = TrainSettings(**given_fields(args, TrainSettings))
    kwargs = {"w0": given.w0, "sigma": given.sigma, "class_balance": given.class_balance}
    started = time.perf_counter()
    if ndim == 3:
        weights = border_weight_map(labels, sampling=sampling or (1.0, 1.0, 1.0), **kwargs)
    elif labels.ndim == 2:
        weights = border_weight_map(labels, sampling=sampling, **kwargs)
    else:
        weights = border_weight_stack(labels, sampling=sampling, **kwargs)
    logger.info(
        "weights of %s (%s, %s) in %.2f s",
        args.labels,
        " x ".join(map(str, labels.shape)),
        "one volume" if ndim == 3 else "2D",
        time.perf_counter() - started,
    )
    write_image(out, weights)
    voxel = ""
    if ndim == 3:
        voxel = f", one volume of voxel size {' x '.join(f'{v:g}' for v in sampling or (1, 1, 1))}"
    print(
        f"wrote {out}: {' x '.join(map(str, weights.shape))} float32, "
        f"weights {float(weights.min()):.3g} to {float(weights.max()):.3g}{voxel}"
    )
    return 0
