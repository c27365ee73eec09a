"""Border-weight maps, training targets and the gap between touching cells.

The weight map follows Ronneberger et al. (2015), eq. 2::

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

``d1`` and ``d2`` are the Euclidean distances from a background pixel to the nearest pixel of
the nearest and of the second-nearest instance. The border term is 0 on foreground pixels and
wherever fewer than two instances exist. ``w_c`` balances the two classes over the annotated
pixels (``n_annotated / (2 * n_class)``, or 1), and ``w = 0`` outside the annotated region.

Training targets cut a gap between touching instances (:func:`touching_gap`, :func:`cut_gap`)
so that touching cells come out as separate components; post-processing grows the predicted
instances back with :func:`grow_instances`, the same definition of the gap run backwards.

Speed: the border term is below ``BORDER_TOLERANCE * w0`` once ``d1 + d2`` exceeds
:func:`border_radius` (``~4.8 sigma``), so each instance's distance transform is taken only in
its bounding box grown by that radius and folded into running nearest / second-nearest arrays
(memory O(pixels)); on 1024 x 1024 with 500 cells this costs about one full-image distance
transform (``bench/bench_weights.py``). :class:`BorderWeightMap` keeps a map live while labels
are painted, recomputing only around the edits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "BACKGROUND",
    "BORDER_TOLERANCE",
    "FOREGROUND",
    "IGNORE",
    "BorderWeightMap",
    "TrainingTargets",
    "border_radius",
    "border_weight_map",
    "border_weight_stack",
    "check_labels",
    "check_region",
    "class_weights",
    "cut_gap",
    "grow_instances",
    "touching_gap",
    "training_targets",
    "update_border_weights",
]

logger = logging.getLogger(__name__)

#: target class of background pixels (uint8)
BACKGROUND: int = 0
#: target class of foreground (cell) pixels (uint8)
FOREGROUND: int = 1
#: target class of pixels outside the annotated region: no loss there (uint8)
IGNORE: int = 255

#: the border term is dropped where it falls below this fraction of ``w0``
BORDER_TOLERANCE: float = 1e-5


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


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


def _check_gap(gap: object) -> int:
    if isinstance(gap, bool) or not isinstance(gap, (int, np.integer)) or gap < 0:
        raise ValueError(f"gap must be an integer >= 0 (pixels), got {gap!r}")
    return int(gap)


def _check_number(value: object, name: str, *, positive: bool) -> float:
    """A finite real number >= 0 (> 0 when ``positive``), else ValueError."""
    bound = "> 0" if positive else ">= 0"
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    number = float(value) if ok else float("nan")  # type: ignore[arg-type]
    if not np.isfinite(number) or number < 0 or (positive and number == 0):
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return number


def _check_params(w0: float, sigma: float) -> tuple[float, float]:
    return _check_number(w0, "w0", positive=False), _check_number(sigma, "sigma", positive=True)


# --------------------------------------------------------------------------------------------
# The gap between touching instances
# --------------------------------------------------------------------------------------------


def _other_instance_within(labels: np.ndarray, radius: int) -> np.ndarray:
    """True where a chessboard window of ``radius`` holds two different instances or, on an
    instance pixel, an instance other than the pixel's own. ``labels`` from :func:`_as_work`."""
    size = 2 * radius + 1
    big = int(labels.max()) + 1  # exact in float64 (scipy filters pass cval as a double)
    hi = ndi.maximum_filter(labels, size=size, mode="constant", cval=0)
    lo = ndi.minimum_filter(np.where(labels > 0, labels, big), size=size, mode="constant", cval=big)
    # On an instance pixel of label k: hi >= k and lo <= k; another instance exists iff one differs.
    # On a background pixel: two different instances iff lo < hi (lo = big when none).
    return (hi != lo) & (lo != big)


def _as_work(labels: np.ndarray, limit: int = 2**31 - 2) -> tuple[np.ndarray, np.ndarray | None]:
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
    gap = _check_gap(gap)
    if gap == 0 or labels.size == 0:
        return np.zeros(labels.shape, bool)
    work, _ = _as_work(labels)
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
    gap = _check_gap(gap)
    out = labels.copy()
    if gap == 0 or labels.size == 0 or not labels.any():
        return out
    work, ids = _as_work(labels)
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


