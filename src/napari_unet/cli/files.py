"""Reading and writing the image files the command line takes: TIFF, PNG, NPY, zarr, OME-Zarr.

zarr and OME-Zarr inputs are opened lazily as dask arrays, so that images larger than memory are
read tile by tile; every other format is read whole. An OME-Zarr image is read at level 0 of its
pyramid, with its channel axis and pixel size from the metadata (:mod:`napari_unet.cli.ngff`).
Writes are atomic (:func:`napari_unet.core.atomic.atomic_path`), so a crash never leaves half a
file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.atomic import atomic_path

__all__ = ["ImageFile", "is_zarr_path", "open_image", "read_image", "write_image"]

_READABLE = (".tif", ".tiff", ".png", ".npy", ".zarr")


def is_zarr_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a zarr store (a ``.zarr`` folder or one with zarr metadata)."""
    p = Path(path)
    if p.suffix.lower() == ".zarr":
        return True
    return p.is_dir() and any((p / name).exists() for name in (".zarray", "zarr.json", ".zgroup"))


@dataclass(frozen=True)
class ImageFile:
    """An image read from a file, with what its file says about it.

    Attributes
    ----------
    path : pathlib.Path
        The file (or zarr store) that holds it.
    data : numpy.ndarray or dask.array.Array
        The pixels (lazy for zarr and OME-Zarr).
    channel_axis : int, optional
        The channel axis of ``data`` when the file names one (OME-Zarr's ``c``).
    pixel_size : dict of str to float
        Physical size of a pixel per space axis (``'z'``, ``'y'``, ``'x'``), when the file
        states it (OME-Zarr).
    ome : napari_unet.cli.ngff.OmeZarrImage, optional
        The OME-Zarr metadata, for an OME-Zarr image (labels can be written into it).
    """

    path: Path
    data: Any
    channel_axis: int | None = None
    pixel_size: dict[str, float] = field(default_factory=dict)
    ome: Any = None


def _read_zarr(p: Path) -> Any:
    import dask.array as da
    import zarr

    node = zarr.open(str(p), mode="r")
    if not hasattr(node, "shape"):
        arrays = list(node.arrays()) if hasattr(node, "arrays") else []
        if not arrays:
            raise ValueError("a zarr group without arrays")
        node = arrays[0][1]
    return da.from_zarr(node)


def open_image(path: str | os.PathLike[str]) -> ImageFile:
    """Read an image file, with its channel axis and pixel size where the file states them.

    Parameters
    ----------
    path : str or path-like
        A ``.tif``/``.tiff``, ``.png``, ``.npy`` file, an OME-Zarr image (level 0 of its
        pyramid, axes of size 1 dropped, see :func:`napari_unet.cli.ngff.read_ome_zarr`) or
        another ``.zarr`` store (an array, or a group whose first array is taken).

    Returns
    -------
    ImageFile
        The pixels (a lazy dask array for zarr) and what the file says about them.

    Raises
    ------
    FileNotFoundError
        If the path does not exist.
    ValueError
        If the format is not one of the above or the file cannot be read.
    """
    from napari_unet.cli.ngff import is_ome_zarr, read_ome_zarr

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file: {p}")
    if is_ome_zarr(p):
        data, ome = read_ome_zarr(p)  # its errors name the file and what is wrong
        return ImageFile(p, data, ome.channel_axis, ome.pixel_size, ome)
    suffix = p.suffix.lower()
    if not is_zarr_path(p) and suffix not in _READABLE:
        raise ValueError(f"cannot read {p}: expected one of {', '.join(_READABLE)}, got {suffix!r}")
    try:
        if is_zarr_path(p):
            return ImageFile(p, _read_zarr(p))
        if suffix in (".tif", ".tiff"):
            import tifffile

            return ImageFile(p, tifffile.imread(p))
        if suffix == ".png":
            from skimage.io import imread

            return ImageFile(p, imread(p))
        return ImageFile(p, np.load(p, allow_pickle=False))
    except Exception as exc:  # a corrupt or foreign file: say which and why
        raise ValueError(f"cannot read {p}: {exc}") from exc


def read_image(path: str | os.PathLike[str]) -> Any:
    """Read an image file's pixels (see :func:`open_image`).

    Parameters
    ----------
    path : str or path-like
        A ``.tif``/``.tiff``, ``.png``, ``.npy`` file, an OME-Zarr image or a ``.zarr`` store.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        The pixels; a lazy dask array for zarr and OME-Zarr. A multichannel OME-Zarr image
        keeps the NGFF order, so its channels are on axis 0 (``(C, Y, X)``, ``(C, Z, Y, X)``)
        unless it has several time points (``(T, C, Y, X)``); :func:`open_image` says which.

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`open_image`: a missing path, an unknown format or an unreadable file.
    """
    return open_image(path).data


def write_image(path: str | os.PathLike[str], data: np.ndarray) -> Path:
    """Write an array to ``.tif``/``.tiff`` or ``.npy``, atomically.

    Parameters
    ----------
    path : str or path-like
        Destination; its suffix picks the format.
    data : numpy.ndarray
        The pixels.

    Returns
    -------
    pathlib.Path
        ``path``, now holding ``data`` (never half written).

    Raises
    ------
    ValueError
        If the suffix is not one of the above.
    FileNotFoundError
        If the destination's folder does not exist.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".tif", ".tiff", ".npy"):
        raise ValueError(f"cannot write {p}: expected a .tif, .tiff or .npy path, got {suffix!r}")
    with atomic_path(p) as tmp:
        if suffix == ".npy":
            np.save(tmp, np.asarray(data), allow_pickle=False)
        else:
            import tifffile

            tifffile.imwrite(tmp, np.asarray(data))
    return p
