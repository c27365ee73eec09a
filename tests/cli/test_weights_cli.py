"""Tests for ``napari-unet weights``."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main
from napari_unet.core.targets import border_weight_map
from napari_unet.sample_data import make_touching_cells


@pytest.fixture
def labels():
    return make_touching_cells((64, 64), 10, seed=0)[1]


def test_weights_2d_tif(tmp_path, labels, capsys):
    src, dst = tmp_path / "labels.tif", tmp_path / "weights.tif"
    tifffile.imwrite(src, labels)
    assert main(["weights", str(src), "--out", str(dst)]) == 0
    out = tifffile.imread(dst)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, border_weight_map(labels))
    assert "wrote" in capsys.readouterr().out


def test_weights_options_and_npy(tmp_path, labels):
    src, dst = tmp_path / "labels.npy", tmp_path / "weights.npy"
    np.save(src, labels.astype(np.uint16))
    argv = ["weights", str(src), "-o", str(dst), "--w0", "3", "--sigma", "2.5"]
    assert main([*argv, "--no-class-balance"]) == 0
    expected = border_weight_map(labels, w0=3.0, sigma=2.5, class_balance=False)
    np.testing.assert_array_equal(np.load(dst), expected)


def test_weights_stack_slice_by_slice(tmp_path, labels):
    stack = np.stack([labels, np.zeros_like(labels), labels[::-1]])
    src, dst = tmp_path / "stack.tif", tmp_path / "w.tif"
    tifffile.imwrite(src, stack)
    assert main(["weights", str(src), "--out", str(dst)]) == 0
    out = tifffile.imread(dst)
    assert out.shape == stack.shape
    for z in range(3):
        np.testing.assert_array_equal(out[z], border_weight_map(stack[z]))


@pytest.mark.parametrize(
    ("data", "extra", "message"),
    [
        (np.zeros((8, 8), np.float32), [], "must be an integer label image.*float32"),
        (np.full((8, 8), -2, np.int16), [], "must be non-negative, got minimum -2"),
        (np.zeros((2, 2, 8, 8), np.int32), [], r"must be 2D \(Y, X\) or a 3D.*got 4D"),
        (np.zeros((8, 8), np.int32), ["--sigma", "0"], "sigma must be a finite number > 0"),
    ],
)
def test_weights_bad_input_exits_2(tmp_path, capsys, data, extra, message):
    src = tmp_path / "labels.npy"
    np.save(src, data)
    code = main(["weights", str(src), "--out", str(tmp_path / "w.tif"), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("napari-unet weights: error:")
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err)
    assert not (tmp_path / "w.tif").exists()


def test_weights_bad_paths_exit_2(tmp_path, capsys, labels):
    src = tmp_path / "labels.npy"
    np.save(src, labels)
    assert main(["weights", str(tmp_path / "missing.tif"), "--out", str(tmp_path / "w.tif")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["weights", str(src), "--out", str(tmp_path / "w.png")]) == 2
    assert "--out must end in .tif, .tiff, .npy, got 'w.png'" in capsys.readouterr().err
    assert main(["weights", str(src), "--out", str(tmp_path / "nope" / "w.tif")]) == 2
    assert "folder for --out does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("channels", [3, 4])
def test_weights_refuses_a_colour_label_image(tmp_path, capsys, labels, channels):
    from skimage.io import imsave

    colour = np.stack([(labels * 20 % 256).astype(np.uint8)] * channels, axis=-1)
    src = tmp_path / "labels.png"
    imsave(src, colour, check_contrast=False)
    dst = tmp_path / "w.tif"
    assert main(["weights", str(src), "--out", str(dst)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-unet weights: error:") and err.count("\n") == 1
    assert f"shape (64, 64, {channels}), a colour" in err
    assert "one integer per pixel" in err
    assert not dst.exists()


def test_weights_takes_a_stack_of_three_slices(tmp_path, labels):
    stack = np.stack([labels, labels[::-1], labels[:, ::-1]])  # (3, Y, X): not colour
    src, dst = tmp_path / "s.npy", tmp_path / "w.npy"
    np.save(src, stack)
    assert main(["weights", str(src), "--out", str(dst)]) == 0
    assert np.load(dst).shape == stack.shape


# ----------------------------------------------------------------------------------- volumes


@pytest.fixture
def volume():
    from napari_unet.sample_data import make_touching_nuclei_3d

    return make_touching_nuclei_3d((10, 40, 40), 8, spacing=(2.0, 1.0, 1.0), seed=0)[1]


def test_weights_volume_with_ndim_3_and_scale(tmp_path, volume, capsys):
    src, dst = tmp_path / "volume.tif", tmp_path / "w.tif"
    tifffile.imwrite(src, volume)
    argv = ["weights", str(src), "--out", str(dst), "--ndim", "3", "--scale", "2", "1", "1"]
    assert main(argv) == 0
    expected = border_weight_map(volume, sampling=(2.0, 1.0, 1.0))
    np.testing.assert_array_equal(tifffile.imread(dst), expected)
    assert "10 x 40 x 40 float32" in capsys.readouterr().out
    # three values of --scale say "a volume" on their own; --ndim 3 alone is isotropic
    assert main(["weights", str(src), "--out", str(dst), "--scale", "2", "1", "1"]) == 0
    np.testing.assert_array_equal(tifffile.imread(dst), expected)
    assert main(["weights", str(src), "--out", str(dst), "--ndim", "3"]) == 0
    iso = border_weight_map(volume, sampling=(1.0, 1.0, 1.0))
    np.testing.assert_array_equal(tifffile.imread(dst), iso)
    assert not np.array_equal(iso, expected)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ndim", "3", "--scale", "2", "1"], r"--scale must have 3 values .* got 2"),
        (["--scale", "2", "0", "1"], r"--scale must hold finite spacings > 0 .* \(2.0, 0.0, 1.0\)"),
        (["--scale", "1", "-1", "1"], "--scale must hold finite spacings > 0"),
        (["--ndim", "2", "--scale", "2", "1", "1"], r"--scale must have 2 values"),
    ],
)
def test_weights_bad_voxel_size_exits_2(tmp_path, capsys, volume, extra, message):
    src, dst = tmp_path / "v.npy", tmp_path / "w.tif"
    np.save(src, volume)
    assert main(["weights", str(src), "--out", str(dst), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-unet weights: error:") and err.count("\n") == 1
    assert re.search(message, err)
    assert not dst.exists()


def test_weights_ndim_3_needs_a_volume(tmp_path, capsys, labels):
    src = tmp_path / "l.npy"
    np.save(src, labels)
    assert main(["weights", str(src), "--out", str(tmp_path / "w.npy"), "--ndim", "3"]) == 2
    assert "--ndim 3 needs a (Z, Y, X) label volume" in capsys.readouterr().err


def test_weights_volume_takes_the_voxel_size_of_an_ome_zarr(tmp_path, volume, capsys):
    pytest.importorskip("ome_zarr")
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image as write_ome_image

    src, dst = tmp_path / "labels.ome.zarr", tmp_path / "w.npy"
    root = zarr.open_group(str(src), mode="w", zarr_format=2)
    scale = {"z": 2.5, "y": 1.0, "x": 1.0}
    write_ome_image(volume, root, axes="zyx", fmt=FormatV04(), scale=scale, scale_factors=(2,))
    assert main(["weights", str(src), "--out", str(dst), "--ndim", "3"]) == 0
    expected = border_weight_map(volume, sampling=(2.5, 1.0, 1.0))
    np.testing.assert_array_equal(np.load(dst), expected)
    assert "one volume of voxel size 2.5 x 1 x 1" in capsys.readouterr().out
    # --scale overrides what the file states
    assert main(["weights", str(src), "--out", str(dst), "--scale", "1", "1", "1"]) == 0
    np.testing.assert_array_equal(np.load(dst), border_weight_map(volume, sampling=(1, 1, 1)))