# --------------------------------------------------------------------------------------------
# Border-weight maps
# --------------------------------------------------------------------------------------------


def border_radius(sigma: float, tolerance: float = BORDER_TOLERANCE) -> float:
    """Distance ``d1 + d2`` beyond which the border term is below ``tolerance * w0``.

    Parameters
    ----------
    sigma : float
        The border term's width in pixels.
    tolerance : float
        Fraction of ``w0`` below which the term counts as 0, in (0, 1).

    Returns
    -------
    float
        ``sigma * sqrt(2 * ln(1 / tolerance))`` (about ``4.8 * sigma`` at ``1e-5``).
    """
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance!r}")
    return float(sigma * np.sqrt(2.0 * np.log(1.0 / tolerance)))


def class_weights(
    foreground: np.ndarray, region: np.ndarray | None = None, class_balance: bool = True
) -> tuple[float, float]:
    """Class-balancing weights ``(w_background, w_foreground)`` over the annotated pixels.

    Parameters
    ----------
    foreground : numpy.ndarray
        bool mask of foreground pixels.
    region : numpy.ndarray, optional
        bool mask of the annotated pixels (default: all).
    class_balance : bool
        ``False`` gives ``(1.0, 1.0)``.

    Returns
    -------
    tuple of float
        ``n_annotated / (2 * n_class)`` for each class; a class with no pixels gets 1.0.
    """
    if not class_balance:
        return 1.0, 1.0
    if region is None:
        n_total = foreground.size
        n_fg = int(np.count_nonzero(foreground))
    else:
        n_total = int(np.count_nonzero(region))
        n_fg = int(np.count_nonzero(foreground & region))
    return _balance(n_total, n_fg)


def _balance(n_total: int, n_fg: int) -> tuple[float, float]:
    n_bg = n_total - n_fg
    w_bg = n_total / (2.0 * n_bg) if n_bg else 1.0
    w_fg = n_total / (2.0 * n_fg) if n_fg else 1.0
    return w_bg, w_fg


def _border_term(labels: np.ndarray, sigma: float) -> np.ndarray:
    """Unit border term ``exp(-(d1 + d2)^2 / (2 sigma^2))`` on background, 0 elsewhere.

    Each instance's distance transform is taken in its bounding box grown by the radius beyond
    which the term is below :data:`BORDER_TOLERANCE` (``d1 + d2 >= radius`` gives 0), and folded
    into running nearest / second-nearest distance arrays: memory O(pixels), time O(sum of the
    grown boxes). Instances with no other instance in their grown box are skipped: near them
    fewer than two instances lie within reach.
    """
    labels, _ = _as_work(labels, limit=max(labels.size, 1024))  # find_objects lists every id
    radius = border_radius(sigma)
    pad = int(np.ceil(radius))
    height, width = labels.shape
    term = np.zeros(labels.shape, np.float32)
    if labels.size == 0:
        return term
    areas = np.bincount(labels.ravel())
    if np.count_nonzero(areas[1:]) < 2:
        return term
    d1 = np.full(labels.shape, np.inf, np.float32)
    d2 = np.full(labels.shape, np.inf, np.float32)
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        y0, y1 = max(sl[0].start - pad, 0), min(sl[0].stop + pad, height)
        x0, x1 = max(sl[1].start - pad, 0), min(sl[1].stop + pad, width)
        sub = labels[y0:y1, x0:x1]
        if np.count_nonzero(sub) == areas[k]:
            continue  # no other instance within reach
        dk = ndi.distance_transform_edt(sub != k).astype(np.float32)
        a, b = d1[y0:y1, x0:x1], d2[y0:y1, x0:x1]
        # second = min(second, max(first, dk)); first = min(first, dk)
        np.minimum(b, np.maximum(a, dk), out=b)
        np.minimum(a, dk, out=a)
    s = np.add(d1, d2, out=d1)
    del d2
    keep = (labels == 0) & (s < radius)
    term[keep] = np.exp(-(s[keep] ** 2) / np.float32(2.0 * sigma**2))
    return term


