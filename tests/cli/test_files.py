"""The command line's image files: round trips, and writes that land whole or not at all."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet.cli.batch import output_array
from napari_unet.cli.files import read_image, write_image


@pytest.mark.parametrize("name", ["a.npy", "a.tif", "a.TIFF"])
def test_write_then_read(tmp_path, name) -> None:
    data = np.arange(12, dtype=np.int32).reshape(3, 4)
    assert write_image(tmp_path / name, data) == tmp_path / name
    np.testing.assert_array_equal(read_image(tmp_path / name), data)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.ones((2, 2), np.uint8))

    def broken(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(OSError, match="disk full"):
        write_image(path, np.zeros((2, 2), np.uint8))
    np.testing.assert_array_equal(tifffile.imread(path), np.ones((2, 2), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["a.tif"]


def test_bad_destinations(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"expected a \.tif, \.tiff or \.npy path"):
        write_image(tmp_path / "a.png", np.zeros((2, 2)))
    with pytest.raises(FileNotFoundError, match="folder does not exist"):
        write_image(tmp_path / "missing" / "a.npy", np.zeros((2, 2)))


@pytest.mark.parametrize("name", ["out.zarr", "out.npy"])
def test_predict_output_lands_only_when_complete(tmp_path, name) -> None:
    zarr = pytest.importorskip("zarr")
    path = tmp_path / name
    with output_array(path, (4, 6), "int32", (4, 6)) as out:
        out[:] = 7
    read = zarr.open_array(str(path), mode="r")[:] if name.endswith("zarr") else np.load(path)
    np.testing.assert_array_equal(read, np.full((4, 6), 7))
    with pytest.raises(RuntimeError), output_array(path, (4, 6), "int32", (4, 6)) as out:
        out[:] = 1
        raise RuntimeError("stopped")
    read = zarr.open_array(str(path), mode="r")[:] if name.endswith("zarr") else np.load(path)
    np.testing.assert_array_equal(read, np.full((4, 6), 7))  # the old output, untouched
    assert [p.name for p in tmp_path.iterdir()] == [name]
