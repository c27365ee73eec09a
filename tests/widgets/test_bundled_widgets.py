"""The bundled model in the widgets: Train starts from it, Segment uses it as it is."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from napari_unet.core import bundled_models
from napari_unet.core.inference import segment
from napari_unet.core.model_files import save_model
from napari_unet.core.progress import run_to_end
from napari_unet.widgets.session import session_for

TINY = {"patch_size": 32, "batch_size": 2, "device": "cpu", "seed": 0, "validation_fraction": 0.0}


@pytest.fixture
def bundle(tmp_path, monkeypatch, tiny_model) -> Any:
    """A tiny model installed as the bundled 'nuclei' model."""
    model = tiny_model(1, seed=5)
    folder = tmp_path / "models"
    folder.mkdir()
    save_model(model, folder / "nuclei.pt")
    monkeypatch.setattr(bundled_models, "FOLDER", folder)
    return model


def _fine_tune_bundle(viewer, dock, cells, wait_idle, iterations: int) -> Any:
    """Train from the bundled model on the cells sample; the session's model after."""
    image, labels = cells
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels.copy(), name="annotation")
    widget = dock("Train")
    widget.extra_settings = dict(TINY)
    widget.iterations.value = iterations
    widget.start_from.value = "nuclei"
    widget.train_button.native.click()
    wait_idle(widget)
    return session_for(viewer).model


def test_train_starts_from_the_bundled_model(viewer, dock, cells, bundle, wait_idle) -> None:
    model = _fine_tune_bundle(viewer, dock, cells, wait_idle, 3)
    assert model.config == bundle.config  # its architecture, not the preset's
    assert model.training["fine_tuned_from"]["bundled"] == "nuclei"
    assert model.training["summary"]["iterations_done"] == 3
    before = bundle.net.state_dict()
    assert any(not torch.equal(before[k], v) for k, v in model.net.state_dict().items())


def test_fine_tuning_shows_its_own_defaults(
    viewer, dock, cells, bundle, wait_idle, monkeypatch
) -> None:
    from napari_unet.core.training import settings as training_settings

    tuning = {"learning_rate": 1e-4, "freeze_batch_norm": True}
    monkeypatch.setattr(training_settings, "FINE_TUNE_DEFAULTS", tuning)
    image, labels = cells
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels.copy(), name="annotation")
    widget = dock("Train")
    rate = tuning["learning_rate"]
    assert (widget.learning_rate.value, widget.freeze_batch_norm.value) == (1e-3, False)
    widget.start_from.value = "nuclei"
    assert (widget.learning_rate.value, widget.freeze_batch_norm.value) == (rate, True)
    assert (widget.settings().learning_rate, widget.settings().freeze_batch_norm) == (rate, True)
    widget.start_from.value = ""
    assert (widget.learning_rate.value, widget.freeze_batch_norm.value) == (1e-3, False)
    widget.learning_rate.value = 5e-3  # the user's value stays whatever the start
    widget.start_from.value = "nuclei"
    assert (widget.learning_rate.value, widget.freeze_batch_norm.value) == (5e-3, True)
    widget.start_from.value = ""
    # Train again fine-tunes the session's model: the controls switch to what it uses
    widget.learning_rate.value = 1e-3
    widget.extra_settings = {**TINY, "iterations": 2}
    widget.train_button.native.click()
    wait_idle(widget)
    assert session_for(viewer).model.training["settings"]["learning_rate"] == 1e-3
    widget.again_button.native.click()
    wait_idle(widget)
    assert (widget.learning_rate.value, widget.freeze_batch_norm.value) == (rate, True)
    used = session_for(viewer).model.training["settings"]
    assert (used["learning_rate"], used["freeze_batch_norm"]) == (rate, True)


def test_bundled_model_with_the_wrong_channels(viewer, dock, cells, bundle, notes) -> None:
    image, labels = cells
    viewer.add_image(np.stack([image, image]), name="two", channel_axis=None)
    viewer.add_labels(labels.copy(), name="annotation")
    widget = dock("Train")
    widget.image.value = viewer.layers["two"]
    widget.channels.value = 0
    widget.start_from.value = "nuclei"
    assert not widget.train()
    assert any("bundled model reads 1 channel(s)" in m for m in notes.messages("error"))


def test_segment_with_the_bundled_model(viewer, dock, cells, bundle, wait_idle) -> None:
    image, _ = cells
    viewer.add_image(image, name="cells")
    widget = dock("Segment")
    widget.device.value = "cpu"
    widget.model_source.value = "bundled:nuclei"
    assert "bundled 'nuclei'" in widget.model_info.value
    done: list[Any] = []
    widget.segmentation_done.connect(done.append)
    widget.run_button.native.click()
    wait_idle(widget)
    expected = run_to_end(segment(bundle, image, device="cpu"))
    np.testing.assert_array_equal(done[0].data, expected)


def test_train_and_segment_share_one_read_of_the_file(
    viewer, dock, cells, bundle, wait_idle, monkeypatch
) -> None:
    reads: list[Any] = []
    real = bundled_models.load_model
    monkeypatch.setattr(bundled_models, "load_model", lambda *a: reads.append(a) or real(*a))
    _fine_tune_bundle(viewer, dock, cells, wait_idle, 2)
    segment_widget = dock("Segment")
    segment_widget.device.value = "cpu"
    segment_widget.model_source.value = "bundled:nuclei"
    done: list[Any] = []
    segment_widget.segmentation_done.connect(done.append)
    segment_widget.run_button.native.click()
    wait_idle(segment_widget)
    assert len(reads) == 1
    # fine-tuning changed Train's copy, not the model Segment gets
    expected = run_to_end(segment(bundle, cells[0], device="cpu"))
    np.testing.assert_array_equal(done[0].data, expected)