def border_weight_map(
    labels: np.ndarray,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_balance: bool = True,
    region: np.ndarray | None = None,
) -> np.ndarray:
    """The U-Net weight map of a 2D label image (Ronneberger et al. 2015, eq. 2).

    Parameters
    ----------
    labels : numpy.ndarray
        2D integer instance labels, 0 = background.
    w0 : float
        Height of the border term.
    sigma : float
        Width of the border term in pixels.
    class_balance : bool
        Balance background and foreground over the annotated pixels.
    region : numpy.ndarray, optional
        bool mask of the annotated area; the weight is 0 outside it.

    Returns
    -------
    numpy.ndarray
        float32 weights of the labels' shape.
    """
    labels = check_labels(labels)
    region = check_region(region, labels.shape)
    w0, sigma = _check_params(w0, sigma)
    fg = labels > 0
    w_bg, w_fg = class_weights(fg, region, class_balance)
    border = _border_term(labels, sigma) if w0 > 0 else None
    return _assemble(fg, w_bg, w_fg, w0, border, region)


def border_weight_stack(labels: np.ndarray, **kwargs: object) -> np.ndarray:
    """:func:`border_weight_map` of each 2D slice of a ``(Z, Y, X)`` label stack.

    Parameters
    ----------
    labels : numpy.ndarray
        3D integer labels; each slice is an independent 2D image.
    **kwargs
        Passed to :func:`border_weight_map`; ``region``, if given, is a ``(Z, Y, X)`` mask.

    Returns
    -------
    numpy.ndarray
        float32 weights of the stack's shape.
    """
    labels = check_labels(labels, ndim=3)
    region = check_region(kwargs.pop("region", None), labels.shape)
    out = np.empty(labels.shape, np.float32)
    for z in range(labels.shape[0]):
        out[z] = border_weight_map(
            labels[z], region=None if region is None else region[z], **kwargs
        )
    return out


# --------------------------------------------------------------------------------------------
# Live updates
# --------------------------------------------------------------------------------------------

Box = tuple[slice, slice]


def _grow_box(box: Box, margin: int, shape: tuple[int, ...]) -> Box:
    return tuple(  # type: ignore[return-value]
        slice(max(s.start - margin, 0), min(s.stop + margin, n))
        for s, n in zip(box, shape, strict=True)
    )


def _mask_box(mask: np.ndarray) -> Box | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _shift_box(local: Box, origin: Box) -> Box:
    """A box given relative to the crop ``origin``, in image coordinates."""
    return tuple(  # type: ignore[return-value]
        slice(o.start + b.start, o.start + b.stop) for o, b in zip(origin, local, strict=True)
    )


def _clusters(mask: np.ndarray, reach: int, most: int = 64) -> list[Box]:
    """Boxes of the True pixels, merged until no two boxes are within ``reach`` pixels."""
    box = _mask_box(mask)
    if box is None:
        return []
    parts, n = ndi.label(mask[box], structure=np.ones((3, 3), bool))
    if n == 1 or n > most:  # one stroke, or scattered noise: one box
        return [box]
    boxes = [[s[0].start, s[0].stop, s[1].start, s[1].stop] for s in ndi.find_objects(parts)]
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if (
                    a[0] - reach < b[1]
                    and b[0] - reach < a[1]
                    and a[2] - reach < b[3]
                    and b[2] - reach < a[3]
                ):
                    boxes[i] = [min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])]
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return [_shift_box((slice(y0, y1), slice(x0, x1)), box) for y0, y1, x0, x1 in boxes]


def _inner(outer: Box, inner: Box) -> Box:
    """``inner`` expressed in the coordinates of the crop ``outer``."""
    return tuple(  # type: ignore[return-value]
        slice(i.start - o.start, i.stop - o.start) for o, i in zip(outer, inner, strict=True)
    )


def _check_box(changed: object, shape: tuple[int, ...]) -> Box | None:
    """A ``changed`` hint (bool mask or ``(slice, slice)``) as a box clipped to the image."""
    if (
        isinstance(changed, tuple)
        and len(changed) == 2
        and all(isinstance(s, slice) for s in changed)
    ):
        box = []
        for s, n in zip(changed, shape, strict=True):
            start, stop, step = s.indices(n)
            if step != 1:
                raise ValueError(f"changed must be slices with step 1, got {changed!r}")
            box.append(slice(start, max(stop, start)))
        if any(s.stop <= s.start for s in box):
            return None
        return box[0], box[1]
    mask = np.asarray(changed)
    if mask.dtype != bool or mask.shape != tuple(shape):
        raise ValueError(
            f"changed must be a bool mask of shape {tuple(shape)} or a (slice, slice) box, "
            f"got {type(changed).__name__} {getattr(mask, 'dtype', '')} {mask.shape}"
        )
    return _mask_box(mask)


