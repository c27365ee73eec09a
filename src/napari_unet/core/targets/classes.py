"""Targets of the *classes* mode: scribbles where value k >= 1 is class k and 0 is not painted.

This is the convention of ilastik and APOC: a few strokes per class suffice, because only the
painted pixels carry loss. Target class ``k - 1`` is learnt where class ``k`` is painted,
:data:`~napari_unet.core.targets.IGNORE` everywhere else, and each class is weighted by
``w_c = n_annotated / (K * n_c)`` over the painted pixels (``K`` classes, ``n_c`` pixels of class
``c``), the class balance of the design's weight map for K classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .labels import check_labels, check_region
from .weight_map import IGNORE, TrainingTargets

__all__ = [
    "MAX_CLASSES",
    "check_class_labels",
    "class_balance_weights",
    "class_targets",
    "painted_classes",
]

#: Largest class value a scribble layer may hold (targets are uint8, 255 is "ignored").
MAX_CLASSES = 255


def check_class_labels(labels: object, name: str = "labels", ndim: int | None = 2) -> np.ndarray:
    """Check a scribble image of the classes mode and return it as a numpy array.

    Parameters
    ----------
    labels : array-like
        Integer image: 0 = not painted, k = class k (1 to :data:`MAX_CLASSES`).
    name, ndim : str, int or None
        The name in messages and the dimensions required, as in
        :func:`~napari_unet.core.targets.labels.check_labels`, which checks the rest.

    Returns
    -------
    numpy.ndarray
        The scribbles (not copied when already a numpy array).

    Raises
    ------
    ValueError
        As :func:`~napari_unet.core.targets.labels.check_labels`, and on a value above
        :data:`MAX_CLASSES`.

    Examples
    --------
    >>> int(check_class_labels(np.array([[0, 1], [2, 2]])).max())
    2
    """
    arr = check_labels(labels, name=name, ndim=ndim)
    top = int(arr.max()) if arr.size else 0
    if top > MAX_CLASSES:
        raise ValueError(
            f"{name} holds the value {top}, but classes are numbered 1 to {MAX_CLASSES} "
            "(0 = not painted); paint each class with its own small value"
        )
    return arr


def painted_classes(labels: Sequence[np.ndarray]) -> np.ndarray:
    """The class values painted in any of ``labels`` (0, not painted, left out).

    Parameters
    ----------
    labels : sequence of numpy.ndarray
        Scribble images.

    Returns
    -------
    numpy.ndarray
        Sorted distinct values >= 1.

    Examples
    --------
    >>> painted_classes([np.array([[0, 3]]), np.array([[1, 0]])])
    array([1, 3])
    """
    found = [np.unique(lab) for lab in labels if np.size(lab)]
    values = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
    return values[values > 0]


def class_balance_weights(counts: np.ndarray, class_balance: bool = True) -> np.ndarray:
    """Per-class weights ``n_annotated / (K * n_c)`` from the painted pixels per class.

    Parameters
    ----------
    counts : numpy.ndarray
        Painted pixels per class, ``(K,)``.
    class_balance : bool
        ``False`` gives 1 for every class.

    Returns
    -------
    numpy.ndarray
        float32 ``(K,)``; a class without painted pixels gets 1.

    Examples
    --------
    >>> class_balance_weights(np.array([30, 10, 0]))
    array([0.44444445, 1.3333334 , 1.        ], dtype=float32)
    """
    counts = np.asarray(counts, np.float64)
    if not class_balance:
        return np.ones(counts.shape, np.float32)
    total, k = counts.sum(), counts.size
    safe = np.where(counts > 0, counts, 1.0)
    return np.where(counts > 0, total / (k * safe), 1.0).astype(np.float32)


def class_targets(
    labels: np.ndarray,
    n_classes: int,
    *,
    region: np.ndarray | None = None,
    class_balance: bool = True,
) -> TrainingTargets:
    """Target classes and loss weights of one 2D scribble image.

    Parameters
    ----------
    labels : numpy.ndarray
        2D scribbles: 0 = not painted, k = class k.
    n_classes : int
        Number of classes ``K`` of the model (at least the largest value painted).
    region : numpy.ndarray, optional
        bool mask; painted pixels outside it carry no loss (default: all count).
    class_balance : bool
        Weight class ``c`` by ``n_annotated / (K * n_c)`` over this image's painted pixels.

    Returns
    -------
    TrainingTargets
        ``classes``: uint8 ``k - 1`` where class ``k`` is painted, ``IGNORE`` elsewhere;
        ``weights``: float32 class weights there, 0 elsewhere.

    Examples
    --------
    >>> t = class_targets(np.array([[1, 1, 1, 0, 2]]), 2)
    >>> t.classes
    array([[  0,   0,   0, 255,   1]], dtype=uint8)
    >>> [round(float(w), 3) for w in t.weights[0]]
    [0.667, 0.667, 0.667, 0.0, 2.0]
    """
    labels = check_class_labels(labels)
    region = check_region(region, labels.shape)
    top = int(labels.max()) if labels.size else 0
    if top > n_classes:
        raise ValueError(f"labels hold class {top} but the model has {n_classes} classes")
    painted = labels > 0 if region is None else (labels > 0) & region
    classes = np.full(labels.shape, IGNORE, np.uint8)
    classes[painted] = (labels[painted] - 1).astype(np.uint8)
    counts = np.bincount(classes[painted], minlength=n_classes)[:n_classes]
    table = class_balance_weights(counts, class_balance)
    weights = np.zeros(labels.shape, np.float32)
    weights[painted] = table[classes[painted]]
    return TrainingTargets(classes=classes, weights=weights)
