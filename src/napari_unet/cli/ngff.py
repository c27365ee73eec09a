"""OME-Zarr (OME-NGFF 0.4 and 0.5) images in, label images into the same store out.

Reading (:func:`read_ome_zarr`) takes level 0 of the image's multiscale pyramid, lazily (a dask
array, read chunk by chunk), with the axes named by its metadata: axes of size 1 (``t``, ``c``,
``z``) are dropped, a channel axis ``c`` stays as the channel axis of the layout the core expects
(``(C, Y, X)``, ``(C, Z, Y, X)``...), and ``z`` or ``t`` numbers the 2D slices of a stack. The
physical pixel size of level 0 comes with it.

Writing (:func:`labels_into`) puts a label image into the image's ``labels/`` group as the NGFF
spec says: a multiscale image with the image's axes (the channel axis of size 1), the same
number of levels and the same coordinate transformations, ``image-label`` metadata, and its name
in the ``labels`` list of ``labels/``. Level 0 is written chunk by chunk while it is computed,
into a temporary group beside the destination; the lower levels follow (nearest neighbour, read
back chunk by chunk), the group is renamed into place, and only then is its name registered:
a crash never leaves a half-written label image listed in ``labels/``.

The metadata is read and written with ``ome-zarr`` (:mod:`ome_zarr.reader`,
:mod:`ome_zarr.writer`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.atomic import atomic_path

__all__ = [
    "AxisMappedArray",
    "OmeZarrImage",
    "is_ome_zarr",
    "label_names",
    "labels_into",
    "read_ome_zarr",
]

logger = logging.getLogger(__name__)

#: NGFF versions whose images can take labels
WRITABLE_VERSIONS = ("0.4", "0.5")


def _ome_attrs(path: Path) -> dict[str, Any] | None:
    """The OME attributes of the zarr group at ``path`` (``attrs['ome']`` in zarr v3)."""
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception:  # not a group (an array, or no zarr at all)
        return None
    attrs = dict(group.attrs)
    return dict(attrs.get("ome", attrs))


def _image_path(path: Path) -> Path:
    """``path``, or its first series when it is a bioformats2raw layout."""
    attrs = _ome_attrs(path) or {}
    if "multiscales" not in attrs and "bioformats2raw.layout" in attrs and (path / "0").is_dir():
        logger.info("%s is a bioformats2raw layout: reading its first image, %s/0", path, path)
        return path / "0"
    return path


def is_ome_zarr(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an OME-Zarr image (a zarr group with ``multiscales`` metadata).

    Parameters
    ----------
    path : str or path-like
        A folder.

    Returns
    -------
    bool
        True for an OME-Zarr image, a label image inside one, or a bioformats2raw layout.
    """
    p = Path(path)
    if not p.is_dir():
        return False
    attrs = _ome_attrs(_image_path(p))
    return attrs is not None and "multiscales" in attrs