class BorderWeightMap:
    """A border-weight map kept up to date while labels are painted (the live weight view).

    The object keeps its own copy of the labels, the unit border term (``w0 = 1``) and the class
    counts, so that:

    * :meth:`update` after a few brush strokes recomputes the border term only in the box the
      changed pixels touch, grown by twice the border radius (``~4.8 sigma``), and gives exactly
      what a full recompute gives;
    * changing ``w0`` or ``class_balance`` (:meth:`set_params`) or the region (:meth:`set_region`)
      only reassembles the map (no distance transforms); changing ``sigma`` recomputes it all.

    With ``gap > 0`` the map is that of the labels after :func:`cut_gap`, i.e. the weights that
    :func:`training_targets` with the same ``gap`` gives; with ``gap = 0`` it is
    :func:`border_weight_map` of the labels as they are.

    A stack is a set of independent 2D images: keep one object per slice.

    Parameters
    ----------
    labels : numpy.ndarray
        2D integer instance labels (copied).
    w0, sigma : float
        Border term height and width (pixels).
    class_balance : bool
        Balance the two classes over the annotated pixels.
    region : numpy.ndarray, optional
        bool mask of the annotated area (copied); weight 0 outside.
    gap : int
        Gap cut between touching instances before the map is computed (0: none).

    Examples
    --------
    >>> labels = np.zeros((64, 64), np.int32)
    >>> labels[10:20, 10:20] = 1
    >>> live = BorderWeightMap(labels)
    >>> labels[10:20, 21:30] = 2  # the user paints a second cell
    >>> live.update(labels)  # the box recomputed: the change grown by the border radius
    (slice(0, 44, None), slice(0, 54, None))
    >>> bool(np.array_equal(live.weights, border_weight_map(labels)))
    True
    """

    def __init__(
        self,
        labels: np.ndarray,
        *,
        w0: float = 10.0,
        sigma: float = 5.0,
        class_balance: bool = True,
        region: np.ndarray | None = None,
        gap: int = 0,
    ) -> None:
        labels = check_labels(labels)
        self._w0, self._sigma = _check_params(w0, sigma)
        self._class_balance = bool(class_balance)
        self._gap = _check_gap(gap)
        self._labels = labels.copy()
        self._region = check_region(region, labels.shape)
        if self._region is not None:
            self._region = self._region.copy()
        self._recompute_all()

    # -- read-only state ---------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(Y, X)`` shape of the image."""
        return self._labels.shape  # type: ignore[return-value]

    @property
    def labels(self) -> np.ndarray:
        """The labels the map was last computed from (read-only view)."""
        view = self._labels.view()
        view.flags.writeable = False
        return view

    @property
    def border(self) -> np.ndarray:
        """Unit border term ``exp(-(d1 + d2)^2 / (2 sigma^2))`` (read-only view, no region)."""
        view = self._border.view()
        view.flags.writeable = False
        return view

    @property
    def params(self) -> dict[str, float | bool | int]:
        """Current ``w0``, ``sigma``, ``class_balance`` and ``gap``."""
        return {
            "w0": self._w0,
            "sigma": self._sigma,
            "class_balance": self._class_balance,
            "gap": self._gap,
        }

    @property
    def class_weights(self) -> tuple[float, float]:
        """``(w_background, w_foreground)`` for the current labels, region and settings."""
        if not self._class_balance:
            return 1.0, 1.0
        return _balance(self._n_total, self._n_fg)

    @property
    def weights(self) -> np.ndarray:
        """The float32 weight map (a new array whenever something changed; do not modify)."""
        if self._weights is None:
            self._weights = self._assemble()
        return self._weights

    # -- changes -----------------------------------------------------------------------------
    def update(self, labels: np.ndarray, changed: object = None) -> Box | None:
        """Take new labels and recompute the map where they changed.

        Changed pixels are grouped into clusters whose zones of influence do not overlap, and
        each cluster's box (grown by the gap and twice the border radius) is recomputed on its
        own, so two brush strokes at opposite corners cost two small boxes, not the image.

        Parameters
        ----------
        labels : numpy.ndarray
            The whole new label image, of the same shape.
        changed : bool mask or (slice, slice), optional
            Where labels may have changed; pixels outside it must be unchanged. Without it the
            new labels are compared with the stored copy (one pass over the image).

        Returns
        -------
        tuple of slice or None
            A box covering every pixel whose weight was recomputed, ``None`` when nothing
            changed.
        """
        labels = check_labels(labels)
        if labels.shape != self.shape:
            raise ValueError(f"labels must keep the shape {self.shape}, got {labels.shape}")
        full: Box = (slice(0, self.shape[0]), slice(0, self.shape[1]))
        hint = full if changed is None else _check_box(changed, self.shape)
        if hint is None:
            return None
        diff = labels[hint] != self._labels[hint]
        pad = int(np.ceil(border_radius(self._sigma)))
        reach = 2 * (pad + self._gap) + 1  # clusters farther apart than this do not interact
        done: list[Box] = []
        for local in _clusters(diff, reach):
            box = _shift_box(local, hint)
            out = self._update_box(labels, box, pad)
            if out is not None:
                done.append(out)
        if not done:
            return None
        self._weights = None
        union = tuple(
            slice(min(b[i].start for b in done), max(b[i].stop for b in done)) for i in range(2)
        )
        logger.debug("border weights updated in %d box(es) within %s", len(done), union)
        return union  # type: ignore[return-value]

    def _update_box(self, labels: np.ndarray, box: Box, pad: int) -> Box | None:
        """Copy ``labels[box]`` in and recompute what depends on it; the recomputed box."""
        self._labels[box] = labels[box]
        if self._gap:
            # The cut at a pixel depends on the labels within `gap` of it.
            cut_box = _grow_box(box, self._gap, self.shape)
            ctx = _grow_box(cut_box, self._gap, self.shape)
            new_cut = cut_gap(self._labels[ctx], self._gap)[_inner(ctx, cut_box)]
        else:
            cut_box, new_cut = box, self._labels[box]
        old_cut = self._cut[cut_box]
        diff = _mask_box(new_cut != old_cut)
        if diff is None:
            return None
        # Class counts: only the foreground inside the changed box moves.
        old_fg, new_fg = old_cut > 0, new_cut > 0
        if self._region is not None:
            region = self._region[cut_box]
            old_fg, new_fg = old_fg & region, new_fg & region
        self._n_fg += int(np.count_nonzero(new_fg)) - int(np.count_nonzero(old_fg))
        self._cut[cut_box] = new_cut
        # Border term: it changes only within `radius` of changed pixels (see _border_term),
        # and there it needs the labels within `radius` again.
        out_box = _grow_box(_shift_box(diff, cut_box), pad, self.shape)
        ctx = _grow_box(out_box, pad, self.shape)
        self._border[out_box] = _border_term(self._cut[ctx], self._sigma)[_inner(ctx, out_box)]
        return out_box

    def set_params(
        self,
        *,
        w0: float | None = None,
        sigma: float | None = None,
        class_balance: bool | None = None,
    ) -> None:
        """Change settings: ``w0`` and ``class_balance`` are cheap, ``sigma`` recomputes all.

        Parameters
        ----------
        w0, sigma : float, optional
            New border term height / width; ``None`` keeps the current one.
        class_balance : bool, optional
            New class balancing; ``None`` keeps it.
        """
        new_w0, new_sigma = _check_params(
            self._w0 if w0 is None else w0, self._sigma if sigma is None else sigma
        )
        if class_balance is not None:
            self._class_balance = bool(class_balance)
        self._w0 = new_w0
        if new_sigma != self._sigma:
            self._sigma = new_sigma
            self._border = _border_term(self._cut, self._sigma)
        self._weights = None

    def set_region(self, region: np.ndarray | None) -> None:
        """Change the annotated region (copied); no distance transform is recomputed.

        Parameters
        ----------
        region : numpy.ndarray or None
            bool mask of the labels' shape, or ``None`` for the whole image.
        """
        region = check_region(region, self.shape)
        self._region = None if region is None else region.copy()
        self._count()
        self._weights = None

    # -- internals ---------------------------------------------------------------------------
    def _recompute_all(self) -> None:
        self._cut = cut_gap(self._labels, self._gap) if self._gap else self._labels.copy()
        self._border = _border_term(self._cut, self._sigma)
        self._count()
        self._weights: np.ndarray | None = None

    def _count(self) -> None:
        fg = self._cut > 0
        if self._region is None:
            self._n_total, self._n_fg = fg.size, int(np.count_nonzero(fg))
        else:
            self._n_total = int(np.count_nonzero(self._region))
            self._n_fg = int(np.count_nonzero(fg & self._region))

    def _assemble(self) -> np.ndarray:
        w_bg, w_fg = self.class_weights
        return _assemble(self._cut > 0, w_bg, w_fg, self._w0, self._border, self._region)


