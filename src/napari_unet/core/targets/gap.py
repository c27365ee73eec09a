"""The gap between touching cells: cut it in training targets, grow it back after prediction.

Training targets cut a gap between touching instances (:func:`touching_gap`, :func:`cut_gap`)
so that touching cells come out as separate components; post-processing grows the predicted
instances back with :func:`grow_instances`, the same definition of the gap run backwards.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .labels import as_work_labels, check_labels

__all__ = ["cut_gap", "grow_instances", "touching_gap"]


def check_gap(gap: object) -> int:
    if isinstance(gap, bool) or not isinstance(gap, (int, np.integer)) or gap < 0:
        raise ValueError(f"gap must be an integer >= 0 (pixels), got {gap!r}")
    return int(gap)


def _other_instance_within(labels: np.ndarray, radius: int) -> np.ndarray:
    """True where a chessboard window of ``radius`` holds two different instances or, on an
    instance pixel, an instance other than the pixel's own. ``labels`` from
    :func:`~napari_unet.core.targets.labels.as_work_labels`."""
    size = 2 * radius + 1
    big = int(labels.max()) + 1  # exact in float64 (scipy filters pass cval as a double)
    hi = ndi.maximum_filter(labels, size=size, mode="constant", cval=0)
    lo = ndi.minimum_filter(np.where(labels > 0, labels, big), size=size, mode="constant", cval=big)
    # On an instance pixel of label k: hi >= k and lo <= k; another instance exists iff one differs.
    # On a background pixel: two different instances iff lo < hi (lo = big when none).
    return (hi != lo) & (lo != big)


def touching_gap(labels: np.ndarray, gap: int = 1) -> np.ndarray:
    """Instance pixels that lie within ``gap`` pixels of a different instance.

    Distances are chessboard (8-connectivity): with ``gap=1`` an instance pixel is in the gap
    when one of its 8 neighbours belongs to another instance. Both sides of a shared border are
    taken, so two cells that touch along a straight line end up ``2 * gap`` pixels apart.

    Parameters
    ----------
    labels : numpy.ndarray
        2D integer instance labels.
    gap : int
        Width in pixels taken from each side (0: nothing).

    Returns
    -------
    numpy.ndarray
        bool mask of the instance pixels to remove.

    Examples
    --------
    >>> lab = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    >>> touching_gap(lab).astype(int)
    array([[0, 1, 1, 0],
           [0, 1, 1, 0]])
    """
    labels = check_labels(labels)
    gap = check_gap(gap)
    if gap == 0 or labels.size == 0:
        return np.zeros(labels.shape, bool)
    work, _ = as_work_labels(labels)
    return (work > 0) & _other_instance_within(work, gap)


def cut_gap(labels: np.ndarray, gap: int = 1) -> np.ndarray:
    """Copy of ``labels`` with the :func:`touching_gap` pixels set to background (0).

    Parameters
    ----------
    labels : numpy.ndarray
        2D integer instance labels.
    gap : int
        Width in pixels taken from each side of a border between two instances.

    Returns
    -------
    numpy.ndarray
        The cut labels, same dtype.
    """
    labels = check_labels(labels)
    out = labels.copy()
    out[touching_gap(labels, gap)] = 0
    return out


#: the four line directions (row step, column step) along which gaps are measured
_LINES = ((0, 1), (1, 0), (1, 1), (1, -1))


def grow_instances(labels: np.ndarray, gap: int = 1, *, everywhere: bool = False) -> np.ndarray:
    """Grow instances back across the gaps that :func:`cut_gap` cut: the inverse of the cut.

    Instances grow into background by at most ``gap`` pixels (chessboard), never over another
    instance, deterministically. By default only gaps *between* instances are closed: a
    background pixel is filled when, along a row, a column or a diagonal through it, a run of
    at most ``2 * gap`` background pixels separates two different instances (the run a cut of
    ``gap`` leaves between two cells that touched); it takes the instance at the nearer end of
    the run (on a tie, the larger label; over several lines, the nearest end). Free cell
    outlines, which the cut leaves untouched, do not grow. ``grow_instances(cut_gap(L, g), g)``
    restores ``L`` except for a few pixels where the original cells were themselves at most
    ``2 * g`` pixels apart (typically where a border meets the background).

    Parameters
    ----------
    labels : numpy.ndarray
        2D integer instance labels (e.g. connected components of a prediction).
    gap : int
        The gap width used to cut the training targets.
    everywhere : bool
        Grow every instance into all background within ``gap`` pixels (chessboard steps, one
        8-neighbour ring per step; where two instances reach a pixel in the same step the
        larger label wins), not only across gaps.

    Returns
    -------
    numpy.ndarray
        Grown labels, same dtype.

    Examples
    --------
    >>> lab = np.array([[0, 1, 1, 2, 2, 0], [1, 1, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0]])
    >>> cut_gap(lab)
    array([[0, 1, 0, 0, 2, 0],
           [1, 1, 0, 0, 2, 2],
           [0, 1, 0, 0, 2, 0]])
    >>> np.array_equal(grow_instances(cut_gap(lab)), lab)
    True
    """
    labels = check_labels(labels)
    gap = check_gap(gap)
    out = labels.copy()
    if gap == 0 or labels.size == 0 or not labels.any():
        return out
    work, ids = as_work_labels(labels)
    grown = _grow_everywhere(work, gap) if everywhere else _grow_across(work, gap)
    out[...] = grown if ids is None else ids[grown]
    return out


def _grow_everywhere(work: np.ndarray, gap: int) -> np.ndarray:
    footprint = np.ones((3, 3), bool)
    grown = work.copy()
    free = work == 0
    for _ in range(gap):
        reach = ndi.grey_dilation(grown, footprint=footprint, mode="constant", cval=0)
        take = free & (reach > 0)
        if not take.any():
            break
        grown[take] = reach[take]
        free &= ~take
    return grown


def _grow_across(work: np.ndarray, gap: int) -> np.ndarray:
    """Fill background runs of at most ``2 * gap`` pixels between two different instances."""
    span = 2 * gap
    height, width = work.shape
    padded = np.pad(work, span)
    background = work == 0
    # Only pixels with two different instances within `span` can be filled.
    candidates = background & _other_instance_within(work, span)
    grown = work.copy()
    best = np.full(work.shape, span + 1, np.int32)
    for dy, dx in _LINES:
        ends = []
        for sign in (1, -1):
            hit = np.zeros(work.shape, work.dtype)
            dist = np.zeros(work.shape, np.int32)
            for step in range(1, span + 1):
                oy, ox = span + sign * step * dy, span + sign * step * dx
                ahead = padded[oy : oy + height, ox : ox + width]
                new = (hit == 0) & (ahead > 0) & candidates
                hit[new] = ahead[new]
                dist[new] = step
            ends.append((hit, dist))
        (fwd, d_fwd), (bwd, d_bwd) = ends
        ok = candidates & (fwd > 0) & (bwd > 0) & (fwd != bwd) & (d_fwd + d_bwd - 1 <= span)
        near = np.minimum(d_fwd, d_bwd)
        label = np.where(d_fwd < d_bwd, fwd, np.where(d_bwd < d_fwd, bwd, np.maximum(fwd, bwd)))
        take = ok & (near < best)
        best[take] = near[take]
        grown[take] = label[take]
    return grown
