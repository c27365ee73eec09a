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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "BACKGROUND",
    "FOREGROUND",
    "IGNORE",
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
]

logger = logging.getLogger(__name__)

#: target class of background pixels (uint8)
BACKGROUND: int = 0
#: target class of foreground (cell) pixels (uint8)
FOREGROUND: int = 1
#: target class of pixels outside the annotated region: no loss there (uint8)
IGNORE: int = 255

#: the border term is dropped where it falls below this fraction of ``w0``
BORDER_TOLERANCE: float = 1e-4


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


def _check_params(w0: float, sigma: float) -> tuple[float, float]:
    if not np.isfinite(w0) or w0 < 0:
        raise ValueError(f"w0 must be a finite number >= 0, got {w0!r}")
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number > 0 (pixels), got {sigma!r}")
    return float(w0), float(sigma)


# --------------------------------------------------------------------------------------------
# The gap between touching instances
# --------------------------------------------------------------------------------------------


def _other_instance_within(labels: np.ndarray, radius: int) -> np.ndarray:
    """True where a chessboard window of ``radius`` holds two different instances or, on an
    instance pixel, an instance other than the pixel's own."""
    size = 2 * radius + 1
    big = np.iinfo(labels.dtype).max
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
    gap = _check_gap(gap)
    if gap == 0 or labels.size == 0:
        return np.zeros(labels.shape, bool)
    work = labels if labels.dtype.itemsize >= 4 else labels.astype(np.int32)
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


def grow_instances(labels: np.ndarray, gap: int = 1, *, everywhere: bool = False) -> np.ndarray:
    """Grow instances back across the gaps that :func:`cut_gap` cut: the inverse of the cut.

    Each instance grows into background by up to ``gap`` pixels (chessboard steps, one
    8-neighbour ring per step), never over another instance. Where two instances reach the same
    pixel in the same step the larger label wins, so the result is deterministic. By default
    growth is limited to background pixels that have two different instances within
    ``2 * gap`` pixels, i.e. to pixels that could lie in a cut gap: free cell outlines, which
    the cut leaves untouched, are not grown. ``grow_instances(cut_gap(L, g), g)`` restores
    ``L`` up to a few pixels where borders are diagonal.

    Parameters
    ----------
    labels : numpy.ndarray
        2D integer instance labels (e.g. connected components of a prediction).
    gap : int
        The gap width used to cut the training targets.
    everywhere : bool
        Grow into every background pixel within ``gap``, not only into gaps between instances.

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
    work = labels if labels.dtype.itemsize >= 4 else labels.astype(np.int32)
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
    if not everywhere:
        # Keep only the growth that lands in a gap: pixels within `gap` of another instance.
        added = (work == 0) & (grown > 0)
        grown[added & ~_other_instance_within(grown, gap)] = 0
    out[...] = grown
    return out


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
        ``sigma * sqrt(2 * ln(1 / tolerance))`` (about ``4.3 * sigma`` at ``1e-4``).
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
    """Unit border term ``exp(-(d1 + d2)^2 / (2 sigma^2))`` on background, 0 elsewhere."""
    radius = border_radius(sigma)
    pad = int(np.ceil(radius))
    height, width = labels.shape
    d1 = np.full(labels.shape, np.inf, np.float32)
    d2 = np.full(labels.shape, np.inf, np.float32)
    n = 0
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        n += 1
        y0, y1 = max(sl[0].start - pad, 0), min(sl[0].stop + pad, height)
        x0, x1 = max(sl[1].start - pad, 0), min(sl[1].stop + pad, width)
        box = (slice(y0, y1), slice(x0, x1))
        dk = ndi.distance_transform_edt(labels[box] != k).astype(np.float32)
        a, b = d1[box], d2[box]
        nearer = dk < a
        b[...] = np.where(nearer, a, np.minimum(b, dk))
        a[...] = np.where(nearer, dk, a)
    term = np.zeros(labels.shape, np.float32)
    if n < 2:
        return term
    s = d1 + d2
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
    weights = np.where(fg, np.float32(w_fg), np.float32(w_bg)).astype(np.float32)
    if w0 > 0:
        weights += np.float32(w0) * _border_term(labels, sigma)
    if region is not None:
        weights[~region] = 0
    return weights


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
