"""Image layout and intensity normalisation shared by training and inference.

Every 2D image is normalised by its own percentiles, channel by channel (minimum and maximum
where the percentiles coincide; a constant image is refused); the method and its parameters
travel with the model so that inference normalises exactly as training did.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "as_nchw",
    "check_finite",
    "intensity_range",
    "normalization_spec",
    "normalize_image",
    "percentile_range",
]

DEFAULT_LOW = 1.0
DEFAULT_HIGH = 99.8


def normalization_spec(low: float = DEFAULT_LOW, high: float = DEFAULT_HIGH) -> dict[str, Any]:
    """Describe percentile normalisation in a form that model files store.

    Parameters
    ----------
    low, high : float
        Percentiles (0-100) mapped to 0 and 1.

    Returns
    -------
    dict
        ``{'method': 'percentile', 'low': low, 'high': high}``.
    """
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
    return {"method": "percentile", "low": float(low), "high": float(high)}


def as_nchw(image: Any, *, channel_axis: int | None = None, rgb: bool = False) -> Any:
    """Arrange an image as a stack of 2D multichannel images ``(N, C, Y, X)``.

    Works on numpy and dask arrays alike (no data is read from a dask array).

    Parameters
    ----------
    image : array-like
        ``(Y, X)``; ``(C, Y, X)`` or ``(Z, C, Y, X)`` with ``channel_axis`` naming the channel
        axis; ``(Y, X, 3)`` or ``(Y, X, 4)`` when ``rgb``; ``(Z, Y, X)`` (a stack of 2D slices).
    channel_axis : int, optional
        Axis of the channels, if the image has one (ignored when ``rgb``).
    rgb : bool
        The last axis holds RGB(A) colour channels (a napari ``rgb`` layer).

    Returns
    -------
    array
        A view of shape ``(N, C, Y, X)``.

    Raises
    ------
    ValueError
        If the dimensionality does not fit the description.

    Examples
    --------
    >>> as_nchw(np.zeros((5, 7))).shape
    (1, 1, 5, 7)
    >>> as_nchw(np.zeros((3, 5, 7))).shape
    (3, 1, 5, 7)
    >>> as_nchw(np.zeros((5, 7, 3)), rgb=True).shape
    (1, 3, 5, 7)
    """
    ndim = len(image.shape)
    if rgb:
        if ndim not in (3, 4) or image.shape[-1] not in (3, 4):
            raise ValueError(
                f"an RGB image must have shape (Y, X, 3|4) or (Z, Y, X, 3|4), got {image.shape}"
            )
        image = np.moveaxis(image, -1, -3)
        return image if ndim == 4 else image[None]
    if channel_axis is not None:
        if ndim not in (3, 4):
            raise ValueError(
                "an image with a channel axis must be (C, Y, X) or (Z, C, Y, X) once the channel "
                f"axis is placed; got {ndim} dimensions, shape {image.shape}"
            )
        axis = channel_axis % ndim
        if axis >= ndim - 2:
            raise ValueError(
                f"channel_axis={channel_axis} points at a spatial axis of shape {image.shape}; the "
                "last two axes must be Y and X"
            )
        image = np.moveaxis(image, axis, -3)
        return image if ndim == 4 else image[None]
    if ndim == 2:
        return image[None, None]
    if ndim == 3:
        return image[:, None]
    raise ValueError(
        "expected a 2D image (Y, X) or a stack (Z, Y, X); for more dimensions name the channel "
        f"axis; got shape {image.shape}"
    )


def check_finite(image: np.ndarray, name: str = "image") -> None:
    """Raise ValueError if ``image`` holds NaN or infinity.

    Parameters
    ----------
    image : numpy.ndarray
        The data.
    name : str
        What to call the data in the message.
    """
    if np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.complexfloating):
        bad = ~np.isfinite(image)
        if bad.any():
            raise ValueError(
                f"{name} contains {int(bad.sum())} NaN or infinite values; expected finite numbers"
            )


def percentile_range(
    image: np.ndarray, low: float = DEFAULT_LOW, high: float = DEFAULT_HIGH
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel percentiles of one multichannel 2D image ``(C, Y, X)`` (or volume
    ``(C, Z, Y, X)``).

    Returns
    -------
    lo, hi : numpy.ndarray
        Arrays of shape ``(C, 1, 1)`` (``(C, 1, 1, 1)`` for a volume), float32.
    """
    flat = np.asarray(image).reshape(image.shape[0], -1)
    lo, hi = np.percentile(flat, [low, high], axis=1).astype(np.float32)
    ones = (1,) * (np.ndim(image) - 1)
    return lo.reshape(-1, *ones), hi.reshape(-1, *ones)


