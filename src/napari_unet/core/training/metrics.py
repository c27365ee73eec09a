"""Segmentation quality: IoU and average precision with one-to-one instance matching.

The definitions follow StarDist and Cellpose: a predicted instance and a true instance are
matched one-to-one (Hungarian assignment on their intersection over union, IoU), a match counts
as a true positive (TP) when its IoU reaches the threshold, unmatched predictions are false
positives (FP) and unmatched true instances false negatives (FN), and the "average precision" at
that threshold is ``AP = TP / (TP + FP + FN)``. For thresholds of 0.5 and above the matching is
unique anyway (two objects cannot both overlap a third by more than half of their union).

Labels may have any number of dimensions: a ``(Z, Y, X)`` volume is scored as 3D objects (a
nucleus labelled once per slice scores as many false positives, see
:func:`napari_unet.core.inference.link_slices`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "Matching",
    "average_precision",
    "class_iou",
    "iou",
    "iou_matrix",
    "match_instances",
    "window_counts",
]

DEFAULT_THRESHOLDS = (0.5, 0.75, 0.9)


def _check_labels(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer instance labels, got dtype {array.dtype}")
    if array.size and array.min() < 0:
        raise ValueError(f"{name} must hold labels >= 0, got a minimum of {array.min()}")
    return array


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks (non-zero = inside).

    Parameters
    ----------
    a, b : numpy.ndarray
        Masks of the same shape.

    Returns
    -------
    float
        ``|a & b| / |a | b|``; 1.0 when both are empty.

    Examples
    --------
    >>> iou(np.array([1, 1, 0, 0]), np.array([0, 1, 1, 0]))
    0.3333333333333333
    """
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    if a.shape != b.shape:
        raise ValueError(f"masks must have the same shape, got {a.shape} and {b.shape}")
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def iou_matrix(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every true instance with every predicted instance.

    Parameters
    ----------
    true, pred : numpy.ndarray
        Integer instance labels of the same shape (0 = background).

    Returns
    -------
    matrix : numpy.ndarray
        float64 ``(n_true, n_pred)`` IoU values.
    true_ids, pred_ids : numpy.ndarray
        The label values the rows and columns stand for (sorted, without 0).

    Examples
    --------
    >>> m, t, p = iou_matrix(np.array([[1, 1, 2, 2]]), np.array([[3, 3, 3, 0]]))
    >>> m.round(3).tolist(), t.tolist(), p.tolist()
    ([[0.667], [0.25]], [1, 2], [3])
    """
    true = _check_labels(true, "true")
    pred = _check_labels(pred, "pred")
    if true.shape != pred.shape:
        raise ValueError(
            f"true and pred must have the same shape, got {true.shape} and {pred.shape}"
        )
    true_ids, t = _distinct(true)
    pred_ids, p = _distinct(pred)
    # Row/column 0 stand for background when present; drop them from the result.
    t0 = int(true_ids.size > 0 and true_ids[0] == 0)
    p0 = int(pred_ids.size > 0 and pred_ids[0] == 0)
    nt, npred = true_ids.size, pred_ids.size
    overlap = np.bincount(t * npred + p, minlength=nt * npred).reshape(nt, npred)
    size_t = overlap.sum(axis=1, keepdims=True)
    size_p = overlap.sum(axis=0, keepdims=True)
    union = size_t + size_p - overlap
    matrix = overlap / np.maximum(union, 1)
    return matrix[t0:, p0:].astype(np.float64), true_ids[t0:], pred_ids[p0:]


def _distinct(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(labels.ravel(), return_inverse=True)`` of non-negative labels, by counting
    instead of sorting where the largest label is not much above the pixel count (validation
    scores every held-out view for many post-processing candidates)."""
    flat = labels.ravel()
    top = int(flat.max(initial=0)) + 1
    if flat.dtype == np.uint64 or top > 4 * flat.size + 1024:
        return np.unique(flat, return_inverse=True)
    ids = np.flatnonzero(np.bincount(flat, minlength=top))
    index = np.zeros(top, np.intp)
    index[ids] = np.arange(ids.size)
    return ids.astype(flat.dtype), index[flat]


@dataclass(frozen=True)
class Matching:
    """Result of matching predicted instances to true instances at one IoU threshold.

    Attributes
    ----------
    threshold : float
        The IoU a matched pair must reach to count as a true positive.
    tp, fp, fn : int
        True positives, false positives (unmatched predictions), false negatives (missed
        true instances).
    n_true, n_pred : int
        Number of true and predicted instances.
    mean_matched_iou : float
        Mean IoU of the true-positive pairs (0 when there are none).
    pairs : tuple of (int, int)
        ``(true label, predicted label)`` of every true-positive pair.
    """

    threshold: float
    tp: int
    fp: int
    fn: int
    n_true: int
    n_pred: int
    mean_matched_iou: float
    pairs: tuple[tuple[int, int], ...] = ()

    @property
    def average_precision(self) -> float:
        """``TP / (TP + FP + FN)``; 1.0 when there is nothing to find and nothing was found."""
        total = self.tp + self.fp + self.fn
        return 1.0 if total == 0 else self.tp / total

    @property
    def precision(self) -> float:
        """``TP / (TP + FP)``; 1.0 without predictions."""
        return 1.0 if self.tp + self.fp == 0 else self.tp / (self.tp + self.fp)

    @property
    def recall(self) -> float:
        """``TP / (TP + FN)``; 1.0 without true instances."""
        return 1.0 if self.tp + self.fn == 0 else self.tp / (self.tp + self.fn)

    @property
    def f1(self) -> float:
        """``2 TP / (2 TP + FP + FN)``."""
        total = 2 * self.tp + self.fp + self.fn
        return 1.0 if total == 0 else 2 * self.tp / total


def _assign(matrix: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one assignment maximising the number of pairs over the threshold, then IoU."""
    if matrix.size == 0:
        return np.zeros(0, int), np.zeros(0, int)
    ok = matrix >= threshold
    n_min = min(matrix.shape)
    # As StarDist: every pair over the threshold is worth more than any sum of IoUs, so the
    # assignment first maximises the number of matches and then their IoU.
    cost = -(ok.astype(np.float64)) - matrix / (2 * n_min)
    rows, cols = linear_sum_assignment(cost)
    keep = ok[rows, cols]
    return rows[keep], cols[keep]


def match_instances(true: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> Matching:
    """Match predicted instances to true instances one-to-one.

    Parameters
    ----------
    true, pred : numpy.ndarray
        Integer instance labels of the same shape (0 = background).
    threshold : float
        IoU (in (0, 1]) a pair must reach to be a true positive.

    Returns
    -------
    Matching
        Counts, the average precision ``TP / (TP + FP + FN)`` and the matched pairs.

    Examples
    --------
    >>> true = np.array([[1, 1, 0, 2, 2]])
    >>> pred = np.array([[5, 5, 7, 0, 0]])
    >>> m = match_instances(true, pred, 0.5)
    >>> m.tp, m.fp, m.fn, m.average_precision
    (1, 1, 1, 0.3333333333333333)
    """
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    matrix, true_ids, pred_ids = iou_matrix(true, pred)
    rows, cols = _assign(matrix, float(threshold))
    tp = int(rows.size)
    return Matching(
        threshold=float(threshold),
        tp=tp,
        fp=int(pred_ids.size) - tp,
        fn=int(true_ids.size) - tp,
        n_true=int(true_ids.size),
        n_pred=int(pred_ids.size),
        mean_matched_iou=float(matrix[rows, cols].mean()) if tp else 0.0,
        pairs=tuple((int(true_ids[r]), int(pred_ids[c])) for r, c in zip(rows, cols, strict=True)),
    )


def average_precision(
    true: np.ndarray | Sequence[np.ndarray],
    pred: np.ndarray | Sequence[np.ndarray],
    thresholds: float | Sequence[float] = DEFAULT_THRESHOLDS,
) -> np.ndarray | float:
    """Average precision ``TP / (TP + FP + FN)`` at one or more IoU thresholds.

    Parameters
    ----------
    true, pred : numpy.ndarray or sequence of numpy.ndarray
        Instance labels of one image, or of several images given as two sequences of the same
        length; counts are summed over the images before the ratio is taken (as StarDist's
        ``matching_dataset``).
    thresholds : float or sequence of float
        IoU thresholds in (0, 1].

    Returns
    -------
    numpy.ndarray or float
        float64, one value per threshold; a float when ``thresholds`` is a single number.

    Examples
    --------
    >>> true = np.array([[1, 1, 0, 2, 2]])
    >>> average_precision(true, true, [0.5, 0.9]).tolist()
    [1.0, 1.0]
    """
    single = np.ndim(thresholds) == 0
    ts = [float(t) for t in np.atleast_1d(thresholds)]
    if isinstance(true, np.ndarray) != isinstance(pred, np.ndarray):
        raise ValueError("true and pred must both be arrays or both be sequences of arrays")
    trues = [true] if isinstance(true, np.ndarray) else list(true)
    preds = [pred] if isinstance(pred, np.ndarray) else list(pred)
    if len(trues) != len(preds):
        raise ValueError(
            f"true and pred must hold the same number of images, got {len(trues)} and {len(preds)}"
        )
    counts = np.zeros((len(ts), 3), dtype=np.int64)
    for t_img, p_img in zip(trues, preds, strict=True):
        matrix, true_ids, pred_ids = iou_matrix(t_img, p_img)
        for i, th in enumerate(ts):
            if not 0.0 < th <= 1.0:
                raise ValueError(f"thresholds must be in (0, 1], got {th!r}")
            tp = _assign(matrix, th)[0].size
            counts[i] += (tp, pred_ids.size - tp, true_ids.size - tp)
    total = counts.sum(axis=1)
    ap = np.where(total > 0, counts[:, 0] / np.maximum(total, 1), 1.0)
    return float(ap[0]) if single else ap


def window_counts(
    true: np.ndarray, pred: np.ndarray, window: np.ndarray, threshold: float = 0.5
) -> tuple[int, int, int]:
    """True positives, false positives and false negatives inside a scoring window.

    For scoring a crop of a larger image (a held-out block): instances are matched on the whole
    arrays given (so a cell cut by the window's edge is matched whole), and an instance counts
    when at least half of its pixels lie inside ``window``. A counted true instance matched at
    ``threshold`` is a true positive, unmatched a false negative; a counted prediction matched to
    nothing is a false positive.

    Parameters
    ----------
    true, pred : numpy.ndarray
        Integer instance labels of the same shape (0 = background); ``true`` is 0 where the
        truth is unknown.
    window : numpy.ndarray
        bool mask of the pixels scored (e.g. the held-out block, annotated pixels only).
    threshold : float
        IoU a matched pair must reach, in (0, 1].

    Returns
    -------
    tp, fp, fn : int
        Counts; ``tp / (tp + fp + fn)`` is the average precision.

    Examples
    --------
    >>> true = np.array([[1, 1, 0, 2, 2, 0, 3, 3]])
    >>> pred = np.array([[4, 4, 0, 0, 0, 0, 5, 5]])
    >>> window = np.array([[1, 1, 1, 1, 1, 1, 0, 0]], bool)  # cell 3 lies outside
    >>> window_counts(true, pred, window)
    (1, 0, 1)
    """
    window = np.asarray(window, bool)
    matrix, true_ids, pred_ids = iou_matrix(true, pred)
    rows, cols = _assign(matrix, float(threshold))
    t_in = _inside(np.asarray(true), window, true_ids)
    p_in = _inside(np.asarray(pred), window, pred_ids)
    tp = int(np.count_nonzero(t_in[rows]))
    fn = int(np.count_nonzero(t_in)) - tp
    matched = np.zeros(pred_ids.size, bool)
    matched[cols] = True
    fp = int(np.count_nonzero(p_in & ~matched))
    return tp, fp, fn


def _inside(labels: np.ndarray, window: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Whether at least half of each instance ``ids`` lies inside ``window``."""
    if ids.size == 0:
        return np.zeros(0, bool)
    top = int(labels.max()) + 1
    total = np.bincount(labels.ravel(), minlength=top)
    inside = np.bincount(labels[window].ravel(), minlength=top)
    return 2 * inside[ids] >= total[ids]


def class_iou(
    truth: np.ndarray, pred: np.ndarray, n_classes: int, where: np.ndarray | None = None
) -> np.ndarray:
    """Per-class IoU of a semantic segmentation (class ids 1..K, 0 = unknown in ``truth``).

    Parameters
    ----------
    truth : numpy.ndarray
        True class ids; pixels with 0 are not scored.
    pred : numpy.ndarray
        Predicted class ids, same shape.
    n_classes : int
        Number of classes ``K``.
    where : numpy.ndarray, optional
        bool mask of the pixels to score (besides ``truth > 0``).

    Returns
    -------
    numpy.ndarray
        float64 ``(K,)``: ``|T_k & P_k| / |T_k | P_k|`` over the scored pixels; NaN for a
        class found neither in ``truth`` nor in ``pred`` there.

    Examples
    --------
    >>> class_iou(np.array([1, 1, 2, 0]), np.array([1, 2, 2, 2]), 2).tolist()
    [0.5, 0.5]
    """
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"truth and pred must have one shape, got {truth.shape} and {pred.shape}")
    scored = truth > 0 if where is None else (truth > 0) & where
    t = truth[scored].astype(np.int64)
    p = pred[scored].astype(np.int64)
    k = int(n_classes) + 1
    confusion = np.bincount(t * k + np.clip(p, 0, k - 1), minlength=k * k).reshape(k, k)[1:, 1:]
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - inter
    # predictions of class 0 (none) count as misses of the true class only
    union = union + np.bincount(t[p == 0], minlength=k)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)
