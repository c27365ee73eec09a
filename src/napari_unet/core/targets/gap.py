"""The gap between touching cells: cut it in training targets, grow it back after prediction.

Training targets cut a gap between touching instances (:func:`touching_gap`, :func:`cut_gap`)
so that touching cells come out as separate components; post-processing grows the predicted
instances back with :func:`grow_instances`, the same definition of the gap run backwards.

2D images and volumes share one code path. The gap is given in pixels of the finest axis; with
a voxel size (``sampling``) a coarser axis gets proportionally fewer voxels, at least one
(:func:`axis_gaps`), so that touching nuclei are cut apart along z too.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage as ndi

from .labels import as_work_labels, check_labels_sampling
from .terms import pixel_sampling

__all__ = ["axis_gaps", "cut_gap", "grow_instances", "touching_gap"]


def check_gap(gap: object) -> int:
    if isinstance(gap, bool) or not isinstance(gap, (int, np.integer)) or gap < 0:
        raise ValueError(f"gap must be an integer >= 0 (pixels), got {gap!r}")
    return int(gap)


def axis_gaps(gap: int, sampling: tuple[float, ...] | None, ndim: int) -> tuple[int, ...]:
    """The gap in voxels along each axis: ``gap`` pixels of the finest axis, at least 1.

    Parameters
    ----------
    gap : int
        Gap width in pixels of the finest axis (0: none).
    sampling : tuple of float or None
        Voxel size, one spacing per axis (``None``: square pixels).
    ndim : int
        Number of axes.

    Returns
    -------
    tuple of int
        ``max(1, round(gap * finest / spacing))`` per axis, or zeros when ``gap`` is 0.

    Examples
    --------
    >>> axis_gaps(1, (3.0, 1.0, 1.0), 3)
    (1, 1, 1)
    >>> axis_gaps(4, (2.0, 1.0, 1.0), 3)
    (2, 4, 4)
    """
    gap = check_gap(gap)
    if gap == 0:
        return (0,) * ndim
    return tuple(max(1, int(np.floor(gap / s + 0.5))) for s in pixel_sampling(sampling, ndim))


def _other_instance_within(labels: np.ndarray, radius: tuple[int, ...]) -> np.ndarray:
    """True where a box of ``radius`` voxels per axis holds two different instances or, on an
    instance pixel, an instance other than the pixel's own. ``labels`` from
    :func:`~napari_unet.core.targets.labels.as_work_labels`."""
    size = tuple(2 * r + 1 for r in radius)
    big = int(labels.max()) + 1  # exact in float64 (scipy filters pass cval as a double)
    hi = ndi.maximum_filter(labels, size=size, mode="constant", cval=0)
    lo = ndi.minimum_filter(np.where(labels > 0, labels, big), size=size, mode="constant", cval=big)
    # On an instance pixel of label k: hi >= k and lo <= k; another instance exists iff one differs.
    # On a background pixel: two different instances iff lo < hi (lo = big when none).
    return (hi != lo) & (lo != big)


def touching_gap(
    labels: np.ndarray, gap: int = 1, *, sampling: tuple[float, ...] | None = None
) -> np.ndarray:
    """Instance pixels that lie within ``gap`` pixels of a different instance.

    Distances are chessboard (8-connectivity in 2D, 26 in 3D): with ``gap=1`` an instance
    pixel is in the gap when one of its neighbours belongs to another instance. Both sides of a
    shared border are taken, so two cells that touch along a straight line end up ``2 * gap``
    pixels apart. With a voxel size the reach along each axis is :func:`axis_gaps`.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer instance labels: 2D, or one axis per value of ``sampling``.
    gap : int
        Width in pixels of the finest axis taken from each side (0: nothing).
    sampling : sequence of float, optional
        Voxel size, one spacing per axis (``(z, y, x)`` for a volume).

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
    labels, sampling = check_labels_sampling(labels, sampling)
    gaps = axis_gaps(gap, sampling, labels.ndim)
    if not any(gaps) or labels.size == 0:
        return np.zeros(labels.shape, bool)
    work, _ = as_work_labels(labels)
    return (work > 0) & _other_instance_within(work, gaps)


def cut_gap(
    labels: np.ndarray, gap: int = 1, *, sampling: tuple[float, ...] | None = None
) -> np.ndarray:
    """Copy of ``labels`` with the :func:`touching_gap` pixels set to background (0).

    Parameters
    ----------
    labels : numpy.ndarray
        Integer instance labels: 2D, or one axis per value of ``sampling``.
    gap : int
        Width in pixels of the finest axis taken from each side of a border.
    sampling : sequence of float, optional
        Voxel size, one spacing per axis (``(z, y, x)`` for a volume).

    Returns
    -------
    numpy.ndarray
        The cut labels, same dtype.
    """
    labels, sampling = check_labels_sampling(labels, sampling)
    out = labels.copy()
    out[touching_gap(labels, gap, sampling=sampling)] = 0
    return out


def _lines(ndim: int) -> list[tuple[int, ...]]:
    """Line directions along which gaps are measured: one of each pair ``v, -v`` in
    ``{-1, 0, 1}^ndim``, axes first (2D: ``(0, 1), (1, 0), (1, 1), (1, -1)``)."""
    half = [
        v
        for v in itertools.product((-1, 0, 1), repeat=ndim)
        if any(v) and v[next(i for i, x in enumerate(v) if x)] > 0
    ]
    return sorted(half, key=lambda v: (np.count_nonzero(v), [-x for x in reversed(v)]))


