"""The option helpers shared by the sub-commands."""

from __future__ import annotations

import pytest

from napari_unet.cli import UsageError
from napari_unet.cli.options import check_output_path


def test_check_output_path(tmp_path) -> None:
    assert check_output_path(str(tmp_path / "m.pt"), "--out") == tmp_path / "m.pt"
    assert check_output_path(tmp_path / "a.TIF", "--out", (".tif", ".npy")) == tmp_path / "a.TIF"
    with pytest.raises(UsageError, match=r"^--out must end in \.tif, \.npy, got 'a\.png'$"):
        check_output_path(tmp_path / "a.png", "--out", (".tif", ".npy"))
    with pytest.raises(UsageError, match=r"\.zip \(or a folder\), got 'a\.pt'"):
        check_output_path(tmp_path / "a.pt", "-o", (".zip",), hint=" (or a folder)")
    with pytest.raises(UsageError, match="--out must be a file name, got a folder"):
        check_output_path(tmp_path, "--out")
    (tmp_path / "labels.zarr").mkdir()  # a zarr store is a folder that is written as a file
    assert check_output_path(tmp_path / "labels.zarr", "--out", (".zarr",)).name == "labels.zarr"
    missing = tmp_path / "no" / "m.pt"
    with pytest.raises(
        FileNotFoundError, match=f"folder for --checkpoint does not exist: {missing.parent}"
    ):
        check_output_path(missing, "--checkpoint")
    assert not (tmp_path / "no").exists()  # nothing is made
