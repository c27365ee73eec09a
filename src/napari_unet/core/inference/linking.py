"""Linking the 2D objects of a stack's slices into 3D objects, by their overlap along z.

A 2D model segments a ``(Z, Y, X)`` stack slice by slice, so every nucleus comes out as one
label per slice. :func:`link_slices` relabels such a stack slice after slice: an object takes
the label of the object of the previous slice that it overlaps best, when their overlap is at
least ``threshold``; matching is one-to-one (an object continues into at most one object of the
next slice), found by the best total overlap (:func:`scipy.optimize.linear_sum_assignment`).
Unmatched objects start new labels.

Two measures of overlap: ``'overlap'`` (the default), the intersection over the *smaller* of
the two objects, and ``'iou'``, the intersection over their union, which is what cellpose's
stitching (``stitch_threshold``) uses. The tip of a nucleus is much smaller than the section
next to it, so its IoU is low and IoU splits nuclei at their tips on anisotropic stacks; the
overlap of the smaller object stays near 1 there (on the synthetic 3D sample with z spacing 2,
IoU >= 0.25 split 6 to 12 of 25 nuclei, overlap >= 0.5 none).

:class:`SliceLinker` does the same one slice at a time, for slices that arrive in order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..targets import check_labels

__all__ = [
    "DEFAULT_LINK_OVERLAP",
    "LINK_MEASURES",
    "SliceLinker",
    "check_link_threshold",
    "link_slices",
]

#: default smallest overlap (intersection over the smaller object) for two slice objects to be
#: one 3D object
DEFAULT_LINK_OVERLAP: float = 0.5
#: the measures of overlap between two objects of consecutive slices
LINK_MEASURES = ("overlap", "iou")


def check_link_threshold(threshold: object) -> float:
    """A linking threshold in ``(0, 1]``, or a ValueError that says what was received.

    Parameters
    ----------
    threshold : float
        Smallest overlap that links two objects.

    Returns
    -------
    float
        The threshold.
    """
    ok = isinstance(threshold, (int, float, np.integer, np.floating)) and not isinstance(
        threshold, bool
    )
    value = float(threshold) if ok else float("nan")  # type: ignore[arg-type]
    if not 0.0 < value <= 1.0:
        raise ValueError(
            f"the slice-linking threshold (overlap of two objects) must be in (0, 1], "
            f"got {threshold!r}"
        )
    return value


def _overlaps(
    above: np.ndarray, below: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``(a, b)`` of labels that overlap between two slices, their intersection over the
    smaller object and their intersection over union."""
    both = (above > 0) & (below > 0)
    if not both.any():
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0), np.zeros(0)
    a, b = above[both].astype(np.int64), below[both].astype(np.int64)
    pairs, inter = np.unique(np.stack([a, b]), axis=1, return_counts=True)
    ids_a, area_a = np.unique(above[above > 0], return_counts=True)
    ids_b, area_b = np.unique(below[below > 0], return_counts=True)
    size_a = area_a[np.searchsorted(ids_a, pairs[0])]
    size_b = area_b[np.searchsorted(ids_b, pairs[1])]
    iou = inter / (size_a + size_b - inter)
    return pairs[0], pairs[1], inter / np.minimum(size_a, size_b), iou


def _links(above: np.ndarray, below: np.ndarray, threshold: float, measure: str) -> dict[int, int]:
    """One-to-one links ``{label below: label above}`` of the best total overlap (ties of the
    overlap of the smaller object go to the larger IoU)."""
    a, b, overlap, iou = _overlaps(above, below)
    score = iou if measure == "iou" else overlap
    keep = score >= threshold
    a, b, score = a[keep], b[keep], score[keep] + 1e-6 * iou[keep]
    if a.size == 0:
        return {}
    ua, ia = np.unique(a, return_inverse=True)
    ub, ib = np.unique(b, return_inverse=True)
    cost = np.zeros((ua.size, ub.size))
    cost[ia, ib] = -score
    rows, cols = linear_sum_assignment(cost)
    return {int(ub[c]): int(ua[r]) for r, c in zip(rows, cols, strict=True) if cost[r, c] < 0}


