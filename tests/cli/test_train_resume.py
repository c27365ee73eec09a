"""``napari-unet train --resume``: Ctrl-C writes a checkpoint; the resumed run ends alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.cli import main
from napari_unet.core.model_files import load_model
from napari_unet.core.training.checkpoint import load_checkpoint
from napari_unet.sample_data import make_touching_cells


@pytest.fixture
def files(tmp_path, tiny_file):
    image, labels = make_touching_cells((64, 64), n_cells=8, seed=3)
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "lab.npy", labels)
    tiny_file()
    return tmp_path


def _argv(folder, out, *more):
    return [
        "train", str(folder / "img.npy"), "--labels", str(folder / "lab.npy"),
        "--out", str(folder / out), "--patch", "32", "--batch", "2", "--device", "cpu",
        "--seed", "1", *more,
    ]  # fmt: skip


def test_ctrl_c_then_resume_gives_the_uninterrupted_model(files, ctrl_c_at):
    init = ["--init", str(files / "tiny.pt")]
    assert main(_argv(files, "full.pt", "--iterations", "5", "--quiet", *init)) == 0
    assert not (files / "full.ckpt").exists()  # a short run that was not stopped

    ctrl_c_at(2)
    assert main(_argv(files, "part.pt", "--iterations", "5", *init)) == 0
    ctrl_c_at(None)
    assert load_checkpoint(files / "part.ckpt").iteration == 2

    resume = ["--resume", str(files / "part.ckpt"), "--quiet"]
    assert main(_argv(files, "resumed.pt", *resume)) == 0
    full, resumed = load_model(files / "full.pt"), load_model(files / "resumed.pt")
    assert resumed.training["summary"]["iterations_done"] == 5
    for key, value in full.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[key], value, atol=1e-6, rtol=0)
    assert resumed.training["settings"] == full.training["settings"]


def test_resume_refuses_changed_settings_and_init(files, capsys):
    signal_free = ["--iterations", "1", "--quiet", "--checkpoint-minutes", "1e-9"]
    assert main(_argv(files, "a.pt", *signal_free)) == 0
    ckpt = str(files / "a.ckpt")
    assert load_checkpoint(ckpt).iteration == 1
    assert main(_argv(files, "b.pt", "--resume", ckpt, "--lr", "0.5")) == 2
    assert "--lr 0.5 differs from the checkpoint's 0.001" in capsys.readouterr().err
    assert main(_argv(files, "b.pt", "--resume", ckpt, "--init", str(files / "tiny.pt"))) == 2
    assert "--init cannot go with it" in capsys.readouterr().err
    assert not (files / "b.pt").exists()
    # a longer budget may be given: the run goes on to it
    assert main(_argv(files, "b.pt", "--resume", ckpt, "--iterations", "2", "--quiet")) == 0
    assert load_model(files / "b.pt").training["summary"]["iterations_done"] == 2
