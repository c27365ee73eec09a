"""Checks of instance-label images and annotated-region masks.

Instance labels are integer images: 0 = background, k > 0 = instance k. A region is a boolean
mask of the annotated pixels (``None``: the whole image). A voxel size (``sampling``) gives the
spacing of each axis in physical units, e.g. ``(2.0, 0.5, 0.5)`` for ``(Z, Y, X)``.
"""

from __future__ import annotations

import numpy as np
from skimage.measure import label as label_components

from ..voxels import check_voxel_size

__all__ = [
    "SplitLabelsWarning",
    "check_labels",
    "check_labels_sampling",
    "check_region",
    "check_sampling",
    "labels_ndim",
    "split_components",
]


def check_labels(labels: object, name: str = "labels", ndim: int | None = 2) -> np.ndarray:
    """Check an instance-label image and return it as a numpy array.

    Parameters
    ----------
    labels : array-like
        Integer labels: 0 = background, k > 0 = instance k.
    name : str
        Argument name used in error messages.
    ndim : int, optional
        Required number of dimensions (``None``: any).

    Returns
    -------
    numpy.ndarray
        The labels (not copied when already a numpy array).

    Raises
    ------
    ValueError
        If the labels are not integers (floats and booleans are refused), hold negative values or
        have the wrong number of dimensions.

    Examples
    --------
    >>> check_labels(np.zeros((3, 4), np.int32)).shape
    (3, 4)
    """
    arr = np.asarray(labels)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"{name} must be an integer label image (0 = background, k > 0 = instance k), "
            f"got dtype {arr.dtype}"
        )
    if ndim is not None and arr.ndim != ndim:
        axes = {2: "(Y, X)", 3: "(Z, Y, X)"}.get(ndim, f"{ndim}D")
        hint = ""
        if ndim == 2 and arr.ndim == 3:
            hint = " (a volume needs its voxel size: sampling=(z, y, x))"
        raise ValueError(
            f"{name} must be {ndim}D {axes}, got {arr.ndim}D with shape {arr.shape}{hint}"
        )
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
        raise ValueError(f"{name} must be non-negative, got minimum {int(arr.min())}")
    return arr


def check_sampling(
    sampling: object, ndim: int | None = None, name: str = "sampling"
) -> tuple[float, ...] | None:
    """Check a voxel size: one finite spacing > 0 per axis
    (:func:`napari_unet.core.voxels.check_voxel_size`, the argument called ``sampling``).

    Parameters
    ----------
    sampling : sequence of float or None
        Spacing of each axis in physical units (e.g. ``(z, y, x)`` in micrometres); ``None``
        means isotropic.
    ndim : int, optional
        Number of axes the spacing must have (``None``: any number >= 1).
    name : str
        Argument name used in error messages (``--scale`` on the command line).

    Returns
    -------
    tuple of float or None
        The spacings as floats, or ``None`` when ``sampling`` is ``None``.

    Examples
    --------
    >>> check_sampling([2, 0.5, 0.5], ndim=3)
    (2.0, 0.5, 0.5)
    """
    return check_voxel_size(sampling, ndim, name)


def labels_ndim(sampling: object) -> int:
    """Dimensions the target functions expect: 2, or one per spacing when a voxel size is given.

    A ``(Z, Y, X)`` array is a stack of 2D slices unless a voxel size says it is a volume;
    the targets functions refuse it without ``sampling`` so that the two are never confused.

    Parameters
    ----------
    sampling : sequence of float or None
        The voxel size given by the caller.

    Returns
    -------
    int
        ``len(sampling)``, or 2 without one.
    """
    return 2 if sampling is None else len(check_sampling(sampling) or ())


def check_labels_sampling(
    labels: object, sampling: object, name: str = "labels"
) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """Labels checked against a voxel size: 2D without one, one axis per spacing with one.

    Parameters
    ----------
    labels : array-like
        Integer instance labels.
    sampling : sequence of float or None
        Voxel size, one spacing per axis.
    name : str
        Argument name used in error messages.

    Returns
    -------
    labels : numpy.ndarray
        The checked labels.
    sampling : tuple of float or None
        The checked voxel size.
    """
    sampling = check_sampling(sampling)
    labels = check_labels(labels, name=name, ndim=labels_ndim(sampling))
    return labels, sampling


