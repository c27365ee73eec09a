"""Atomic writes: a file or a folder (a zarr store) appears whole or not at all.

Everything the project writes (model files, images, zarr stores) is first written to a temporary
path in the destination's folder and then renamed into place (``os.replace``), so a crash, a
Ctrl-C or a full disk never leaves half a file, and an existing file is only replaced once the
new one is complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "replace_path"]


@contextmanager
def atomic_path(path: str | os.PathLike, *, folder: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces ``path`` when the block ends without error.

    Parameters
    ----------
    path : str or os.PathLike
        The destination. Its folder must exist.
    folder : bool
        Give a temporary folder (for a zarr store or a package directory) instead of a file.

    Yields
    ------
    pathlib.Path
        Where to write. On an exception inside the block it is removed and ``path`` is left as
        it was.

    Raises
    ------
    FileNotFoundError
        If the destination's folder does not exist.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_path(out) as tmp:
    ...     _ = tmp.write_text("done")
    >>> out.read_text()
    'done'
    """
    dest = Path(path)
    if not dest.parent.exists():
        raise FileNotFoundError(f"folder does not exist: {dest.parent}")
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=dest.suffix, dir=dest.parent)
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
    try:
        yield tmp
        replace_path(tmp, dest)
    finally:
        _remove(tmp)


def replace_path(source: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move the finished ``source`` (file or folder) onto ``dest``, replacing what is there.

    A file replaces a file in one rename. A folder (or a file replacing a folder) first moves the
    old destination aside, then renames the new one into place and only then deletes the old
    one, so the destination is never missing for longer than one rename.

    Parameters
    ----------
    source : str or os.PathLike
        The complete new file or folder, on the same file system as ``dest``.
    dest : str or os.PathLike
        The destination.
    """
    source, dest = Path(source), Path(dest)
    if not (dest.is_dir() and not dest.is_symlink()):
        os.replace(source, dest)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
    os.replace(dest, aside / "old")
    os.replace(source, dest)
    shutil.rmtree(aside, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
