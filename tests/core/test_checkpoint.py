"""Checkpoints: a seeded CPU run stopped and resumed gives the model of an uninterrupted run."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_unet.core.model import TrainedModel, UNet, UNetConfig
from napari_unet.core.training import TrainSettings, run_training
from napari_unet.core.training.checkpoint import Checkpointing, load_checkpoint
from napari_unet.sample_data import make_touching_cells

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cells():
    return make_touching_cells((96, 96), n_cells=14, seed=4)


def _tiny() -> TrainedModel:
    torch.manual_seed(0)
    return TrainedModel(UNet(UNetConfig(depth=2, base_channels=4, dropout=0.2)))


def _settings(**kw) -> TrainSettings:
    base = {
        "iterations": 8,
        "patch_size": 32,
        "batch_size": 2,
        "device": "cpu",
        "seed": 3,
        "validation_fraction": 0.2,
        "validate_every": 2,
    }
    return TrainSettings(**{**base, **kw})


def _stop_at(k: int):
    stop = threading.Event()

    def callback(event):
        if event.iteration == k:
            stop.set()

    return stop, callback


def test_stopped_and_resumed_run_gives_the_uninterrupted_model(cells, tmp_path):
    image, labels = cells
    full = run_training(image, labels, settings=_settings(), model=_tiny())
    path = tmp_path / "run.ckpt"
    stop, callback = _stop_at(3)
    first = run_training(
        image,
        labels,
        settings=_settings(),
        model=_tiny(),
        stop=stop,
        callback=callback,
        checkpoint=Checkpointing(path, minutes=None),
    )
    assert first.training["summary"]["iterations_done"] == 3
    ckpt = load_checkpoint(path)
    assert ckpt.iteration == 3 and ckpt.settings == _settings()
    # the resumed run is built from the checkpoint alone (plus the same data)
    iterations: list[int] = []
    resumed = run_training(
        image,
        labels,
        settings=ckpt.settings,
        model=ckpt.base_model(),
        callback=lambda e: iterations.append(e.iteration),
        checkpoint=Checkpointing(path, minutes=None, resume=ckpt),
    )
    assert iterations == [4, 5, 6, 7, 8]
    summary, resumed_summary = full.training["summary"], resumed.training["summary"]
    assert summary["validation_blocks"] > 0  # the best-state bookkeeping is resumed too
    for key in ("iterations_done", "final_loss", "best_iteration", "validation", "seed"):
        assert resumed_summary[key] == summary[key], key
    assert resumed.training["threshold"] == full.training["threshold"]
    assert resumed.training["fine_tuned_from"] == full.training["fine_tuned_from"]
    for key, value in full.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[key], value, atol=1e-6, rtol=0)
    # kept current: the checkpoint now holds the finished run
    assert load_checkpoint(path).iteration == 8


def test_checkpoints_every_few_minutes_and_none_when_not_asked(cells, tmp_path):
    image, labels = cells
    path = tmp_path / "every.ckpt"
    seen = []

    def callback(event):
        if path.exists():
            seen.append((event.iteration, load_checkpoint(path).iteration))

    settings = _settings(iterations=3, validation_fraction=0.0)
    run_training(
        image,
        labels,
        settings=settings,
        model=_tiny(),
        callback=callback,
        checkpoint=Checkpointing(path, minutes=1e-9),  # due after every step
    )
    # each step's checkpoint is written before its event
    assert seen == [(1, 1), (2, 2), (3, 3)]
    assert load_checkpoint(path).iteration == 3
    run_training(image, labels, settings=settings, model=_tiny(), checkpoint=None)
    quiet = tmp_path / "quiet.ckpt"
    run_training(image, labels, settings=settings, model=_tiny(), checkpoint=Checkpointing(quiet))
    assert not quiet.exists()  # 10 minutes never passed and nothing stopped the run


def test_resuming_on_other_data_or_a_wrong_file_is_refused(cells, tmp_path):
    image, labels = cells
    path = tmp_path / "run.ckpt"
    stop, callback = _stop_at(1)
    settings = _settings(validation_fraction=0.0)
    run_training(
        image,
        labels,
        settings=settings,
        model=_tiny(),
        stop=stop,
        callback=callback,
        checkpoint=Checkpointing(path),
    )
    ckpt = load_checkpoint(path)
    other = np.where(labels == labels.max(), 0, labels)
    with pytest.raises(ValueError, match="other data"):
        run_training(
            image,
            other,
            settings=ckpt.settings,
            model=ckpt.base_model(),
            checkpoint=Checkpointing(resume=ckpt),
        )
    wrong = tmp_path / "model.pt"
    torch.save({"format": "something else"}, wrong)
    with pytest.raises(ValueError, match="not a napari-unet training checkpoint"):
        load_checkpoint(wrong)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="minutes"):
        Checkpointing(path, minutes=0)