@dataclass(frozen=True)
class OmeZarrImage:
    """An OME-Zarr image as read: where it is, its axes and levels, and what was kept.

    Attributes
    ----------
    path : pathlib.Path
        The image group.
    version : str
        The NGFF version, e.g. ``'0.4'``.
    zarr_format : int
        2 or 3.
    axes : tuple of dict
        The image's axes as its metadata states them (``name``, ``type``, ``unit``).
    datasets : tuple of dict
        Per level: ``path`` and ``coordinateTransformations``.
    shapes : tuple of tuple of int
        The shape of every level.
    kept : tuple of int
        The axes of level 0 kept in the data read (the others had size 1 and were dropped).
    """

    path: Path
    version: str
    zarr_format: int
    axes: tuple[dict[str, Any], ...]
    datasets: tuple[dict[str, Any], ...]
    shapes: tuple[tuple[int, ...], ...]
    kept: tuple[int, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The axes' names, e.g. ``('t', 'c', 'z', 'y', 'x')``."""
        return tuple(a["name"] for a in self.axes)

    @property
    def channel_axes(self) -> tuple[int, ...]:
        """Axes of level 0 that hold channels (type ``channel``, or named ``c``)."""
        return tuple(i for i, a in enumerate(self.axes) if _kind(a) == "channel")

    @property
    def channel_axis(self) -> int | None:
        """The channel axis in the data read (None when the image has one channel)."""
        kept_channels = [i for i in self.kept if i in self.channel_axes]
        return self.kept.index(kept_channels[0]) if kept_channels else None

    @property
    def pixel_size(self) -> dict[str, float]:
        """Physical size of a level-0 pixel along each space axis, e.g. ``{'y': 0.5, ...}``."""
        scale = _scale(self.datasets[0], len(self.axes))
        return {a["name"]: scale[i] for i, a in enumerate(self.axes) if _kind(a) == "space"}

    @property
    def units(self) -> dict[str, str]:
        """The unit of each space axis that states one."""
        return {a["name"]: a["unit"] for a in self.axes if _kind(a) == "space" and "unit" in a}

    def label_shape(self, level: int) -> tuple[int, ...]:
        """The shape of a label image's level: the image's, with channel axes of size 1."""
        shape = self.shapes[level]
        return tuple(1 if i in self.channel_axes else n for i, n in enumerate(shape))

    def describe(self) -> str:
        """A few words for the log, e.g. ``'OME-Zarr 0.4, axes tczyx (2, 1, 5, 64, 48)'``."""
        sizes = ", ".join(
            f"{name} {size:g} {self.units.get(name, '')}".rstrip()
            for name, size in self.pixel_size.items()
        )
        return (
            f"OME-Zarr {self.version}, axes {''.join(self.names)} {self.shapes[0]}, "
            f"{len(self.shapes)} level(s), pixel size {sizes}"
        )


def _kind(axis: dict[str, Any]) -> str:
    """An axis' type: ``space``, ``time``, ``channel`` (from its ``type`` or its name)."""
    if axis.get("type"):
        return str(axis["type"])
    return {"t": "time", "c": "channel"}.get(axis["name"], "space")


def _scale(dataset: dict[str, Any], ndim: int) -> list[float]:
    """The ``scale`` transformation of a level (1 per axis when there is none)."""
    for transform in dataset.get("coordinateTransformations") or []:
        if transform.get("type") == "scale":
            return [float(s) for s in transform["scale"]]
    return [1.0] * ndim


def _kept_axes(path: Path, axes: list[dict[str, Any]], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The axes kept: the last two (Y, X), and the others larger than 1, at most one slice axis
    (``z`` or ``t``) and one channel axis; else ValueError."""
    ndim = len(shape)
    kinds = [_kind(a) for a in axes]
    if ndim < 2 or kinds[-2:] != ["space", "space"]:
        raise ValueError(
            f"{path}: expected an OME-Zarr image whose last two axes are y and x, got axes "
            f"{[a['name'] for a in axes]}"
        )
    kept = [i for i in range(ndim - 2) if shape[i] > 1]
    slices = [i for i in kept if kinds[i] != "channel"]
    channels = [i for i in kept if kinds[i] == "channel"]
    if len(slices) > 1 or len(channels) > 1:
        sizes = ", ".join(f"{axes[i]['name']}={shape[i]}" for i in kept)
        raise ValueError(
            f"{path}: expected at most one of t and z (the slices) and one channel axis with "
            f"more than one element, got {sizes}; save one time point (or one volume) per "
            "OME-Zarr image"
        )
    return (*kept, ndim - 2, ndim - 1)


def _open_node(path: Path) -> tuple[Any, Any]:
    """The ome_zarr reader node of the image at ``path`` and its format."""
    from ome_zarr.format import format_from_version
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Node

    attrs = _ome_attrs(path) or {}
    version = str(attrs.get("version") or attrs["multiscales"][0].get("version", "0.4"))
    fmt = format_from_version(version)
    location = parse_url(str(path), mode="r", fmt=fmt)
    if location is None:
        raise ValueError(f"{path}: cannot open as OME-Zarr")
    node = Node(location, [location])
    if node.first(Multiscales) is None:
        raise ValueError(f"{path}: no multiscales metadata")
    return node, fmt


def read_ome_zarr(path: str | os.PathLike[str]) -> tuple[Any, OmeZarrImage]:
    """Level 0 of an OME-Zarr image, lazily, laid out for the core.

    Parameters
    ----------
    path : str or path-like
        An OME-Zarr image (or a label image inside one, or a bioformats2raw layout).

    Returns
    -------
    data : dask.array.Array
        Level 0 without its axes of size 1: ``(Y, X)``, ``(C, Y, X)``, ``(Z, Y, X)``,
        ``(C, Z, Y, X)``... in the order the metadata gives (channels before slices for NGFF);
        the channel axis is :attr:`OmeZarrImage.channel_axis`.
    image : OmeZarrImage
        Its axes, levels, pixel size and what was kept.

    Raises
    ------
    ValueError
        If the metadata cannot be read, or the image holds both several time points and
        several z planes (or several channel axes).
    """
    from ome_zarr.reader import Multiscales

    p = _image_path(Path(path))
    node, fmt = _open_node(p)
    spec = node.first(Multiscales)
    axes = [dict(a) for a in node.metadata["axes"]]
    level0 = node.data[0]
    transforms = node.metadata.get("coordinateTransformations") or [None] * len(spec.datasets)
    kept = _kept_axes(p, axes, tuple(level0.shape))
    index = tuple(slice(None) if i in kept else 0 for i in range(level0.ndim))
    image = OmeZarrImage(
        path=p,
        version=fmt.version,
        zarr_format=int(fmt.zarr_format),
        axes=tuple(axes),
        datasets=tuple(
            {"path": path_, "coordinateTransformations": t}
            for path_, t in zip(spec.datasets, transforms, strict=True)
        ),
        shapes=tuple(tuple(int(n) for n in level.shape) for level in node.data),
        kept=kept,
    )
    logger.info("%s: %s", p, image.describe())
    return level0[index], image


def label_names(path: str | os.PathLike[str]) -> list[str]:
    """The label images listed in the ``labels/`` group of the OME-Zarr image at ``path``.

    Parameters
    ----------
    path : str or path-like
        An OME-Zarr image.

    Returns
    -------
    list of str
        The names, in order; empty when there is no ``labels/`` group (or no list in it).
    """
    labels = _image_path(Path(path)) / "labels"
    attrs = _ome_attrs(labels) if labels.is_dir() else None
    return list((attrs or {}).get("labels", []))


class AxisMappedArray:
    """The ``(Y, X)`` or ``(Z, Y, X)`` view of a label array with the image's axes, for writing.

    The core writes labels slice by slice into an array of the image's spatial shape; this maps
    each write onto the full array (``(T, 1, Z, Y, X)``...), at index 0 of the axes it lacks.

    Parameters
    ----------
    array : zarr.Array
        The full array.
    axes : tuple of int
        The full array's axes that this view has, in order.
    """

    def __init__(self, array: Any, axes: tuple[int, ...]) -> None:
        self.array = array
        self.axes = tuple(axes)
        self.shape = tuple(int(array.shape[i]) for i in self.axes)
        self.dtype = array.dtype
        self.ndim = len(self.shape)

    def _full_key(self, key: Any) -> tuple[Any, ...]:
        parts = list(key) if isinstance(key, tuple) else [key]
        if any(part is Ellipsis for part in parts):
            at = parts.index(Ellipsis)
            parts[at : at + 1] = [slice(None)] * (self.ndim - len(parts) + 1)
        parts += [slice(None)] * (self.ndim - len(parts))
        full: list[Any] = [0] * self.array.ndim
        for axis, part in zip(self.axes, parts, strict=True):
            full[axis] = part
        return tuple(full)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.array[self._full_key(key)] = value

    def __getitem__(self, key: Any) -> Any:
        return self.array[self._full_key(key)]


def _create_level(group: Any, image: OmeZarrImage, level: int, chunks: tuple[int, ...]) -> Any:
    """An empty int32 label array for ``level``, with the image's dimension names (zarr v3) or
    ``/``-separated chunk keys (zarr v2), as ome-zarr writes them."""
    shape = image.label_shape(level)
    options: dict[str, Any] = {}
    if image.zarr_format == 2:
        options["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    else:
        options["dimension_names"] = list(image.names)
    return group.create_array(
        name=image.datasets[level]["path"],
        shape=shape,
        chunks=tuple(min(c, n) for c, n in zip(chunks, shape, strict=True)),
        dtype="int32",
        fill_value=0,
        **options,
    )


def _nearest(array: Any, shape: tuple[int, ...]) -> Any:
    """``array`` (dask) resampled to ``shape`` by nearest neighbour, axis by axis, lazily."""
    import dask.array as da

    for axis, (n0, n) in enumerate(zip(array.shape, shape, strict=True)):
        if n0 != n:
            index = np.minimum(((np.arange(n) + 0.5) * n0 / n).astype(np.int64), n0 - 1)
            array = da.take(array, index, axis=axis)
    return array


def _write_lower_levels(group: Any, image: OmeZarrImage, chunks: tuple[int, ...]) -> None:
    """Levels 1... of the label image from level 0, chunk by chunk."""
    import dask.array as da

    if len(image.shapes) == 1:
        return
    level0 = da.from_zarr(group[image.datasets[0]["path"]])
    for level in range(1, len(image.shapes)):
        target = _create_level(group, image, level, chunks)
        da.store(_nearest(level0, target.shape).rechunk(target.chunks), target, lock=False)


def _write_metadata(group: Any, image: OmeZarrImage, name: str) -> None:
    """``multiscales`` (the image's axes and transformations) and ``image-label``."""
    from ome_zarr.format import format_from_version
    from ome_zarr.writer import add_metadata, write_multiscales_metadata

    fmt = format_from_version(image.version)
    datasets = [{k: v for k, v in d.items() if v is not None} for d in image.datasets]
    write_multiscales_metadata(group, datasets=datasets, fmt=fmt, axes=list(image.axes), name=name)
    label = {"version": fmt.version, "source": {"image": "../../"}}
    add_metadata(group, {"image-label": label}, fmt=fmt)


def _register(image: OmeZarrImage, name: str) -> None:
    """List ``name`` in ``labels/`` (once), the last step of writing a label image."""
    import zarr
    from ome_zarr.format import format_from_version
    from ome_zarr.writer import add_metadata

    group = zarr.open_group(str(image.path / "labels"), mode="a", zarr_format=image.zarr_format)
    names = [n for n in label_names(image.path) if n != name] + [name]
    metadata: dict[str, Any] = {"labels": names}
    if image.zarr_format == 3:  # NGFF 0.5: every group's "ome" attributes state the version
        metadata["version"] = image.version
    add_metadata(group, metadata, fmt=format_from_version(image.version))


def _check_name(name: str) -> None:
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise ValueError(
            f"a label image name must be a plain folder name (no '/', not starting with '.'), "
            f"got {name!r}"
        )


@contextmanager
def labels_into(
    image: OmeZarrImage, name: str, chunks: tuple[int, int]
) -> Iterator[AxisMappedArray]:
    """A label image ``labels/NAME`` of ``image``, written while the block runs.

    Parameters
    ----------
    image : OmeZarrImage
        The image (from :func:`read_ome_zarr`); it must be OME-Zarr 0.4 or 0.5.
    name : str
        The label image's name, e.g. ``'unet'``; one already there is replaced.
    chunks : tuple of int
        ``(Y, X)`` edge of a chunk; other axes get chunks of 1.

    Yields
    ------
    AxisMappedArray
        Level 0 as the core writes it: ``(Y, X)`` or ``(Z, Y, X)`` int32 (the data read's
        spatial shape). When the block ends without an error, the lower levels and the metadata
        are written, the label image is renamed into place and then listed in ``labels/``; on
        an error nothing is left.

    Raises
    ------
    ValueError
        For an older NGFF version or a name that is not a plain folder name.
    """
    import zarr

    _check_name(name)
    if image.version not in WRITABLE_VERSIONS:
        raise ValueError(
            f"{image.path}: labels can be written into OME-Zarr "
            f"{' or '.join(WRITABLE_VERSIONS)} images, this one is {image.version}"
        )
    full_chunks = (1,) * (len(image.axes) - 2) + tuple(chunks)
    labels_dir = image.path / "labels"
    labels_dir.mkdir(exist_ok=True)  # a plain folder until the label image is registered
    with atomic_path(labels_dir / name, folder=True) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=image.zarr_format)
        level0 = _create_level(group, image, 0, full_chunks)
        spatial = tuple(i for i in image.kept if i not in image.channel_axes)
        yield AxisMappedArray(level0, spatial)
        _write_lower_levels(group, image, full_chunks)
        _write_metadata(group, image, name)
    _register(image, name)