class SliceLinker:
    """Relabel the 2D labels of consecutive slices into 3D objects, one slice per call.

    Parameters
    ----------
    threshold : float
        Smallest overlap, in ``(0, 1]``, for an object to continue the object of the previous
        slice.
    measure : str
        ``'overlap'`` (intersection over the smaller object) or ``'iou'`` (intersection over
        union).

    Attributes
    ----------
    n_objects : int
        3D objects so far (the labels handed out are ``1..n_objects``).

    Examples
    --------
    >>> a = np.array([[1, 1, 0, 2, 2]])
    >>> b = np.array([[5, 5, 0, 0, 7]])  # 5 continues 1; 7 is half of 2 (IoU 1/2)
    >>> linker = SliceLinker(threshold=0.5, measure="iou")
    >>> linker(a).tolist(), linker(b).tolist(), linker.n_objects
    ([[1, 1, 0, 2, 2]], [[1, 1, 0, 0, 2]], 2)
    """

    def __init__(self, threshold: float = DEFAULT_LINK_OVERLAP, measure: str = "overlap") -> None:
        self.threshold = check_link_threshold(threshold)
        if measure not in LINK_MEASURES:
            raise ValueError(f"measure must be one of {LINK_MEASURES}, got {measure!r}")
        self.measure = measure
        self.n_objects = 0
        self._previous: np.ndarray | None = None

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        """The next slice's labels, relabelled (int32).

        Parameters
        ----------
        labels : numpy.ndarray
            2D integer labels of the slice (any values; 0 = background).

        Returns
        -------
        numpy.ndarray
            int32 labels: those linked to the previous slice carry its labels, the others new
            labels above every label handed out so far.
        """
        labels = check_labels(labels, name="slice labels")
        previous = self._previous
        if previous is not None and previous.shape != labels.shape:
            raise ValueError(
                f"every slice must have the shape {previous.shape}, got {labels.shape}"
            )
        ids = np.unique(labels[labels > 0])
        links = {} if previous is None else _links(previous, labels, self.threshold, self.measure)
        new = [int(k) for k in ids if int(k) not in links]
        mapping = dict(links)
        mapping.update({k: self.n_objects + 1 + i for i, k in enumerate(new)})
        self.n_objects += len(new)
        out = np.zeros(labels.shape, np.int32)
        if ids.size:
            index = np.searchsorted(ids, labels[labels > 0])
            out[labels > 0] = np.array([mapping[int(k)] for k in ids], np.int32)[index]
        self._previous = out
        return out

    def link_stack(self, labels: Any, out: Any) -> int:
        """Link every slice of ``labels`` in order into ``out``; the number of 3D objects.

        Parameters
        ----------
        labels : array-like
            ``(Z, Y, X)`` integer labels, read one slice at a time.
        out : array-like
            ``(Z, Y, X)`` integer array written one slice at a time (may be ``labels``).

        Returns
        -------
        int
            :attr:`n_objects` after the last slice.
        """
        for z in range(np.shape(labels)[0]):
            out[z] = self(np.asarray(labels[z]))
        return self.n_objects


def link_slices(
    labels: Any,
    *,
    threshold: float = DEFAULT_LINK_OVERLAP,
    measure: str = "overlap",
    out: Any = None,
) -> Any:
    """Link the 2D objects of a ``(Z, Y, X)`` label stack into 3D objects by overlap along z.

    Parameters
    ----------
    labels : array-like
        ``(Z, Y, X)`` integer labels, each slice segmented on its own (numpy, zarr or dask;
        read one slice at a time). Label values need not be unique across slices.
    threshold : float
        Smallest overlap, in ``(0, 1]``, between an object and the object of the previous
        slice that it continues (one-to-one, best total overlap).
    measure : str
        ``'overlap'``: intersection over the smaller of the two objects (default; keeps the
        tips of nuclei); ``'iou'``: intersection over union (cellpose's stitching).
    out : array-like, optional
        Where to write the linked labels (``(Z, Y, X)``, integer); may be ``labels`` itself
        (each slice is read before it is written). Default: a new int32 numpy array.

    Returns
    -------
    array-like
        ``out``: int32 labels ``1..n`` unique across the stack, numbered in order of first
        appearance; an object spanning several slices has one label.

    Examples
    --------
    >>> stack = np.zeros((3, 4, 6), np.int32)
    >>> stack[0, :, :3], stack[1, :, :3], stack[2, :, 3:] = 4, 9, 9
    >>> linked = link_slices(stack)
    >>> [np.unique(s[s > 0]).tolist() for s in linked]
    [[1], [1], [2]]
    """
    shape = tuple(np.shape(labels))
    if len(shape) != 3:
        raise ValueError(f"labels must be a (Z, Y, X) stack of 2D slices, got shape {shape}")
    linker = SliceLinker(threshold, measure)
    if out is None:
        out = np.zeros(shape, np.int32)
    elif tuple(np.shape(out)) != shape:
        raise ValueError(f"out must have the labels' shape {shape}, got {tuple(np.shape(out))}")
    linker.link_stack(labels, out)
    return out
