"""Where prepared training data live: in memory, or on disk when they are large.

:func:`~napari_unet.core.training.data.prepare_samples` prepares one 2D image at a time
(normalised image, target classes, border weights, labels) and hands it to a
:class:`SampleStore`. Below :data:`STORE_BYTES` of prepared data the arrays stay in memory;
above, each is written to a temporary folder and read back as a read-only memory map, so that
training data larger than memory work: the operating system pages in what a patch reads
(:class:`~napari_unet.core.training.data.PatchSampler` streams patches from such samples). The
files are unlinked as soon as they are mapped where the system allows it (POSIX), so nothing is
left behind, whatever ends the run.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["STORE_BYTES", "SampleStore", "default_store", "prepared_bytes"]

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


class SampleStore:
    """Keeps prepared samples in memory or as memory-mapped files in a temporary folder.

    Parameters
    ----------
    folder : str or path-like, optional
        Where the files go (a new temporary folder inside it); ``None``: samples stay in memory.

    Examples
    --------
    >>> from napari_unet.core.training.data import AnnotatedImage
    >>> s = AnnotatedImage(np.ones((1, 4, 4), np.float32), np.ones((4, 4), np.uint8),
    ...                    np.ones((4, 4), np.float32), (0, 0))
    >>> kept = SampleStore(tempfile.gettempdir()).keep(s)
    >>> type(kept.weights).__name__, float(kept.weights.sum())
    ('memmap', 16.0)
    """

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self.folder: Path | None = None
        if folder is not None:
            self.folder = Path(tempfile.mkdtemp(prefix="napari-unet-data-", dir=folder))
            atexit.register(shutil.rmtree, self.folder, ignore_errors=True)
        self.count = 0
        self.nbytes = 0

    @property
    def on_disk(self) -> bool:
        """The samples are written to disk."""
        return self.folder is not None

    def keep(self, sample: Any) -> Any:
        """The sample, its arrays moved to disk when the store is on disk."""
        if self.folder is None:
            return sample
        arrays = {
            name: getattr(sample, name)
            for name in ("image", "classes", "weights", "labels", "region")
            if getattr(sample, name) is not None
        }
        mapped = {name: self._map(array) for name, array in arrays.items()}
        return replace(sample, **mapped)

    def _map(self, array: np.ndarray) -> np.ndarray:
        """Write ``array`` to a file and map it back read-only (the file then unlinked)."""
        assert self.folder is not None
        path = self.folder / f"{self.count}.npy"
        self.count += 1
        np.save(path, np.ascontiguousarray(array))
        self.nbytes += int(array.nbytes)
        mapped = np.load(path, mmap_mode="r")
        with contextlib.suppress(OSError):  # mapped files cannot be removed on Windows
            path.unlink()
        return mapped


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
