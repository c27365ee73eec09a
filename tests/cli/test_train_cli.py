"""Tests for ``napari-unet train``."""

from __future__ import annotations

import io
import signal

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.cli import main
from napari_unet.cli import train as train_cli
from napari_unet.core.model import TrainedModel, UNet, UNetConfig
from napari_unet.core.model_files import load_model, save_model
from napari_unet.core.training import TrainEvent
from napari_unet.sample_data import make_touching_cells


@pytest.fixture(scope="module")
def cells():
    return make_touching_cells((64, 64), n_cells=8, seed=3)


@pytest.fixture
def tiny(tiny_file):
    return tiny_file()


def _fast_args(tiny):
    return ["--init", str(tiny), "--patch", "32", "--batch", "2", "--device", "cpu"]


def test_train_tif_writes_a_model(tmp_path, cells, capsys):
    image, labels = cells
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    out = tmp_path / "model.pt"
    argv = ["train", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif")]
    argv += ["--out", str(out), "--iterations", "2", "--patch", "16", "--batch", "2"]
    argv += ["--device", "cpu", "--seed", "3"]
    assert main(argv) == 0
    model = load_model(out)
    assert model.config.base_channels == 16  # fast preset
    settings = model.training["settings"]
    assert settings["iterations"] == 2 and settings["seed"] == 3 and settings["patch_size"] == 16
    assert model.training["summary"]["iterations_done"] == 2
    captured = capsys.readouterr()
    assert f"saved {out}" in captured.out and "2 iterations" in captured.out
    assert "loss" in captured.err  # progress lines (stderr is not a terminal here)


def test_png_npy_region_and_fine_tuning(tmp_path, cells, tiny):
    from skimage.io import imsave

    image, labels = cells
    imsave(tmp_path / "img.png", (image // 256).astype(np.uint8), check_contrast=False)
    np.save(tmp_path / "lab.npy", labels)
    region = np.zeros(labels.shape, np.uint8)
    region[8:56, 8:56] = 1
    np.save(tmp_path / "region.npy", region)
    out = tmp_path / "tuned.pt"
    argv = ["train", str(tmp_path / "img.png"), "--labels", str(tmp_path / "lab.npy")]
    argv += ["--region", str(tmp_path / "region.npy"), "--out", str(out), "--iterations", "3"]
    assert main(argv + _fast_args(tiny) + ["--quiet"]) == 0
    model = load_model(out)
    assert model.config == load_model(tiny).config
    assert model.training["summary"]["annotated_pixels"] == 48 * 48
    assert "fine_tuned_from" in model.training


def test_zarr_stack_with_channels(tmp_path, cells, tiny):
    zarr = pytest.importorskip("zarr")
    image, labels = cells
    stack = np.stack([np.stack([image, image // 2])] * 2)  # (Z, C, Y, X)
    z = zarr.open(str(tmp_path / "img.zarr"), mode="w", shape=stack.shape, dtype=stack.dtype)
    z[:] = stack
    lab = np.stack([labels, np.zeros_like(labels)])
    np.save(tmp_path / "lab.npy", lab)
    torch.manual_seed(0)
    two = save_model(
        TrainedModel(UNet(UNetConfig(in_channels=2, depth=2, base_channels=4))),
        tmp_path / "two.pt",
    )
    out = tmp_path / "m.pt"
    argv = ["train", str(tmp_path / "img.zarr"), "--labels", str(tmp_path / "lab.npy")]
    argv += ["--out", str(out), "--iterations", "2", "--channel-axis", "1"]
    argv += ["--init", str(two), "--patch", "32", "--batch", "2", "--device", "cpu"]
    assert main(argv) == 0
    assert load_model(out).training["summary"]["n_images"] == 1  # the unlabelled slice skipped


def test_bad_input_is_one_line_and_exit_2(tmp_path, cells, tiny, capsys):
    image, labels = cells
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "lab.npy", labels)
    np.save(tmp_path / "short.npy", labels[:40])
    np.save(tmp_path / "empty.npy", np.zeros_like(labels))
    out = tmp_path / "m.pt"
    img, lab = str(tmp_path / "img.npy"), str(tmp_path / "lab.npy")
    cases = [
        ([img, img, "--labels", lab], "one file per image"),
        ([img, "--labels", lab, "--region", lab, lab], "one mask per image"),
        ([img, "--labels", str(tmp_path / "missing.npy")], "no such file"),
        ([img, "--labels", str(tmp_path / "short.npy")], "shape (40, 64)"),
        ([img, "--labels", str(tmp_path / "empty.npy")], "no annotated cell"),
        ([img, "--labels", lab, "--lr", "-1"], "learning_rate"),
        ([img, "--labels", lab, "--device", "warp"], "device"),
    ]
    for args, message in cases:
        assert main(["train", *args, "--out", str(out), "--iterations", "1"]) == 2, message
        err = capsys.readouterr().err.strip()
        assert err.startswith("napari-unet train: error:") and message in err
        assert len(err.splitlines()) == 1
        assert not out.exists()
    argv = ["train", img, "--labels", lab, "--out", str(tmp_path / "no" / "m.pt")]
    assert main(argv) == 2
    assert "folder does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "train",
                img,
                "--labels",
                lab,
                "--out",
                str(out),
                "--iterations",
                "1",
                "--minutes",
                "2",
            ]
        )
    assert exc.value.code == 2


def test_ctrl_c_stops_after_the_step_and_saves(tmp_path, cells, tiny, ctrl_c_at, capsys):
    image, labels = cells
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "lab.npy", labels)
    ctrl_c_at(2)
    out = tmp_path / "m.pt"
    argv = ["train", str(tmp_path / "img.npy"), "--labels", str(tmp_path / "lab.npy")]
    argv += ["--out", str(out), "--iterations", "50"]
    assert main(argv + _fast_args(tiny)) == 0
    summary = load_model(out).training["summary"]
    assert summary["iterations_done"] == 2 and summary["stopped"] is True
    assert "stopping after this step" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_line():
    event = TrainEvent(
        iteration=50,
        iterations=200,
        loss=0.1234,
        learning_rate=1e-3,
        elapsed=30.0,
        samples_per_second=12.5,
        validation=None,
        device="CPU, 2 threads",
        best_validation=0.876,
    )
    stream = _Terminal()
    line = train_cli.ProgressLine(stream)
    line.update(event)
    line.close()
    text = stream.getvalue()
    assert text.startswith("\r")
    assert "50/200" in text
    assert "loss 0.1234" in text and "val AP 0.876" in text and "12.5 patches/s" in text
    assert "IoU" not in text  # the default metric is instance AP
    assert text.endswith("\n")
    stream = _Terminal()
    line = train_cli.ProgressLine(stream, metric="IoU")  # --validation-metric iou
    line.update(event)
    line.close()
    assert "val IoU 0.876" in stream.getvalue()
