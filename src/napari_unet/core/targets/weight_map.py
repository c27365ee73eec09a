"""Border-weight maps and training targets.

The weight map follows Ronneberger et al. (2015), eq. 2::

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

``d1`` and ``d2`` are the Euclidean distances from a background pixel to the nearest pixel of
the nearest and of the second-nearest instance. The border term is 0 on foreground pixels and
wherever fewer than two instances exist. ``w_c`` balances the two classes over the annotated
pixels (``n_annotated / (2 * n_class)``, or 1), and ``w = 0`` outside the annotated region.

Training targets cut a gap between touching instances (:func:`touching_gap`, :func:`cut_gap`)
so that touching cells come out as separate components; post-processing grows the predicted
instances back with :func:`grow_instances`, the same definition of the gap run backwards.

The code lives in small modules of :mod:`napari_unet.core.targets`, which exports every public
name:

* :mod:`.labels`: :func:`check_labels`, :func:`check_region`, :func:`split_components`;
* :mod:`.gap`: :func:`touching_gap`, :func:`cut_gap`, :func:`grow_instances`;
* :mod:`.terms`: the two terms of eq. 2 (:func:`class_weights`, the border term cut off at
  :func:`border_radius`, ``~4.8 sigma``, which keeps it about as cheap as one full-image
  distance transform; ``bench/bench_weights.py``);
* :mod:`.live`: :class:`BorderWeightMap` keeps a map live while labels are painted,
  recomputing only around the edits (:func:`update_border_weights`);
* here: :func:`border_weight_map`, :func:`border_weight_stack`, :func:`training_targets`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .gap import cut_gap
from .labels import check_labels, check_labels_sampling, check_region
from .terms import (
    assemble_weights,
    border_term,
    check_weight_params,
    class_weights,
)

__all__ = [
    "BACKGROUND",
    "FOREGROUND",
    "IGNORE",
    "TrainingTargets",
    "border_weight_map",
    "border_weight_stack",
    "training_targets",
]


#: target class of background pixels (uint8)
BACKGROUND: int = 0
#: target class of foreground (cell) pixels (uint8)
FOREGROUND: int = 1
#: target class of pixels outside the annotated region: no loss there (uint8)
IGNORE: int = 255


def border_weight_map(
    labels: np.ndarray,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_balance: bool = True,
    region: np.ndarray | None = None,
    sampling: tuple[float, ...] | None = None,
) -> np.ndarray:
    """The U-Net weight map of a label image or volume (Ronneberger et al. 2015, eq. 2).

    Parameters
    ----------
    labels : numpy.ndarray
        Integer instance labels, 0 = background: 2D ``(Y, X)``, or one axis per value of
        ``sampling`` (a ``(Z, Y, X)`` volume with ``sampling=(z, y, x)``).
    w0 : float
        Height of the border term.
    sigma : float
        Width of the border term in pixels of the finest axis.
    class_balance : bool
        Balance background and foreground over the annotated pixels.
    region : numpy.ndarray, optional
        bool mask of the annotated area; the weight is 0 outside it.
    sampling : sequence of float, optional
        Voxel size, one spacing per axis (e.g. a napari layer's ``scale``): the distances
        ``d1``, ``d2`` are Euclidean in physical units, counted in pixels of the finest axis.
        ``None``: 2D labels with square pixels. A stack of independent 2D slices goes to
        :func:`border_weight_stack` instead.

    Returns
    -------
    numpy.ndarray
        float32 weights of the labels' shape.

    Examples
    --------
    >>> volume = np.zeros((5, 16, 16), np.int32)
    >>> volume[1:4, 2:8, 2:8], volume[1:4, 2:8, 9:14] = 1, 2
    >>> w = border_weight_map(volume, sampling=(3.0, 1.0, 1.0), class_balance=False)
    >>> w.shape, round(float(w[2, 5, 8]), 3)  # between the two: d1 = d2 = 1
    ((5, 16, 16), 10.231)
    """
    labels, sampling = check_labels_sampling(labels, sampling)
    region = check_region(region, labels.shape)
    w0, sigma = check_weight_params(w0, sigma)
    fg = labels > 0
    w_bg, w_fg = class_weights(fg, region, class_balance)
    border = border_term(labels, sigma, sampling) if w0 > 0 else None
    return assemble_weights(fg, w_bg, w_fg, w0, border, region)


def border_weight_stack(labels: np.ndarray, **kwargs: object) -> np.ndarray:
    """:func:`border_weight_map` of each 2D slice of a ``(Z, Y, X)`` label stack.

    Parameters
    ----------
    labels : numpy.ndarray
        3D integer labels; each slice is an independent 2D image.
    **kwargs
        Passed to :func:`border_weight_map`; ``region``, if given, is a ``(Z, Y, X)`` mask;
        ``sampling``, if given, is the pixel size ``(y, x)`` of every slice.

    Returns
    -------
    numpy.ndarray
        float32 weights of the stack's shape.
    """
    labels = check_labels(labels, ndim=3)
    sampling = kwargs.get("sampling")
    if sampling is not None and np.ndim(sampling) == 1 and len(sampling) != 2:  # type: ignore[arg-type]
        raise ValueError(
            "border_weight_stack weights independent 2D slices: sampling must be the pixel "
            f"size (y, x), got {sampling!r}; for one volume call "
            "border_weight_map(labels, sampling=(z, y, x))"
        )
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
    """Targets and weights for one annotated 2D image or 3D volume.

    Attributes
    ----------
    classes : numpy.ndarray
        uint8 of the labels' shape: :data:`BACKGROUND`, :data:`FOREGROUND` or :data:`IGNORE`.
    weights : numpy.ndarray
        float32 loss weights of the labels' shape, 0 where ``classes == IGNORE``.
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
    sampling: tuple[float, ...] | None = None,
) -> TrainingTargets:
    """Target classes and loss weights for one annotated 2D image or 3D volume.

    Foreground is every instance pixel minus :func:`touching_gap` (so touching cells come out
    separate), background every other pixel of the annotated region, ignored the rest. The
    weights are :func:`border_weight_map` of the cut labels (gap pixels count as background).

    Parameters
    ----------
    labels : numpy.ndarray
        Integer instance labels: 2D, or one axis per value of ``sampling``.
    region : numpy.ndarray, optional
        bool mask of the annotated area (default: the whole image).
    gap : int
        Gap cut between touching instances, in pixels of the finest axis from each side (0:
        none); see :func:`~napari_unet.core.targets.touching_gap`.
    w0, sigma : float
        Border term height and width (sigma in pixels of the finest axis).
    class_balance : bool
        Balance the two classes over the annotated pixels.
    border_weights : bool
        Add the border term (``False``: class weights only, an ablation).
    sampling : sequence of float, optional
        Voxel size, one spacing per axis (``(z, y, x)`` for a volume); ``None``: a 2D image
        with square pixels.

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
    labels, sampling = check_labels_sampling(labels, sampling)
    region = check_region(region, labels.shape)
    w0, sigma = check_weight_params(w0, sigma)
    cut = cut_gap(labels, gap, sampling=sampling)
    classes = np.where(cut > 0, np.uint8(FOREGROUND), np.uint8(BACKGROUND)).astype(np.uint8)
    if region is not None:
        classes[~region] = IGNORE
    weights = border_weight_map(
        cut,
        w0=w0 if border_weights else 0.0,
        sigma=sigma,
        class_balance=class_balance,
        region=region,
        sampling=sampling,
    )
    return TrainingTargets(classes=classes, weights=weights)