def grow_instances(
    labels: np.ndarray,
    gap: int = 1,
    *,
    everywhere: bool = False,
    sampling: tuple[float, ...] | None = None,
    axes: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Grow instances back across the gaps that :func:`cut_gap` cut: the inverse of the cut.

    Instances grow into background by at most ``gap`` pixels (chessboard), never over another
    instance, deterministically. By default only gaps *between* instances are closed: a
    background pixel is filled when, along a row, a column or a diagonal through it, a run of
    at most ``2 * gap`` background pixels separates two different instances (the run a cut of
    ``gap`` leaves between two cells that touched); it takes the instance at the nearer end of
    the run (on a tie, the larger label; over several lines, the nearest end). In n dimensions
    the lines are the ``(3**n - 1) / 2`` axis and diagonal directions, and with a voxel size a
    line's run is at most twice the largest :func:`axis_gaps` of the axes it moves along (what
    a cut leaves along the diagonal that crosses an oblique border most directly). Free
    cell
    outlines, which the cut leaves untouched, do not grow. ``grow_instances(cut_gap(L, g), g)``
    restores ``L`` except for a few pixels where the original cells were themselves at most
    ``2 * g`` pixels apart (typically where a border meets the background); with unequal
    :func:`axis_gaps` (``gap >= 2`` and an anisotropic voxel size) a few voxels of a border
    oblique to every axis stay background.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer instance labels (e.g. connected components of a prediction): 2D, or one axis
        per value of ``sampling``.
    gap : int
        The gap width used to cut the training targets (pixels of the finest axis).
    everywhere : bool
        Grow every instance into all background within ``gap`` pixels (chessboard steps, one
        ring of neighbours per step, along each axis for its :func:`axis_gaps` steps; where
        two instances reach a pixel in the same step the larger label wins), not only across
        gaps.
    sampling : sequence of float, optional
        Voxel size, one spacing per axis (``(z, y, x)`` for a volume).
    axes : tuple of int, optional
        The axes growth moves along (lines through any other axis are not used); ``None``: all.
        ``(1, 2)`` grows a volume in-plane only: where training cut the gap on annotated slices
        with no annotated slice next to them, no gap was cut along z.

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
    labels, sampling = check_labels_sampling(labels, sampling)
    gaps = axis_gaps(gap, sampling, labels.ndim)
    if axes is not None:
        if not set(axes) <= set(range(labels.ndim)):
            raise ValueError(f"axes must be axes of the {labels.ndim}D labels, got {axes!r}")
        gaps = tuple(g if i in axes else 0 for i, g in enumerate(gaps))
    out = labels.copy()
    if not any(gaps) or labels.size == 0 or not labels.any():
        return out
    work, ids = as_work_labels(labels)
    grown = _grow_everywhere(work, gaps) if everywhere else _grow_across(work, gaps)
    out[...] = grown if ids is None else ids[grown]
    return out


def _grow_everywhere(work: np.ndarray, gaps: tuple[int, ...]) -> np.ndarray:
    grown = work.copy()
    free = work == 0
    for step in range(max(gaps)):
        footprint = np.ones(tuple(3 if g > step else 1 for g in gaps), bool)
        reach = ndi.grey_dilation(grown, footprint=footprint, mode="constant", cval=0)
        take = free & (reach > 0)
        if not take.any():
            break
        grown[take] = reach[take]
        free &= ~take
    return grown


def _grow_across(work: np.ndarray, gaps: tuple[int, ...]) -> np.ndarray:
    """Fill background runs of at most ``2 * gap`` pixels between two different instances.

    Only the candidate pixels (background with two different instances within reach) are
    visited, by their coordinates, so the cost follows the gaps, not the image.
    """
    pad = 2 * max(gaps)
    padded = np.pad(work, pad)
    candidates = (work == 0) & _other_instance_within(work, tuple(2 * g for g in gaps))
    where = np.nonzero(candidates)
    if where[0].size == 0:
        return work.copy()
    base = [c + pad for c in where]
    best = np.full(where[0].size, pad + 1, np.int32)
    winner = np.zeros(where[0].size, work.dtype)
    for line in _lines(work.ndim):
        moves = [g for g, d in zip(gaps, line, strict=True) if d]
        if min(moves) == 0:  # a line through an axis that does not grow
            continue
        span = 2 * max(moves)
        ends = []
        for sign in (1, -1):
            hit = np.zeros(where[0].size, work.dtype)
            dist = np.zeros(where[0].size, np.int32)
            for step in range(1, span + 1):
                ahead = padded[tuple(b + sign * step * d for b, d in zip(base, line, strict=True))]
                new = (hit == 0) & (ahead > 0)
                hit[new] = ahead[new]
                dist[new] = step
            ends.append((hit, dist))
        (fwd, d_fwd), (bwd, d_bwd) = ends
        ok = (fwd > 0) & (bwd > 0) & (fwd != bwd) & (d_fwd + d_bwd - 1 <= span)
        near = np.minimum(d_fwd, d_bwd)
        label = np.where(d_fwd < d_bwd, fwd, np.where(d_bwd < d_fwd, bwd, np.maximum(fwd, bwd)))
        take = ok & (near < best)
        best[take] = near[take]
        winner[take] = label[take]
    grown = work.copy()
    grown[where] = winner
    return grown
