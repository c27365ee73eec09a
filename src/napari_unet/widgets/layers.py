"""Reading napari layers the way the core expects them, and writing results back.

The core takes an image as ``(Y, X)``, ``(C, Y, X)`` with a named channel axis, RGB
``(Y, X, 3)`` or a stack ``(Z, ...)`` of such images. A napari Image layer does not say which of
its axes holds channels (unless it is ``rgb``), so the widgets ask, and :func:`image_layout`
checks what the user chose against the data with the core's
:func:`napari_unet.core.layout.image_layout`. Errors are ``ValueError`` with a message written
for the user; the widgets show them as notifications.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from napari_unet.core.layout import ImageLayout
from napari_unet.core.layout import image_layout as core_image_layout

__all__ = [
    "DIMS_CHOICES",
    "OUTPUT_KEY",
    "LayerLayout",
    "auto_channel_axis",
    "class_names_from_layer",
    "default_dims",
    "image_layout",
    "labels_array",
    "layer_array",
    "region_mask",
    "reusable_output",
    "slice_index",
    "voxel_size",
]

#: how a widget treats a (Z, Y, X) layer: independent 2D slices or one volume
DIMS_CHOICES = ("2D slices", "3D")
#: marks the layers the widgets made (a ``layer.metadata`` key; its value is a dict)
OUTPUT_KEY = "napari_unet_output"

logger = logging.getLogger(__name__)


def layer_array(layer: Any) -> Any:
    """The layer's data at full resolution: level 0 of a multiscale layer (as napari's OME-Zarr
    reader makes them), never computed here (a dask or zarr level stays lazy)."""
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    return data


@dataclass(frozen=True)
class LayerLayout(ImageLayout):
    """An Image layer's data and where its channels and slices are.

    The core's :class:`~napari_unet.core.layout.ImageLayout` (``channel_axis``, ``rgb``,
    ``spatial_shape``, ``n_channels``, ``z_axis``, ``describe()``, ...) with the layer's name and
    data.

    Attributes
    ----------
    name : str
        The layer's name.
    data : array-like
        numpy, dask or zarr data at full resolution (never copied here).
    levels : int
        Resolution levels of a multiscale layer (e.g. from napari's OME-Zarr reader); 1 for
        others. Only level 0 is used.
    """

    name: str = ""
    data: Any = None
    levels: int = 1

    @property
    def multiscale_note(self) -> str:
        """For a multiscale layer, what is used of it (a sentence); ``''`` otherwise."""
        if self.levels <= 1:
            return ""
        return (
            f"'{self.name}' is multiscale ({self.levels} levels): using level 0, the full "
            "resolution, read lazily tile by tile."
        )

    def slice(self, z: int | None) -> tuple[Any, int | None]:
        """One 2D image of the stack (or the image itself) and its channel axis.

        Parameters
        ----------
        z : int or None
            Slice index; ignored for a single image.

        Returns
        -------
        image : array-like
            ``(Y, X)``, ``(C, Y, X)``-like or ``(Y, X, 3)``, still lazy for dask and zarr.
        channel_axis : int or None
            The channel axis within ``image``.
        """
        if self.z_axis is None or z is None:
            return self.data, self.channel_axis
        key = (slice(None),) * self.z_axis + (int(z),)
        axis = self.channel_axis
        if axis is not None and axis > self.z_axis:
            axis -= 1
        return self.data[key], axis


def image_layout(layer: Any, channel_axis: int | None = None) -> LayerLayout:
    """Check what the user said about an Image layer against its data.

    Parameters
    ----------
    layer : napari.layers.Image
        The image.
    channel_axis : int, optional
        Axis holding channels; ignored for an ``rgb`` layer.

    Returns
    -------
    LayerLayout
        The layout, from :func:`napari_unet.core.layout.image_layout`.

    Raises
    ------
    ValueError
        If the data cannot be read as a 2D image, a multichannel image or a stack of them.
    """
    data = layer_array(layer)
    layout = core_image_layout(
        data.shape,
        channel_axis=channel_axis,
        rgb=bool(getattr(layer, "rgb", False)),
        what=f"The image '{layer.name}'",
        channel_option="'channels'",
    )
    parts = {f.name: getattr(layout, f.name) for f in fields(layout)}
    levels = len(layer.data) if getattr(layer, "multiscale", False) else 1
    return LayerLayout(**parts, name=layer.name, data=data, levels=levels)


def auto_channel_axis(layer: Any, in_channels: int) -> int | None:
    """Guess the channel axis of a non-RGB layer for a model that reads ``in_channels``.

    Returns
    -------
    int or None
        None for one channel (or RGB); otherwise the first non-spatial axis whose size is
        ``in_channels``, or None when there is none (the mismatch is reported later).
    """
    if getattr(layer, "rgb", False) or in_channels == 1:
        return None
    shape = layer_array(layer).shape
    if len(shape) == 3 and shape[0] == in_channels:
        return 0
    if len(shape) == 4:
        for axis in (1, 0):
            if shape[axis] == in_channels:
                return axis
    return None


def labels_array(layer: Any, layout: LayerLayout, what: str = "annotation") -> np.ndarray:
    """A copy of a Labels layer's data, checked against the image's spatial shape.

    Parameters
    ----------
    layer : napari.layers.Labels
        The labels (read, never written).
    layout : LayerLayout
        The image the labels belong to.
    what : str
        What to call the layer in messages.

    Returns
    -------
    numpy.ndarray
        An independent copy, so that painting during training changes nothing in flight.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    data = np.array(layer_array(layer), copy=True)
    if data.shape != layout.spatial_shape:
        raise ValueError(
            f"The {what} '{layer.name}' has shape {data.shape} but the image "
            f"'{layout.name}' is {layout.describe()} (spatial shape {layout.spatial_shape}); "
            "they must match pixel for pixel."
        )
    return data


def region_mask(layer: Any, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """The annotated region marked by a Shapes or Labels layer, as a bool mask.

    A 2D region over a stack applies to every slice.

    Parameters
    ----------
    layer : napari.layers.Shapes or napari.layers.Labels
        Shapes (rectangles, polygons, ellipses...) or labels (every pixel > 0 is annotated).
    spatial_shape : tuple of int
        ``(Y, X)`` or ``(Z, Y, X)``.

    Returns
    -------
    numpy.ndarray
        bool mask of ``spatial_shape``.

    Raises
    ------
    ValueError
        If the layer marks nothing or its shape does not fit.
    """
    yx = tuple(spatial_shape[-2:])
    kind = type(layer).__name__
    if kind == "Shapes":
        if len(layer.data) == 0:
            raise ValueError(f"The region layer '{layer.name}' holds no shapes.")
        if layer.ndim == 2 or len(spatial_shape) == 2:
            if layer.ndim != 2 and len(spatial_shape) == 2:
                raise ValueError(
                    f"The region layer '{layer.name}' has {layer.ndim}D shapes but the image is "
                    "2D; draw the region on a 2D Shapes layer."
                )
            mask = np.asarray(layer.to_masks(mask_shape=yx)).any(axis=0)
        elif layer.ndim == len(spatial_shape):
            mask = np.asarray(layer.to_masks(mask_shape=tuple(spatial_shape))).any(axis=0)
        else:
            raise ValueError(
                f"The region layer '{layer.name}' is {layer.ndim}D; expected 2D or "
                f"{len(spatial_shape)}D shapes."
            )
    elif kind == "Labels":
        mask = np.asarray(layer_array(layer)) > 0
    else:
        raise ValueError(
            f"The region layer '{layer.name}' is a {kind} layer; use Shapes or Labels."
        )
    if mask.shape == yx and len(spatial_shape) == 3:
        mask = np.broadcast_to(mask, tuple(spatial_shape)).copy()
    if mask.shape != tuple(spatial_shape):
        raise ValueError(
            f"The region layer '{layer.name}' has shape {mask.shape}; expected "
            f"{tuple(spatial_shape)} like the image."
        )
    if not mask.any():
        raise ValueError(f"The region layer '{layer.name}' marks no pixel of the image.")
    return mask


def slice_index(viewer: Any, layer: Any, layout: LayerLayout) -> int | None:
    """Index of the slice of ``layout`` the viewer shows now (None for a single image)."""
    if not layout.is_stack:
        return None
    coords = layer.world_to_data(viewer.dims.point)
    z = int(np.round(coords[layout.z_axis]))
    return int(np.clip(z, 0, layout.n_slices - 1))


def voxel_size(layer: Any, ndim: int = 3) -> tuple[float, ...]:
    """The last ``ndim`` values of the layer's ``scale``: its voxel size ``(z, y, x)``.

    Parameters
    ----------
    layer : napari.layers.Layer
        Any layer with a ``scale``.
    ndim : int
        Number of spatial axes.

    Returns
    -------
    tuple of float
        The spacings; a non-positive one is refused by the core
        (:func:`napari_unet.core.targets.check_sampling`) with a clear message.
    """
    return tuple(float(s) for s in np.asarray(layer.scale, float)[-ndim:])


def default_dims(layer: Any) -> str:
    """``'3D'`` for a ``(Z, Y, X)`` layer whose z spacing differs from its in-plane spacing (it
    was opened as a volume with a voxel size), ``'2D slices'`` otherwise.

    Parameters
    ----------
    layer : napari.layers.Layer or None
        The layer chosen in a widget.

    Returns
    -------
    str
        One of :data:`DIMS_CHOICES`.
    """
    if layer is None or getattr(layer, "rgb", False) or layer_array(layer).ndim != 3:
        return DIMS_CHOICES[0]
    z, y, x = voxel_size(layer)
    return DIMS_CHOICES[1] if not np.isclose(z, y) or not np.isclose(z, x) else DIMS_CHOICES[0]


#: ``features`` columns that may hold class names, in order of preference
CLASS_NAME_COLUMNS = ("name", "class")


def class_names_from_layer(layer: Any, n_classes: int) -> list[str]:
    """Names of classes ``1..n_classes`` from a Labels layer's ``features``, else 'class k'.

    napari's Labels ``features`` table has one row per label value (row 0: the background, here
    "not painted"), or an ``'index'`` column that says which value a row is for. A ``'name'``
    (or ``'class'``) column holds the names.

    Parameters
    ----------
    layer : napari.layers.Labels
        The scribble layer.
    n_classes : int
        Number of classes.

    Returns
    -------
    list of str
        One name per class, class 1 first.
    """
    from napari_unet.core.model import default_class_names

    features = getattr(layer, "features", None)
    column = next((c for c in CLASS_NAME_COLUMNS if features is not None and c in features), None)
    if column is None:
        return list(default_class_names(n_classes))
    names = [str(v) for v in features[column]]
    if "index" in features:
        by_value = {int(i): n for i, n in zip(features["index"], names, strict=True)}
    else:
        by_value = dict(enumerate(names))
    return list(
        default_class_names(n_classes, [by_value.get(k, "") for k in range(1, n_classes + 1)])
    )


def reusable_output(viewer: Any, name: str, kind: type, shape: tuple[int, ...]) -> Any:
    """The layer ``name`` if a widget made it and it can take a new result, else None.

    It can when it is of type ``kind``, carries the widgets' :data:`OUTPUT_KEY` metadata (not
    marked ``edited``: the user's corrections are never overwritten), and holds an in-memory
    array of ``shape``.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer.
    name : str
        The layer's name.
    kind : type
        The layer type (``napari.layers.Labels`` or ``Image``).
    shape : tuple of int
        The shape the result has.

    Returns
    -------
    napari.layers.Layer or None
        The layer to write the result into, or None (make a new one).
    """
    if name not in viewer.layers:
        return None
    layer = viewer.layers[name]
    meta = layer.metadata.get(OUTPUT_KEY)
    if (
        isinstance(layer, kind)
        and isinstance(meta, dict)
        and not meta.get("edited", False)
        and tuple(layer.data.shape) == tuple(shape)
        and isinstance(layer.data, np.ndarray)
    ):
        return layer
    return None