def check_region(region: object, shape: tuple[int, ...], name: str = "region") -> np.ndarray | None:
    """Check an annotated-region mask against the labels' shape.

    Parameters
    ----------
    region : array-like or None
        Boolean mask (True = annotated). ``None`` means the whole image.
    shape : tuple of int
        Shape the mask must have.
    name : str
        Argument name used in error messages.

    Returns
    -------
    numpy.ndarray or None
        The mask as a bool array, or ``None``.

    Raises
    ------
    ValueError
        If the mask is not boolean (0/1 integers are accepted) or has another shape.
    """
    if region is None:
        return None
    arr = np.asarray(region)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have the labels' shape {tuple(shape)}, got {arr.shape}")
    if arr.dtype != bool:
        binary = np.issubdtype(arr.dtype, np.integer) and (
            arr.size == 0 or (arr.min() >= 0 and arr.max() <= 1)
        )
        if not binary:
            raise ValueError(
                f"{name} must be a boolean mask (True = annotated) or 0/1 integers, "
                f"got dtype {arr.dtype}"
            )
        arr = arr.astype(bool)
    return arr


def as_work_labels(
    labels: np.ndarray, limit: int = 2**31 - 2
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels as int32 (int64 when renumbered), renumbered densely when ids exceed ``limit``.

    Returns the working labels and, when renumbered, the original id of each new id.
    """
    if labels.size == 0:
        return labels.astype(np.int32), None
    top = int(labels.max())
    if top > limit:
        ids, inverse = np.unique(labels, return_inverse=True)
        dense = inverse.reshape(labels.shape).astype(np.int64)
        if ids[0] != 0:
            ids = np.concatenate([[0], ids]).astype(ids.dtype)
            dense += 1
        return dense, ids
    return labels.astype(np.int32, copy=False), None


class SplitLabelsWarning(UserWarning):
    """Some label values were painted on several separate cells and were split.

    Parameters
    ----------
    values : int
        How many label values covered several separate regions.
    cells : int
        How many cells those values were split into.

    Attributes
    ----------
    values, cells : int
        As given, for a widget or command line to report.
    """

    def __init__(self, values: int, cells: int) -> None:
        self.values, self.cells = int(values), int(cells)
        one = values == 1
        super().__init__(
            f"{values} label value{'' if one else 's'} painted on several separate cells "
            f"{'was' if one else 'were'} split into {cells} cells (one label per connected "
            "region); paint each cell with its own label to silence this"
        )


def split_components(labels: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Give every connected region of a label value its own label.

    A label value painted on several separate regions (one brush value for many cells, a
    common habit in napari) would be learnt as one cell: no gap, no border weight between the
    regions. Regions touch through edges or corners (8-connectivity in 2D).

    Parameters
    ----------
    labels : numpy.ndarray
        Integer instance labels (any dimensions), 0 = background.

    Returns
    -------
    labels : numpy.ndarray
        int32 labels ``1..n`` (the input itself when nothing was split).
    values : int
        How many label values covered several regions.
    cells : int
        How many regions those values covered in all.

    Examples
    --------
    >>> lab = np.array([[1, 1, 0, 1], [0, 0, 0, 1], [2, 2, 0, 0]])
    >>> out, values, cells = split_components(lab)
    >>> out.tolist(), values, cells
    ([[1, 1, 0, 2], [0, 0, 0, 2], [3, 3, 0, 0]], 1, 2)
    """
    labels = np.asarray(labels)
    if not labels.any():
        return labels, 0, 0
    regions = label_components(labels, background=0, connectivity=labels.ndim)
    n = int(regions.max())
    ids = np.unique(labels)
    if n == ids.size - (ids[0] == 0):
        return labels, 0, 0
    # the label value of each region, then how many regions each value has
    value_of = np.zeros(n + 1, labels.dtype)
    value_of[regions.ravel()] = labels.ravel()
    _, counts = np.unique(value_of[1:], return_counts=True)
    split = counts[counts > 1]
    return regions.astype(np.int32, copy=False), int(split.size), int(split.sum())
