"""Reading and writing the image files the command line takes: TIFF, PNG, NPY and zarr.

zarr inputs are opened lazily as dask arrays, so that images larger than memory are read tile by
tile; every other format is read whole. Writes are atomic
(:func:`napari_unet.core.atomic.atomic_path`), so a crash never leaves half a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.atomic import atomic_path

__all__ = ["is_zarr_path", "read_image", "write_image"]

_READABLE = (".tif", ".tiff", ".png", ".npy", ".zarr")


def is_zarr_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a zarr store (a ``.zarr`` folder or one with zarr metadata)."""
    p = Path(path)
    if p.suffix.lower() == ".zarr":
        return True
    return p.is_dir() and any((p / name).exists() for name in (".zarray", "zarr.json", ".zgroup"))


def read_image(path: str | os.PathLike[str]) -> Any:
    """Read an image file.

    Parameters
    ----------
    path : str or path-like
        A ``.tif``/``.tiff``, ``.png``, ``.npy`` file or a ``.zarr`` store (an array, or a group
        whose first array is taken).

    Returns
    -------
    numpy.ndarray or dask.array.Array
        The pixels; a lazy dask array for zarr.

    Raises
    ------
    FileNotFoundError
        If the path does not exist.
    ValueError
        If the format is not one of the above or the file cannot be read.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file: {p}")
    suffix = p.suffix.lower()
    try:
        if is_zarr_path(p):
            import dask.array as da
            import zarr

            node = zarr.open(str(p), mode="r")
            if not hasattr(node, "shape"):
                arrays = list(node.arrays()) if hasattr(node, "arrays") else []
                if not arrays:
                    raise ValueError(f"{p} is a zarr group without arrays")
                node = arrays[0][1]
            return da.from_zarr(node)
        if suffix in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(p)
        if suffix == ".png":
            from skimage.io import imread

            return imread(p)
        if suffix == ".npy":
            return np.load(p, allow_pickle=False)
    except ValueError:
        raise
    except Exception as exc:  # a corrupt or foreign file: say which and why
        raise ValueError(f"cannot read {p}: {exc}") from exc
    raise ValueError(f"cannot read {p}: expected one of {', '.join(_READABLE)}, got {suffix!r}")


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
        The written path.

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
