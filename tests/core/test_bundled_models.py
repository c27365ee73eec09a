"""Bundled models: names wherever a model file is accepted (core, CLI)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.bioimageio import load_model_or_package
from napari_unet.cli import main
from napari_unet.core import bundled_models
from napari_unet.core.inference import segment
from napari_unet.core.model import TrainedModel, UNet, UNetConfig
from napari_unet.core.model_files import save_model
from napari_unet.core.progress import run_to_end
from napari_unet.core.training import settings as training_settings


@pytest.fixture
def tiny_bundle(tmp_path, monkeypatch):
    """A tiny model installed as the bundled 'nuclei' model."""
    torch.manual_seed(0)
    net = UNet(UNetConfig(depth=2, base_channels=4)).eval()
    model = TrainedModel(net=net, gap=1)
    folder = tmp_path / "models"
    folder.mkdir()
    save_model(model, folder / "nuclei.pt")
    monkeypatch.setattr(bundled_models, "FOLDER", folder)
    return model


def test_names_and_errors(tmp_path, monkeypatch):
    assert bundled_models.is_bundled_model("nuclei")
    assert not bundled_models.is_bundled_model("nuclei.pt")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nuclei").write_text("a file of that name wins")
    assert not bundled_models.is_bundled_model("nuclei")
    with pytest.raises(ValueError, match="expected one of: nuclei"):
        bundled_models.bundled_model_path("cells")
    monkeypatch.setattr(bundled_models, "FOLDER", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="missing from this installation"):
        bundled_models.bundled_model_path("nuclei")


def test_the_shipped_nuclei_model_loads():
    model = bundled_models.load_bundled_model("nuclei")
    assert model.training["bundled"] == "nuclei"
    assert model.config.in_channels == 1 and model.mode == "cells"
    assert model.training["summary"]["iterations_done"] > 0


def test_load_by_name_predicts_like_the_file(tiny_bundle, tmp_path):
    model = load_model_or_package("nuclei")
    assert model.training["bundled"] == "nuclei"
    image = np.random.default_rng(0).random((40, 36)).astype(np.float32)
    ours = run_to_end(segment(model, image, device="cpu"))
    ref = run_to_end(segment(tiny_bundle, image, device="cpu"))
    np.testing.assert_array_equal(ours, ref)


def test_cli_predict_and_init_by_name(tiny_bundle, tmp_path, monkeypatch):
    tuning = {"learning_rate": 1e-4, "freeze_batch_norm": True}
    monkeypatch.setattr(training_settings, "FINE_TUNE_DEFAULTS", tuning)
    image = np.random.default_rng(1).integers(0, 255, (40, 36), dtype=np.uint8)
    labels = np.zeros((40, 36), np.int32)
    labels[5:15, 5:15], labels[20:30, 18:30] = 1, 2
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    out = tmp_path / "labels.tif"
    assert main(["predict", "nuclei", str(tmp_path / "img.tif"), "-o", str(out)]) == 0
    assert tifffile.imread(out).shape == (40, 36)
    argv = ["train", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif")]
    argv += ["--init", "nuclei", "--iterations", "2", "--patch-size", "32", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "m.pt"), "--device", "cpu"]) == 0
    tuned = load_model_or_package(tmp_path / "m.pt")
    assert tuned.training["fine_tuned_from"]["bundled"] == "nuclei"

    # --init fine-tunes with the fine-tuning defaults; options given still win
    def used(name: str, *extra: str) -> tuple[float, bool]:
        assert main([*argv, *extra, "--out", str(tmp_path / name), "--device", "cpu"]) == 0
        settings = load_model_or_package(tmp_path / name).training["settings"]
        return settings["learning_rate"], settings["freeze_batch_norm"]

    assert tuned.training["settings"]["learning_rate"] == 1e-4
    assert tuned.training["settings"]["freeze_batch_norm"] is True
    assert used("m2.pt", "--lr", "0.002", "--no-freeze-batch-norm") == (0.002, False)
    # a new network keeps the usual defaults
    argv.remove("--init"), argv.remove("nuclei")
    assert used("m3.pt") == (1e-3, False)


def test_the_file_is_read_once_and_callers_get_copies(tiny_bundle, monkeypatch):
    reads = []
    real = bundled_models.load_model
    monkeypatch.setattr(bundled_models, "load_model", lambda *a: reads.append(a) or real(*a))
    first = bundled_models.load_bundled_model("nuclei")
    second = bundled_models.load_bundled_model("nuclei")
    assert len(reads) == 1
    assert first.net is not second.net and not first.net.training
    with torch.no_grad():
        for p in first.net.parameters():
            p.add_(1.0)
    first.training["changed"] = True
    third = bundled_models.load_bundled_model("nuclei")
    assert len(reads) == 1 and "changed" not in third.training
    expected = tiny_bundle.net.state_dict()
    for key, value in third.net.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
    path = bundled_models.bundled_model_path("nuclei")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert bundled_models.load_bundled_model("nuclei").training["bundled"] == "nuclei"
    assert len(reads) == 2  # a rewritten file is read again
