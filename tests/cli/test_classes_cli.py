"""``napari-unet train --mode classes`` and ``napari-unet predict`` with a classes model."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.cli import main
from napari_unet.core.inference import predict_probabilities
from napari_unet.core.model import TrainedModel, UNet, UNetConfig
from napari_unet.core.model_files import load_model, save_model
from napari_unet.core.progress import run_to_end


@pytest.fixture
def files(tmp_path, tiny_file):
    """An image of three bands with scribbles of three classes, and tiny models of each mode."""
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, (48, 48)).astype(np.float32)
    image[:, 16:32] += 50
    image[:, 32:] += 100
    scribbles = np.zeros((48, 48), np.uint8)
    for k in range(3):
        scribbles[4:44:6, 16 * k + 3 : 16 * k + 13] = k + 1
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "scribbles.tif", scribbles)
    torch.manual_seed(0)
    classes = TrainedModel(
        UNet(UNetConfig(depth=2, base_channels=4, n_classes=3)).eval(), mode="classes"
    )
    save_model(classes, tmp_path / "tiny_classes.pt")
    tiny_file("cells.pt")
    return tmp_path, image


def _train_argv(path, init: str, *extra: str) -> list[str]:
    argv = ["train", str(path / "img.tif"), "--labels", str(path / "scribbles.tif")]
    argv += ["--init", str(path / init), "--patch", "32", "--batch", "2", "--device", "cpu"]
    return [*argv, "--iterations", "2", "--seed", "0", "--quiet", *extra]


def test_train_classes_then_predict_class_ids_and_probabilities(files, capsys):
    path, image = files
    argv = _train_argv(path, "tiny_classes.pt", "--mode", "classes", "--out", str(path / "m.pt"))
    assert main([*argv, "--class-names", "background", "middle", "right"]) == 0
    model = load_model(path / "m.pt")
    assert model.mode == "classes"
    assert model.class_names == ("background", "middle", "right")
    assert f"saved {path / 'm.pt'}: 2 iterations" in capsys.readouterr().out
    out, prob = path / "classes.tif", path / "prob.tif"
    argv = ["predict", str(path / "m.pt"), str(path / "img.tif"), "--out", str(out)]
    argv += ["--probabilities", str(prob), "--device", "cpu", "--runtime", "torch"]
    assert main(argv) == 0
    assert "uint8 class ids" in capsys.readouterr().out
    ids, probabilities = tifffile.imread(out), tifffile.imread(prob)
    expected = run_to_end(predict_probabilities(model, image, device="cpu", runtime="torch"))
    assert probabilities.shape == (3, 48, 48)
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    assert ids.dtype == np.uint8
    np.testing.assert_array_equal(ids, expected.argmax(axis=0) + 1)


def test_classes_model_with_instance_options_is_refused(files, capsys):
    path, _ = files
    argv = ["predict", str(path / "tiny_classes.pt"), str(path / "img.tif")]
    argv += ["--out", str(path / "x.tif"), "--threshold", "0.4"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--threshold apply to a 'cells' model" in err and "'classes' model" in err
    assert not (path / "x.tif").exists()


def test_modes_mixed_when_fine_tuning_are_one_line_and_exit_2(files, capsys):
    path, _ = files
    out = path / "never.pt"
    assert main(_train_argv(path, "tiny_classes.pt", "--out", str(out))) == 2
    assert "needs a 'cells' model, got a 'classes' model" in capsys.readouterr().err
    assert main(_train_argv(path, "cells.pt", "--mode", "classes", "--out", str(out))) == 2
    assert "needs a 'classes' model, got a 'cells' model" in capsys.readouterr().err
    assert not out.exists()


def test_bad_scribbles_are_one_line_and_exit_2(files, capsys):
    path, _ = files
    one = np.zeros((48, 48), np.uint8)
    one[5:10, 5:20] = 1
    tifffile.imwrite(path / "scribbles.tif", one)
    argv = _train_argv(path, "tiny_classes.pt", "--mode", "classes", "--out", str(path / "m.pt"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "one class only" in err
    cells = _train_argv(path, "tiny_classes.pt", "--out", str(path / "m.pt"))
    assert main([*cells, "--class-names", "a"]) == 2
    assert "--class-names needs --mode classes" in capsys.readouterr().err


def test_export_of_a_classes_model_is_refused(files, capsys):
    path, _ = files
    out = path / "m.zip"
    argv = ["export", str(path / "tiny_classes.pt"), "--out", str(out), "--no-check"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "bioimage.io package (foreground probability) needs a 'cells' model" in err
    assert not out.exists()
