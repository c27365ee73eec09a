"""``napari-unet predict`` with a 3D model: one volume in, one 3D label image out."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_unet.cli import main
from napari_unet.core.inference import segment
from napari_unet.core.model import TrainedModel
from napari_unet.core.model_files import save_model
from napari_unet.core.progress import run_to_end

VOXEL = (3.0, 1.0, 1.0)


@pytest.fixture
def model_3d(tmp_path, tiny_model):
    net = tiny_model(spatial_dims=3, voxel_size=VOXEL).net.eval()
    with torch.no_grad():
        net.head.bias[1] += 0.3  # some foreground from an untrained network
    model = TrainedModel(
        net, gap=1, training={"min_size": 2, "threshold": 0.5, "min_confidence": 0.0}
    )
    return model, save_model(model, tmp_path / "m3.pt")


def _volume(shape=(7, 40, 36)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random(shape) * 255).astype(np.uint8)


def test_predict_volume_is_one_3d_segmentation(tmp_path, model_3d, capsys):
    model, path = model_3d
    volume = _volume()
    tifffile.imwrite(tmp_path / "vol.tif", volume)
    out = tmp_path / "labels.tif"
    argv = ["predict", str(path), str(tmp_path / "vol.tif"), "--out", str(out)]
    assert main([*argv, "--device", "cpu", "--tile", "64", "--scale", "3", "1", "1"]) == 0
    labels = tifffile.imread(out)
    expected = run_to_end(segment(model, volume, tile=64, device="cpu"))
    assert labels.shape == volume.shape and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, expected)
    assert int(labels.max()) > 0
    # One 3D object spans several slices (a 2D model would number each slice apart).
    spans = [len(np.unique(np.nonzero(labels == k)[0])) for k in range(1, int(labels.max()) + 1)]
    assert max(spans) > 1
    assert f"{int(expected.max())} objects" in capsys.readouterr().out


def test_predict_volume_into_zarr(tmp_path, model_3d):
    model, path = model_3d
    volume = _volume((5, 30, 30))
    np.save(tmp_path / "vol.npy", volume)
    out = tmp_path / "labels.zarr"
    argv = ["predict", str(path), str(tmp_path / "vol.npy"), "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    expected = run_to_end(segment(model, volume, device="cpu"))
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], expected)


@pytest.mark.parametrize(
    ("scale", "message"),
    [
        (["1", "1"], "--scale must have 3 values"),
        (["3", "0", "1"], "--scale must hold finite spacings > 0"),
        (["1", "0.5", "0.5"], "differs from the voxel size"),
    ],
)
def test_bad_scale_exits_2(tmp_path, model_3d, capsys, scale, message):
    _, path = model_3d
    tifffile.imwrite(tmp_path / "vol.tif", _volume((5, 30, 30)))
    argv = ["predict", str(path), str(tmp_path / "vol.tif"), "--out", str(tmp_path / "o.tif")]
    assert main([*argv, "--scale", *scale]) == 2
    assert message in capsys.readouterr().err


def test_3d_model_on_a_2d_image_exits_2(tmp_path, model_3d, capsys):
    _, path = model_3d
    tifffile.imwrite(tmp_path / "img.tif", _volume((30, 30)))
    argv = ["predict", str(path), str(tmp_path / "img.tif"), "--out", str(tmp_path / "o.tif")]
    assert main(argv) == 2
    assert "a 3D model needs a volume" in capsys.readouterr().err
