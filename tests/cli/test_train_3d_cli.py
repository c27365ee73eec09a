"""``napari-unet train --ndim 3 --scale Z Y X``: a 3D model from a volume annotated on slices."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main
from napari_unet.core.model_files import load_model
from napari_unet.sample_data import make_touching_nuclei_3d

VOXEL = (2.5, 1.0, 1.0)


@pytest.fixture
def files(tmp_path, tiny_file):
    image, labels = make_touching_nuclei_3d(
        (10, 32, 32), n_nuclei=4, spacing=VOXEL, radius=(6.0, 8.0), seed=2
    )
    sparse = np.zeros_like(labels)
    sparse[[2, 6]] = labels[[2, 6]]
    tifffile.imwrite(tmp_path / "vol.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", sparse)
    tiny_file(spatial_dims=3, voxel_size=VOXEL)
    return tmp_path


def _argv(path, *extra: str) -> list[str]:
    return [
        "train", str(path / "vol.tif"), "--labels", str(path / "lab.tif"),
        "--out", str(path / "m.pt"), "--init", str(path / "tiny.pt"), "--device", "cpu",
        "--iterations", "2", "--patch", "16", "--batch", "2", "--context", "4", "--quiet",
        *extra,
    ]  # fmt: skip


def test_train_a_3d_model_from_a_volume(files) -> None:
    assert main(_argv(files, "--ndim", "3", "--scale", "2.5", "1", "1")) == 0
    model = load_model(files / "m.pt")
    assert model.config.spatial_dims == 3 and model.config.voxel_size == VOXEL
    assert model.training["settings"]["spatial_dims"] == 3
    assert model.training["summary"]["annotated_pixels"] == 2 * 32 * 32  # two slices


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--ndim", "3", "--scale", "1", "1"), "--scale"),
        (("--ndim", "3", "--scale", "2.5", "-1", "1"), "--scale"),
        (
            (
                "--ndim",
                "2",
            ),
            "is a 3D network but the settings ask for 2D",
        ),
        (("--ndim", "3", "--scale", "1", "1", "1"), "differs from the voxel size"),
    ],
)
def test_bad_3d_options_exit_2(files, capsys, extra, message) -> None:
    assert main(_argv(files, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (files / "m.pt").exists()


def test_ndim_3_on_a_2d_image_exits_2(files, capsys) -> None:
    tifffile.imwrite(
        files / "vol.tif", np.zeros((32, 32), np.uint8) + np.arange(32, dtype=np.uint8)
    )
    lab = np.zeros((32, 32), np.int32)
    lab[4:10, 4:10] = 1
    tifffile.imwrite(files / "lab.tif", lab)
    assert main(_argv(files, "--ndim", "3", "--scale", "2.5", "1", "1")) == 2
    assert "3D training needs volumes" in capsys.readouterr().err


def test_ndim_3_takes_the_volume_defaults(files) -> None:
    argv = [
        "train", str(files / "vol.tif"), "--labels", str(files / "lab.tif"),
        "--out", str(files / "m.pt"), "--init", str(files / "tiny.pt"), "--device", "cpu",
        "--iterations", "1", "--quiet", "--ndim", "3", "--scale", "2.5", "1", "1",
    ]  # fmt: skip
    assert main(argv) == 0
    settings = load_model(files / "m.pt").training["settings"]
    assert (settings["patch_size"], settings["context"], settings["batch_size"]) == (48, 8, 2)
    assert main([*argv, "--patch", "16", "--context", "4"]) == 0
    settings = load_model(files / "m.pt").training["settings"]
    assert (settings["patch_size"], settings["context"], settings["batch_size"]) == (16, 4, 2)