def _assemble(
    fg: np.ndarray,
    w_bg: float,
    w_fg: float,
    w0: float,
    border: np.ndarray | None,
    region: np.ndarray | None,
) -> np.ndarray:
    """``w_c + w0 * border``, 0 outside the region: the one place the map is put together."""
    weights = np.where(fg, np.float32(w_fg), np.float32(w_bg)).astype(np.float32)
    if border is not None and w0 > 0:
        weights += np.float32(w0) * border
    if region is not None:
        weights[~region] = 0
    return weights


def update_border_weights(
    state: BorderWeightMap, labels: np.ndarray, changed: object = None
) -> np.ndarray:
    """Bring a :class:`BorderWeightMap` up to date with edited labels and return the map.

    Only the boxes the changed labels touch are recomputed; the result equals
    :func:`border_weight_map` of the new labels (of their :func:`cut_gap` when the state has a
    gap).

    Parameters
    ----------
    state : BorderWeightMap
        The live map, updated in place.
    labels : numpy.ndarray
        The whole new label image.
    changed : bool mask or (slice, slice), optional
        Where labels may have changed (see :meth:`BorderWeightMap.update`).

    Returns
    -------
    numpy.ndarray
        The float32 weight map.
    """
    if not isinstance(state, BorderWeightMap):
        raise ValueError(f"state must be a BorderWeightMap, got {type(state).__name__}")
    state.update(labels, changed)
    return state.weights


