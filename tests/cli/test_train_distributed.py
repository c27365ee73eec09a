"""``torchrun ... -m napari_unet train``: two processes with gloo on the CPU write one model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import napari_unet
from napari_unet.core.model import UNetConfig
from napari_unet.core.model_files import load_model
from napari_unet.sample_data import make_touching_cells


def test_torchrun_two_processes_write_one_model(tmp_path, tiny_file):
    image, labels = make_touching_cells((64, 64), n_cells=8, seed=3)
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "labels.npy", labels)
    tiny_file()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "napari_unet", "train", "image.npy", "--labels", "labels.npy", "--out", "model.pt",
        "--init", "tiny.pt", "--patch", "32", "--batch", "2", "--device", "cpu",
        "--iterations", "3", "--seed", "1",
    ]  # fmt: skip
    # the processes import this napari_unet, wherever the working folder is
    src = str(Path(napari_unet.__file__).parents[1])
    path = os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # rank 0 alone reports and writes
    assert done.stdout.count("saved model.pt") == 1
    assert "x 2 processes" in done.stdout
    model = load_model(tmp_path / "model.pt")
    summary = model.training["summary"]
    assert summary["iterations_done"] == 3
    assert summary["device"].endswith("x 2 processes")
    assert model.config == UNetConfig(depth=2, base_channels=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "image.npy",
        "labels.npy",
        "model.pt",
        "tiny.pt",
    ]