def intensity_range(
    image: np.ndarray,
    low: float = DEFAULT_LOW,
    high: float = DEFAULT_HIGH,
    name: str = "image",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel offset and scale that map one ``(C, Y, X)`` image to about [0, 1].

    The offset is the ``low`` percentile and the scale the distance to the ``high`` one. Where
    the two percentiles coincide (a sparse image, a zero-filled mosaic) the channel's minimum and
    maximum are used instead, so that raw intensities never enter the network; a channel that
    is constant is mapped to 0 (scale 1), and an image whose every channel is constant is
    refused: it holds nothing to learn from or to segment.

    Parameters
    ----------
    image : numpy.ndarray
        ``(C, Y, X)``, any real dtype, finite.
    low, high : float
        Percentiles (0-100).
    name : str
        What to call the image in the error message.

    Returns
    -------
    offset, scale : numpy.ndarray
        float32 arrays of shape ``(C, 1, 1)``; ``normalised = (image - offset) / scale``.

    Raises
    ------
    ValueError
        If every channel of the image is constant.

    See Also
    --------
    percentile_range : the two percentiles alone, without the fallback.

    Examples
    --------
    >>> sparse = np.zeros((1, 100, 100), np.uint16)
    >>> sparse[0, 0, :10] = 4000  # 0.1% of the pixels: the 1st and 99.8th percentiles are 0
    >>> offset, scale = intensity_range(sparse)
    >>> float(offset[0, 0, 0]), float(scale[0, 0, 0])
    (0.0, 4000.0)
    """
    lo, hi = percentile_range(image, low, high)
    degenerate = hi <= lo
    if degenerate.any():
        flat = np.asarray(image).reshape(image.shape[0], -1)
        lo = np.where(degenerate, flat.min(axis=1).reshape(lo.shape), lo).astype(np.float32)
        hi = np.where(degenerate, flat.max(axis=1).reshape(hi.shape), hi).astype(np.float32)
    constant = hi <= lo
    if constant.all():
        value = float(np.asarray(image).flat[0]) if np.size(image) else float("nan")
        raise ValueError(
            f"{name} is constant (every pixel is {value:g}): it holds nothing to learn from or "
            "to segment; expected an image with some contrast"
        )
    scale = np.where(constant, 1.0, hi - lo).astype(np.float32)
    return lo, scale


def normalize_image(
    image: np.ndarray, spec: dict[str, Any] | None = None, name: str = "image"
) -> np.ndarray:
    """Normalise one multichannel 2D image ``(C, Y, X)`` (or volume ``(C, Z, Y, X)``) to
    float32 by its own percentiles.

    Parameters
    ----------
    image : numpy.ndarray
        Any numeric dtype, shape ``(C, Y, X)``.
    spec : dict, optional
        From :func:`normalization_spec`; defaults to percentiles 1 and 99.8.
    name : str
        What to call the image in error messages.

    Returns
    -------
    numpy.ndarray
        float32 ``(C, Y, X)``, the low percentile at 0 and the high one at 1 (minimum and
        maximum where the percentiles coincide, see :func:`intensity_range`). A constant
        channel of a multichannel image becomes 0.

    Raises
    ------
    ValueError
        On NaN or infinite values, an unknown method, or an image whose every channel is
        constant.

    Examples
    --------
    >>> x = normalize_image(np.arange(1000, dtype=np.uint16).reshape(1, 10, 100))
    >>> float(x.min()) < 0 < 1 < float(x.max())
    True
    """
    spec = spec or normalization_spec()
    if spec.get("method") != "percentile":
        raise ValueError(f"unknown normalisation method {spec.get('method')!r}")
    image = np.asarray(image)
    if image.ndim not in (3, 4):
        raise ValueError(
            f"expected one (C, Y, X) image or (C, Z, Y, X) volume, got shape {image.shape}"
        )
    if image.dtype == bool or not np.issubdtype(image.dtype, np.number):
        if image.dtype != bool:
            raise ValueError(f"expected a numeric image, got dtype {image.dtype}")
    check_finite(image, name)
    data = image.astype(np.float32, copy=False)
    lo, scale = intensity_range(data, spec["low"], spec["high"], name)
    return ((data - lo) / scale).astype(np.float32, copy=False)