# --------------------------------------------------------------------------------------------
# Training targets
# --------------------------------------------------------------------------------------------


@dataclass
class TrainingTargets:
    """Targets and weights for one 2D annotated image.

    Attributes
    ----------
    classes : numpy.ndarray
        uint8 ``(Y, X)``: :data:`BACKGROUND`, :data:`FOREGROUND` or :data:`IGNORE`.
    weights : numpy.ndarray
        float32 ``(Y, X)`` loss weights, 0 where ``classes == IGNORE``.
    """

    classes: np.ndarray
    weights: np.ndarray


def training_targets(
    labels: np.ndarray,
    *,
    region: np.ndarray | None = None,
    gap: int = 1,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_balance: bool = True,
    border_weights: bool = True,
) -> TrainingTargets:
    """Target classes and loss weights for one annotated 2D image.

    Foreground is every instance pixel minus :func:`touching_gap` (so touching cells come out
    separate), background every other pixel of the annotated region, ignored the rest. The
    weights are :func:`border_weight_map` of the cut labels (gap pixels count as background).

    Parameters
    ----------
    labels : numpy.ndarray
        2D integer instance labels.
    region : numpy.ndarray, optional
        bool mask of the annotated area (default: the whole image).
    gap : int
        Gap cut between touching instances, in pixels from each side (0: none).
    w0, sigma : float
        Border term height and width (pixels).
    class_balance : bool
        Balance the two classes over the annotated pixels.
    border_weights : bool
        Add the border term (``False``: class weights only, an ablation).

    Returns
    -------
    TrainingTargets
        ``classes`` (uint8) and ``weights`` (float32).

    Examples
    --------
    >>> lab = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    >>> training_targets(lab).classes
    array([[1, 0, 0, 1],
           [1, 0, 0, 1]], dtype=uint8)
    """
    labels = check_labels(labels)
    region = check_region(region, labels.shape)
    w0, sigma = _check_params(w0, sigma)
    cut = cut_gap(labels, gap)
    classes = np.where(cut > 0, np.uint8(FOREGROUND), np.uint8(BACKGROUND)).astype(np.uint8)
    if region is not None:
        classes[~region] = IGNORE
    weights = border_weight_map(
        cut,
        w0=w0 if border_weights else 0.0,
        sigma=sigma,
        class_balance=class_balance,
        region=region,
    )
    return TrainingTargets(classes=classes, weights=weights)
