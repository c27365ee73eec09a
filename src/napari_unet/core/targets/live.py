"""The live border-weight map: kept up to date while labels are painted.

:class:`BorderWeightMap` keeps its own copy of the labels and the unit border term and, after an
edit, recomputes only around the changed pixels (boxes grown by the border radius), with the
same result as a full recompute (:func:`napari_unet.core.targets.border_weight_map`). Images
and volumes alike: with a voxel size (``sampling``) the boxes grow by the border radius in voxels
of each axis.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi

from .gap import axis_gaps, cut_gap
from .labels import check_labels_sampling, check_region
from .terms import (
    assemble_weights,
    axis_reach,
    balance_weights,
    border_radius,
    border_term,
    check_weight_params,
    pixel_sampling,
)

__all__ = ["BorderWeightMap", "Box", "update_border_weights"]

logger = logging.getLogger(__name__)

Box = tuple[slice, ...]


def _grow_box(box: Box, margin: tuple[int, ...], shape: tuple[int, ...]) -> Box:
    return tuple(
        slice(max(s.start - m, 0), min(s.stop + m, n))
        for s, m, n in zip(box, margin, shape, strict=True)
    )


def _mask_box(mask: np.ndarray) -> Box | None:
    """The bounding box of the True pixels, None when there are none."""
    box: list[slice] = []
    view = mask
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(view.any(axis=others) if others else view)
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
        view = view[(slice(None),) * axis + (box[-1],)]  # shrink before the next axis
    return tuple(box)


def _shift_box(local: Box, origin: Box) -> Box:
    """A box given relative to the crop ``origin``, in image coordinates."""
    return tuple(  # type: ignore[return-value]
        slice(o.start + b.start, o.start + b.stop) for o, b in zip(origin, local, strict=True)
    )


def clusters(mask: np.ndarray, reach: int | tuple[int, ...], most: int = 64) -> list[Box]:
    """Boxes of the True pixels, merged until no two boxes are within ``reach`` pixels (one
    value, or one per axis)."""
    box = _mask_box(mask)
    if box is None:
        return []
    reach = (reach,) * mask.ndim if isinstance(reach, (int, np.integer)) else tuple(reach)
    parts, n = ndi.label(mask[box], structure=np.ones((3,) * mask.ndim, bool))
    if n == 1 or n > most:  # one stroke, or scattered noise: one box
        return [box]
    boxes = [[(s.start, s.stop) for s in sl] for sl in ndi.find_objects(parts)]
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if all(
                    ai[0] - r < bi[1] and bi[0] - r < ai[1]
                    for ai, bi, r in zip(a, b, reach, strict=True)
                ):
                    boxes[i] = [
                        (min(ai[0], bi[0]), max(ai[1], bi[1])) for ai, bi in zip(a, b, strict=True)
                    ]
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return [_shift_box(tuple(slice(lo, hi) for lo, hi in b), box) for b in boxes]


def _inner(outer: Box, inner: Box) -> Box:
    """``inner`` expressed in the coordinates of the crop ``outer``."""
    return tuple(  # type: ignore[return-value]
        slice(i.start - o.start, i.stop - o.start) for o, i in zip(outer, inner, strict=True)
    )


def _check_box(changed: object, shape: tuple[int, ...]) -> Box | None:
    """A ``changed`` hint (bool mask or a tuple of slices) as a box clipped to the image."""
    if (
        isinstance(changed, tuple)
        and len(changed) == len(shape)
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
        return tuple(box)
    mask = np.asarray(changed)
    if mask.dtype != bool or mask.shape != tuple(shape):
        raise ValueError(
            f"changed must be a bool mask of shape {tuple(shape)} or a box of "
            f"{len(shape)} slices, "
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
    :func:`~napari_unet.core.targets.training_targets` with the same ``gap`` gives; with
    ``gap = 0`` it is :func:`~napari_unet.core.targets.border_weight_map` of the labels as they
    are.

    A stack is a set of independent 2D images: keep one object per slice. A volume is one
    object with its voxel size (``sampling``).

    Parameters
    ----------
    labels : numpy.ndarray
        Integer instance labels (copied): 2D, or one axis per value of ``sampling``.
    w0, sigma : float
        Border term height and width (sigma in pixels of the finest axis).
    class_balance : bool
        Balance the two classes over the annotated pixels.
    region : numpy.ndarray, optional
        bool mask of the annotated area (copied); weight 0 outside.
    gap : int
        Gap cut between touching instances before the map is computed (0: none).
    sampling : sequence of float, optional
        Voxel size, one spacing per axis (``(z, y, x)`` for a volume).

    Examples
    --------
    >>> from napari_unet.core.targets import border_weight_map
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
        sampling: tuple[float, ...] | None = None,
    ) -> None:
        labels, self._sampling = check_labels_sampling(labels, sampling)
        self._w0, self._sigma = check_weight_params(w0, sigma)
        self._class_balance = bool(class_balance)
        self._gaps = axis_gaps(gap, self._sampling, labels.ndim)
        self._gap = int(gap)
        self._labels = labels.copy()
        self._region = check_region(region, labels.shape)
        if self._region is not None:
            self._region = self._region.copy()
        self._recompute_all()

    # -- read-only state ---------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the image or volume."""
        return self._labels.shape

    @property
    def sampling(self) -> tuple[float, ...] | None:
        """The voxel size (None: square pixels)."""
        return self._sampling

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
        return balance_weights(self._n_total, self._n_fg)

    @property
    def weights(self) -> np.ndarray:
        """The float32 weight map (a new array whenever something changed; do not modify)."""
        if self._weights is None:
            self._weights = self.assemble_weights()
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
        changed : bool mask or tuple of slice, optional
            Where labels may have changed; pixels outside it must be unchanged. Without it the
            new labels are compared with the stored copy (one pass over the image).

        Returns
        -------
        tuple of slice or None
            A box covering every pixel whose weight was recomputed, ``None`` when nothing
            changed.
        """
        labels, _ = check_labels_sampling(labels, self._sampling)
        if labels.shape != self.shape:
            raise ValueError(f"labels must keep the shape {self.shape}, got {labels.shape}")
        full: Box = tuple(slice(0, n) for n in self.shape)
        hint = full if changed is None else _check_box(changed, self.shape)
        if hint is None:
            return None
        diff = labels[hint] != self._labels[hint]
        pad = axis_reach(border_radius(self._sigma), pixel_sampling(self._sampling, labels.ndim))
        # clusters farther apart than this do not interact
        reach = tuple(2 * (p + g) + 1 for p, g in zip(pad, self._gaps, strict=True))
        done: list[Box] = []
        for local in clusters(diff, reach):
            box = _shift_box(local, hint)
            out = self._update_box(labels, box, pad)
            if out is not None:
                done.append(out)
        if not done:
            return None
        self._weights = None
        union = tuple(
            slice(min(b[i].start for b in done), max(b[i].stop for b in done))
            for i in range(len(self.shape))
        )
        logger.debug("border weights updated in %d box(es) within %s", len(done), union)
        return union

    def _update_box(self, labels: np.ndarray, box: Box, pad: tuple[int, ...]) -> Box | None:
        """Copy ``labels[box]`` in and recompute what depends on it; the recomputed box."""
        self._labels[box] = labels[box]
        if self._gap:
            # The cut at a pixel depends on the labels within `gap` of it.
            cut_box = _grow_box(box, self._gaps, self.shape)
            ctx = _grow_box(cut_box, self._gaps, self.shape)
            new_cut = cut_gap(self._labels[ctx], self._gap, sampling=self._sampling)
            new_cut = new_cut[_inner(ctx, cut_box)]
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
        # Border term: it changes only within `radius` of changed pixels (see border_term),
        # and there it needs the labels within `radius` again.
        out_box = _grow_box(_shift_box(diff, cut_box), pad, self.shape)
        ctx = _grow_box(out_box, pad, self.shape)
        border = border_term(self._cut[ctx], self._sigma, self._sampling)
        self._border[out_box] = border[_inner(ctx, out_box)]
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
        new_w0, new_sigma = check_weight_params(
            self._w0 if w0 is None else w0, self._sigma if sigma is None else sigma
        )
        if class_balance is not None:
            self._class_balance = bool(class_balance)
        self._w0 = new_w0
        if new_sigma != self._sigma:
            self._sigma = new_sigma
            self._border = border_term(self._cut, self._sigma, self._sampling)
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
        if self._gap:
            self._cut = cut_gap(self._labels, self._gap, sampling=self._sampling)
        else:
            self._cut = self._labels.copy()
        self._border = border_term(self._cut, self._sigma, self._sampling)
        self._count()
        self._weights: np.ndarray | None = None

    def _count(self) -> None:
        fg = self._cut > 0
        if self._region is None:
            self._n_total, self._n_fg = fg.size, int(np.count_nonzero(fg))
        else:
            self._n_total = int(np.count_nonzero(self._region))
            self._n_fg = int(np.count_nonzero(fg & self._region))

    def assemble_weights(self) -> np.ndarray:
        w_bg, w_fg = self.class_weights
        return assemble_weights(self._cut > 0, w_bg, w_fg, self._w0, self._border, self._region)


def update_border_weights(
    state: BorderWeightMap, labels: np.ndarray, changed: object = None
) -> np.ndarray:
    """Bring a :class:`BorderWeightMap` up to date with edited labels and return the map.

    Only the boxes the changed labels touch are recomputed; the result equals
    :func:`~napari_unet.core.targets.border_weight_map` of the new labels (of their
    :func:`~napari_unet.core.targets.gap.cut_gap` when the state has a gap).

    Parameters
    ----------
    state : BorderWeightMap
        The live map, updated in place.
    labels : numpy.ndarray
        The whole new label image.
    changed : bool mask or tuple of slice, optional
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
