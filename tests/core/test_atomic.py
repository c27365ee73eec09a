"""Atomic writes: whole or nothing, ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from napari_unet.core.atomic import atomic_path


def test_file_replaced_only_when_complete(tmp_path) -> None:
    dest = tmp_path / "a.txt"
    dest.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert dest.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    with atomic_path(dest) as tmp:
        tmp.write_text("new")
    assert dest.read_text() == "new"


def test_folder_replaces_folder(tmp_path) -> None:
    dest = tmp_path / "store.zarr"
    dest.mkdir()
    (dest / "old").write_text("x")
    with atomic_path(dest, folder=True) as tmp:
        (tmp / "new").write_text("y")
    assert sorted(p.name for p in dest.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.zarr"]


def test_file_gets_the_permissions_open_would_give(tmp_path) -> None:
    mask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "m.pt") as tmp:
            tmp.write_bytes(b"1")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "m.pt").stat().st_mode) == 0o644
