"""Checks of instance-label images and annotated-region masks.

Instance labels are integer images: 0 = background, k > 0 = instance k. A region is a boolean
mask of the annotated pixels (``None``: the whole image).
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_labels", "check_region"]


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
        raise ValueError(f"{name} must be {ndim}D {axes}, got {arr.ndim}D with shape {arr.shape}")
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
        raise ValueError(f"{name} must be non-negative, got minimum {int(arr.min())}")
    return arr


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
