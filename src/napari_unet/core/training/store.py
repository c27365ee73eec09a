"""Where prepared training data live: in memory, or on disk when they are large.

:func:`~napari_unet.core.training.data.prepare_samples` prepares one 2D image at a time
(normalised image, target classes, border weights, labels) and hands it to a
:class:`SampleStore`. Below :data:`STORE_BYTES` of prepared data the arrays stay in memory;
above, each is written to a temporary folder and read back, when used, as a read-only memory
map, so that training data larger than memory work: the operating system pages in what a patch
reads (:class:`~napari_unet.core.training.data.PatchSampler` streams patches from such
samples), and drops it again when the map is released. The folder is removed with the store.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ARRAY_FIELDS",
    "STORE_BYTES",
    "SampleStore",
    "default_store",
    "prepared_bytes",
    "stored_class",
]

logger = logging.getLogger(__name__)

#: Prepared training data above this size are kept on disk (memory maps).
STORE_BYTES = 1 << 30


def prepared_bytes(shapes: list[tuple[int, int, int]], region: bool = False) -> int:
    """Bytes the prepared samples of 2D images of these ``(C, Y, X)`` shapes take in memory.

    float32 image, uint8 classes, float32 weights, int32 labels (and a bool region).

    Examples
    --------
    >>> prepared_bytes([(1, 100, 100)])
    130000
    """
    per_pixel = lambda c: 4 * c + 1 + 4 + 4 + (1 if region else 0)  # noqa: E731
    return int(sum(per_pixel(c) * y * x for c, y, x in shapes))


#: The array fields of a prepared sample that a store keeps on disk.
ARRAY_FIELDS = ("image", "classes", "weights", "labels", "region")


def _stored_field(name: str) -> property:
    """A field read from its file on each access (a fresh memory map, unmapped when dropped)."""

    def get(self: Any) -> Any:
        path = self.__dict__["stored_paths"].get(name)
        if path is None:
            return self.__dict__[name]
        return np.load(path, mmap_mode="r")

    def set_(self: Any, value: Any) -> None:
        self.__dict__.setdefault("stored_paths", {}).pop(name, None)
        self.__dict__[name] = value

    return property(get, set_)


@functools.cache
def stored_class(cls: type) -> type:
    """The subclass of a sample class whose array fields live in files."""
    namespace = {name: _stored_field(name) for name in ARRAY_FIELDS}
    namespace["__doc__"] = f"A {cls.__name__} whose arrays are read from files as used."
    return type(f"Stored{cls.__name__}", (cls,), namespace)


class SampleStore:
    """Keeps prepared samples in memory or as files in a temporary folder.

    A sample kept on disk reads each array from its file when it is used, as a read-only
    memory map that is unmapped once dropped: a pass over all the samples (counting annotated
    pixels, cell areas) holds one sample's pages at a time, and a patch read only its window.

    Parameters
    ----------
    folder : str or path-like, optional
        Where the files go (a new temporary folder inside it, removed with the store: when the
        last sample kept in it is gone, or at exit); ``None``: samples stay in memory.

    Examples
    --------
    >>> from napari_unet.core.training.data import AnnotatedImage
    >>> s = AnnotatedImage(np.ones((1, 4, 4), np.float32), np.ones((4, 4), np.uint8),
    ...                    np.ones((4, 4), np.float32), (0, 0))
    >>> kept = SampleStore(tempfile.gettempdir()).keep(s)
    >>> type(kept.weights).__name__, float(kept.weights.sum()), kept.n_annotated
    ('memmap', 16.0, 16)
    """

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self.folder: Path | None = None
        if folder is not None:
            self.folder = Path(tempfile.mkdtemp(prefix="napari-unet-data-", dir=folder))
            weakref.finalize(self, shutil.rmtree, self.folder, True)
        self.count = 0
        self.nbytes = 0

    @property
    def on_disk(self) -> bool:
        """The samples are written to disk."""
        return self.folder is not None

    def keep(self, sample: Any) -> Any:
        """The sample, its arrays moved to files when the store is on disk."""
        if self.folder is None:
            return sample
        kept = copy.copy(sample)
        kept.__class__ = stored_class(type(sample))
        paths = {}
        for name in ARRAY_FIELDS:
            array = sample.__dict__.get(name)
            if array is not None:
                paths[name] = self._write(np.asarray(array))
                del kept.__dict__[name]
        kept.__dict__["stored_paths"] = paths
        kept.__dict__["store"] = self  # the folder lives as long as its samples
        return kept

    def _write(self, array: np.ndarray) -> Path:
        """Write ``array`` to a new ``.npy`` file (plain writes: nothing stays mapped)."""
        assert self.folder is not None
        path = self.folder / f"{self.count}.npy"
        self.count += 1
        np.save(path, np.ascontiguousarray(array))
        self.nbytes += int(array.nbytes)
        return path


def default_store(nbytes: int, limit: int | None = None) -> SampleStore:
    """A store on disk (the system's temporary folder) when ``nbytes`` exceed ``limit``.

    Parameters
    ----------
    nbytes : int
        Size of the prepared data (:func:`prepared_bytes`).
    limit : int, optional
        :data:`STORE_BYTES` by default.

    Returns
    -------
    SampleStore
        In memory, or on disk.
    """
    limit = STORE_BYTES if limit is None else int(limit)
    if nbytes <= limit:
        return SampleStore()
    store = SampleStore(tempfile.gettempdir())
    logger.info("prepared data of %.1f GiB are kept on disk in %s", nbytes / 2**30, store.folder)
    return store
