"""Voxel sizes: the one check of a spacing per axis, for models, settings, targets and the CLI.

A voxel size (``sampling``, ``voxel_size``, ``--scale``, a napari layer's scale) is one finite
spacing > 0 per spatial axis, ``(y, x)`` or ``(z, y, x)``. :func:`check_voxel_size` checks it
with the same messages wherever it comes from (numpy only, so that the command line can check
``--scale`` without importing torch).
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_voxel_size"]

_AXES = {2: " (y, x)", 3: " (z, y, x)"}


def check_voxel_size(
    voxel_size: object, ndim: int | None = None, name: str = "voxel_size"
) -> tuple[float, ...] | None:
    """Check a voxel size: one finite spacing > 0 per axis.

    Parameters
    ----------
    voxel_size : sequence of float or None
        Spacing of each axis in physical units (e.g. ``(z, y, x)`` in micrometres); ``None``
        means unknown (isotropic) and is returned as it is.
    ndim : int, optional
        Number of axes the voxel size must have (``None``: any number >= 1).
    name : str
        What to call the value in messages (``'--scale'`` on the command line).

    Returns
    -------
    tuple of float or None
        The spacings as floats, or ``None`` when ``voxel_size`` is ``None``.

    Raises
    ------
    ValueError
        If ``voxel_size`` is no sequence of numbers, has the wrong length, or holds a value
        that is not a finite number > 0.

    Examples
    --------
    >>> check_voxel_size([2, 0.5, 0.5], 3)
    (2.0, 0.5, 0.5)
    >>> check_voxel_size(None, 3) is None
    True
    """
    if voxel_size is None:
        return None
    axes = _AXES.get(ndim, "") if ndim is not None else ""
    count = "" if ndim is None else f"{ndim} "
    if isinstance(voxel_size, str | bytes) or np.ndim(voxel_size) != 1:  # type: ignore[arg-type]
        raise ValueError(
            f"{name} must be {count}positive numbers{axes}, a sequence of spacings (one per "
            f"axis), got {voxel_size!r}"
        )
    values = tuple(voxel_size)  # type: ignore[arg-type]
    numbers = all(
        isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
        for v in values
    )
    if numbers:
        values = tuple(float(v) for v in values)
    if ndim is not None and len(values) != ndim:
        raise ValueError(
            f"{name} must have {ndim} values{axes}, one spacing per axis of {ndim}D data, got "
            f"{len(values)}: {values!r}"
        )
    if not values or not numbers or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(
            f"{name} must hold finite spacings > 0 (positive finite numbers, one per "
            f"axis{axes}), got {values!r}"
        )
    return values
