"""The two terms of the U-Net weight map: class balance and the border term.

The weight map follows Ronneberger et al. (2015), eq. 2::

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

``w_c`` balances the two classes over the annotated pixels (:func:`class_weights`). ``d1`` and
``d2`` are the Euclidean distances from a background pixel to the nearest pixel of the nearest
and of the second-nearest instance; the border term is 0 on foreground pixels and wherever
fewer than two instances exist.

Any number of dimensions: with a voxel size (``sampling``, one spacing per axis, e.g.
``(z, y, x)``) the distances are Euclidean in physical units, expressed in pixels of the finest
axis (:func:`pixel_sampling`), so ``sigma`` keeps its meaning in-plane and a z spacing twice the
in-plane spacing counts each slice as two pixels.

Speed: the border term is below ``BORDER_TOLERANCE * w0`` once ``d1 + d2`` exceeds
:func:`border_radius` (``~4.8 sigma``), so each instance's distance transform is taken only in
its bounding box grown by that radius and folded into running nearest / second-nearest arrays
(memory O(pixels)); on 1024 x 1024 with 500 cells this costs about one full-image distance
transform (``bench/bench_weights.py``).

:func:`napari_unet.core.targets.border_weight_map` and
:class:`napari_unet.core.targets.live.BorderWeightMap` put the terms together.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .labels import as_work_labels

__all__ = [
    "BORDER_TOLERANCE",
    "border_radius",
    "class_weights",
    "pixel_sampling",
]

#: the border term is dropped where it falls below this fraction of ``w0``
BORDER_TOLERANCE: float = 1e-5


def _check_number(value: object, name: str, *, positive: bool) -> float:
    """A finite real number >= 0 (> 0 when ``positive``), else ValueError."""
    bound = "> 0" if positive else ">= 0"
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    number = float(value) if ok else float("nan")  # type: ignore[arg-type]
    if not np.isfinite(number) or number < 0 or (positive and number == 0):
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return number


def check_weight_params(w0: float, sigma: float) -> tuple[float, float]:
    return _check_number(w0, "w0", positive=False), _check_number(sigma, "sigma", positive=True)


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
    return balance_weights(n_total, n_fg)


def balance_weights(n_total: int, n_fg: int) -> tuple[float, float]:
    n_bg = n_total - n_fg
    w_bg = n_total / (2.0 * n_bg) if n_bg else 1.0
    w_fg = n_total / (2.0 * n_fg) if n_fg else 1.0
    return w_bg, w_fg


def pixel_sampling(sampling: tuple[float, ...] | None, ndim: int) -> np.ndarray:
    """A voxel size in units of its finest spacing (``(1, 1)`` without one).

    Parameters
    ----------
    sampling : tuple of float or None
        Checked spacings (:func:`~napari_unet.core.targets.labels.check_sampling`).
    ndim : int
        Number of axes.

    Returns
    -------
    numpy.ndarray
        float64 spacings divided by their minimum: distances measured with it are in pixels of
        the finest axis, the unit of ``sigma``.

    Examples
    --------
    >>> pixel_sampling((2.0, 0.5, 0.5), 3).tolist()
    [4.0, 1.0, 1.0]
    """
    if sampling is None:
        return np.ones(ndim)
    spacing = np.asarray(sampling, np.float64)
    return spacing / spacing.min()


def axis_reach(distance: float, spacing: np.ndarray) -> tuple[int, ...]:
    """Whole pixels along each axis within ``distance`` (in pixels of the finest axis)."""
    return tuple(int(np.ceil(distance / s)) for s in spacing)


def border_term(
    labels: np.ndarray, sigma: float, sampling: tuple[float, ...] | None = None
) -> np.ndarray:
    """Unit border term ``exp(-(d1 + d2)^2 / (2 sigma^2))`` on background, 0 elsewhere.

    Each instance's distance transform is taken in its bounding box grown by the radius beyond
    which the term is below :data:`BORDER_TOLERANCE` (``d1 + d2 >= radius`` gives 0), and folded
    into running nearest / second-nearest distance arrays: memory O(pixels), time O(sum of the
    grown boxes). Instances with no other instance in their grown box are skipped: near them
    fewer than two instances lie within reach. Any number of dimensions; with ``sampling`` the
    distances are anisotropic, in pixels of the finest axis (:func:`pixel_sampling`).
    """
    labels, _ = as_work_labels(labels, limit=max(labels.size, 1024))  # find_objects lists every id
    spacing = pixel_sampling(sampling, labels.ndim)
    radius = border_radius(sigma)
    term = np.zeros(labels.shape, np.float32)
    if labels.size == 0:
        return term
    areas = np.bincount(labels.ravel())
    if np.count_nonzero(areas[1:]) < 2:
        return term
    d1 = np.full(labels.shape, np.inf, np.float32)
    d2 = np.full(labels.shape, np.inf, np.float32)
    isotropic = bool(np.all(spacing == 1))
    for k, box in _reach_boxes(labels, axis_reach(radius, spacing), areas):
        dk = ndi.distance_transform_edt(
            labels[box] != k, sampling=None if isotropic else spacing
        ).astype(np.float32)
        a, b = d1[box], d2[box]
        # second = min(second, max(first, dk)); first = min(first, dk)
        np.minimum(b, np.maximum(a, dk), out=b)
        np.minimum(a, dk, out=a)
    s = np.add(d1, d2, out=d1)
    del d2
    keep = (labels == 0) & (s < radius)
    term[keep] = np.exp(-(s[keep] ** 2) / np.float32(2.0 * sigma**2))
    return term


def _reach_boxes(
    labels: np.ndarray, pad: tuple[int, ...], areas: np.ndarray
) -> list[tuple[int, tuple[slice, ...]]]:
    """Each instance with its bounding box grown by ``pad``, when another instance is in it."""
    out = []
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        box = tuple(
            slice(max(s.start - p, 0), min(s.stop + p, n))
            for s, p, n in zip(sl, pad, labels.shape, strict=True)
        )
        if np.count_nonzero(labels[box]) != areas[k]:
            out.append((k, box))
    return out


def assemble_weights(
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
