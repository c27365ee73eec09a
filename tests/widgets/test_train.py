"""The Train widget, driven as a user would: train, stop, fine-tune, save/load, bad input."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch

from napari_unet.core.model_files import load_model
from napari_unet.widgets.session import session_for

#: TrainSettings for tests: tiny patches, CPU, seeded
TINY = {"patch_size": 32, "batch_size": 2, "device": "cpu", "seed": 0, "validation_fraction": 0.0}


@pytest.fixture
def train_widget(viewer: Any, dock: Any, cells: Any) -> Any:
    image, labels = cells
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels.copy(), name="annotation")
    widget = dock("Train")
    assert widget.image.value.name == "cells"
    assert widget.annotation_layer.value.name == "annotation"
    widget.extra_settings = dict(TINY)
    return widget


def _use_tiny(viewer: Any, tiny_model: Any, in_channels: int = 1) -> Any:
    model = tiny_model(in_channels)
    session_for(viewer).set_model(model, "file", "tiny test model")
    return model


def _state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.net.state_dict().items()}


def test_train_button_trains_and_keeps_the_model(
    viewer, train_widget, qtbot, wait_idle, notes, cells
) -> None:
    """The 'fast' preset, a few iterations, started with the Train button."""
    _, labels = cells
    widget = train_widget
    widget.iterations.value = 3
    finished: list[Any] = []
    widget.training_done.connect(finished.append)
    widget.train_button.native.click()
    assert widget.busy
    wait_idle(widget)
    assert len(finished) == 1 and finished[0] is not None
    model = session_for(viewer).model
    assert model is finished[0]
    assert model.config.base_channels == 16 and model.config.depth == 3  # the fast preset
    assert [i for i, _ in widget.plot.loss] == [1, 2, 3]
    assert all(np.isfinite(v) for _, v in widget.plot.loss)
    assert "Model: trained here (fast preset): 3 iterations" in widget.model_info.value
    assert widget.device_readout.value.startswith("Running on: CPU, ")
    assert widget.again_button.enabled and widget.train_button.enabled
    assert not widget.stop_button.enabled
    assert any("Training finished: 3 iterations" in m for m in notes.messages("info"))
    np.testing.assert_array_equal(viewer.layers["annotation"].data, labels)  # never modified


def test_train_again_fine_tunes_the_session_model(
    viewer, train_widget, tiny_model, wait_idle, notes
) -> None:
    start = _use_tiny(viewer, tiny_model)
    before = _state(start)
    widget = train_widget
    widget.iterations.value = 4
    widget.again_button.native.click()
    wait_idle(widget)
    model = session_for(viewer).model
    assert model is not start and model.config == start.config  # a new, fine-tuned copy
    after = model.net.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(before[k], v) for k, v in start.net.state_dict().items())
    assert model.training["summary"]["iterations_done"] == 4
    assert "fine-tuned here: 4 iterations" in widget.model_info.value


def test_stop_mid_training_leaves_a_usable_model(
    viewer, train_widget, tiny_model, qtbot, wait_idle, notes, cells
) -> None:
    from napari_unet.core.inference import predict_probabilities
    from napari_unet.core.progress import run_to_end

    _use_tiny(viewer, tiny_model)
    widget = train_widget
    widget.iterations.value = 0  # no limit: runs until Stop
    assert widget.train(fine_tune=True)
    qtbot.waitUntil(lambda: len(widget.plot.loss) >= 3, timeout=60_000)
    widget.stop_button.native.click()
    widget.stop_button.native.click()  # pressed twice
    wait_idle(widget)
    infos = notes.messages("info")
    assert any("already stopping" in m for m in infos)
    assert any("Training stopped at iteration" in m and "kept" in m for m in infos)
    model = session_for(viewer).model
    assert model.training["summary"]["stopped"] is True
    prob = run_to_end(predict_probabilities(model, cells[0], device="cpu"))
    assert prob.shape == cells[0].shape and np.isfinite(prob).all()
    assert 0.0 <= prob.min() <= prob.max() <= 1.0
    widget.stop()  # nothing running any more
    assert any("Nothing to stop" in m for m in notes.messages("info"))


def test_event_loop_stays_responsive_while_training(
    train_widget, qtbot, wait_idle, record_property
) -> None:
    """A 10 ms timer keeps firing while the fast preset trains: no gap over 200 ms."""
    from qtpy.QtCore import QTimer

    widget = train_widget
    widget.iterations.value = 12
    widget.extra_settings = {**TINY, "patch_size": 64}
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    try:
        widget.train()
        wait_idle(widget)
    finally:
        timer.stop()
    assert len(widget.plot.loss) == 12
    gaps = np.diff(ticks)
    record_property("event_loop_max_gap_ms", round(1000 * float(gaps.max()), 1))
    print(f"event loop while training: {len(ticks)} ticks, max gap {1000 * gaps.max():.1f} ms")
    assert gaps.max() < 0.2


def test_save_and_load_model(
    viewer, train_widget, tiny_model, tmp_path, notes, monkeypatch
) -> None:
    widget = train_widget
    assert not widget.save_model(tmp_path / "none.pt")
    assert any("no model to save" in m for m in notes.messages("warning"))
    model = _use_tiny(viewer, tiny_model)
    path = tmp_path / "model.pt"
    monkeypatch.setattr(type(widget), "_ask_path", lambda self, save: str(path))
    widget.save_button.native.click()
    assert path.is_file()
    assert str(path) in widget.model_info.value
    loaded = load_model(path)
    for k, v in model.net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[k], v)
    # Not one of ours: a plain text file and a torch file of something else.
    (tmp_path / "notes.pt").write_text("hello")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    for name in ("notes.pt", "other.pt"):
        assert not widget.load_model(tmp_path / name)
        assert session_for(viewer).model is model  # nothing the user had is lost
    errors = notes.messages("error")
    assert sum("is not a napari-unet model file" in m for m in errors) == 2
    widget.load_button.native.click()  # the dialog answers `path`
    assert session_for(viewer).current.source == "file"
    assert "loaded from model.pt" in widget.model_info.value


def test_bad_inputs_end_in_notifications(viewer, dock, train_widget, tiny_model, notes) -> None:
    widget = train_widget
    annotation = viewer.layers["annotation"]
    original = annotation.data.copy()

    def error_after(action: Any) -> str:
        count = len(notes.messages("error"))
        assert action() is False
        assert not widget.busy
        errors = notes.messages("error")
        assert len(errors) == count + 1
        return errors[-1]

    empty = viewer.add_labels(np.zeros(original.shape, np.int32), name="nothing painted")
    widget.annotation_layer.value = empty
    assert "is empty" in error_after(widget.train)

    small = viewer.add_labels(np.ones((40, 40), np.int32), name="small")
    widget.annotation_layer.value = small
    assert "must match pixel for pixel" in error_after(widget.train)

    widget.annotation_layer.value = annotation
    area = viewer.add_shapes(
        [np.array([[0, 0], [0, 3], [3, 3], [3, 0]])], shape_type="rectangle", name="area"
    )
    annotation.data[:8, :8] = 0
    annotation.refresh()
    original = annotation.data.copy()
    widget.region.value = area
    assert "No painted cell lies inside" in error_after(widget.train)
    widget.region.value = None

    rgb = viewer.add_image(np.zeros((*original.shape, 3), np.uint8), rgb=True, name="rgb")
    widget.image.value = rgb
    _use_tiny(viewer, tiny_model, in_channels=1)
    assert "reads 1 channel(s)" in error_after(lambda: widget.train(fine_tune=True))

    stack = viewer.add_image(np.zeros((2, 3, *original.shape), np.float32), name="4d")
    widget.image.value = stack
    assert "Choose which axis holds the channels" in error_after(widget.train)

    viewer.layers.remove(annotation.name)
    for layer in [small, empty]:
        viewer.layers.remove(layer.name)
    assert widget.annotation_layer.value is None
    assert "Choose the annotation" in error_after(widget.train)
    np.testing.assert_array_equal(annotation.data, original)


def test_closing_napari_while_training(make_napari_viewer, qtbot, tiny_model, notes, cells) -> None:
    viewer = make_napari_viewer()
    image, labels = cells
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="annotation")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-trainer", "Train")
    widget.extra_settings = dict(TINY)
    widget.iterations.value = 0
    session_for(viewer).set_model(tiny_model(), "file", "tiny")
    assert widget.train(fine_tune=True)
    qtbot.waitUntil(lambda: len(widget.plot.loss) >= 2, timeout=60_000)
    viewer.close()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert any("window closed" in m for m in notes.messages("warning"))


def test_controls_have_tooltips(train_widget) -> None:
    for control in ("image", "annotation_layer", "region", "iterations", "patch_size", "w0"):
        assert len(getattr(train_widget, control).tooltip) > 20, control


def test_time_limited_training(viewer, train_widget, tiny_model, wait_idle, notes) -> None:
    """Iterations 0 and a time limit: training ends by itself when the time is up."""
    _use_tiny(viewer, tiny_model)
    widget = train_widget
    widget.iterations.value = 0
    widget.minutes.value = 0.05
    assert widget.settings().iterations is None and widget.settings().minutes == 0.05
    assert widget.train(fine_tune=True)
    wait_idle(widget)
    summary = session_for(viewer).model.training["summary"]
    assert summary["stopped"] is False  # it ended by itself
    assert summary["iterations_done"] == len(widget.plot.loss)
    if summary["iterations_done"]:
        assert any("Training finished" in m for m in notes.messages("info"))
    else:  # preparing the data took longer than the limit (a slow or busy machine)
        assert any("before its first step" in m for m in notes.messages("warning"))


def test_controls_come_from_train_settings(train_widget) -> None:
    """Every shown TrainSettings field has a control with its default, bounds and doc."""
    import dataclasses

    from napari_unet.core.training import TrainSettings

    widget = train_widget
    widget.extra_settings = {}
    shown = [f for f in dataclasses.fields(TrainSettings) if f.metadata["show"] != "hidden"]
    assert {f.name for f in shown} >= {"iterations", "patch_size", "seed", "learning_rate"}
    for f in shown:
        control = getattr(widget, f.name)
        assert len(control.tooltip) > 10, f.name
        if "min" in f.metadata:
            assert control.min == f.metadata["min"], f.name
    expected = TrainSettings(device=widget.device.value)
    assert widget.settings() == expected  # the widget's defaults are the CLI's
    widget.preset.value = "paper"  # the preset's training settings are shown
    assert (widget.patch_size.value, widget.batch_size.value) == (388, 1)
    assert widget.optimizer.value == "sgd"
    assert widget.settings() == TrainSettings.for_preset("paper", device=widget.device.value)
    widget.batch_size.value = 3  # the user's own value survives a preset change
    widget.preset.value = "fast"
    assert (widget.patch_size.value, widget.batch_size.value) == (128, 3)
    widget.seed.value = 7
    widget.iterations.value = 0
    settings = widget.settings()
    assert settings.seed == 7 and settings.iterations is None and settings.optimizer == "adam"


def test_widget_trains_as_core_does(viewer, train_widget, tiny_model, wait_idle, cells) -> None:
    """Same inputs and seed: the widget and core ``train`` give the same losses and weights."""
    from napari_unet.core.progress import run_to_end
    from napari_unet.core.training import train

    image, labels = cells
    start = _use_tiny(viewer, tiny_model)
    widget = train_widget
    widget.iterations.value = 4
    assert widget.train(fine_tune=True)
    settings = widget.settings()  # Train again shows the fine-tuning defaults it uses
    wait_idle(widget)
    trained = session_for(viewer).model
    losses: list[float] = []
    reference = run_to_end(
        train(image, labels, settings=settings, model=start.copy()),
        lambda event: losses.append(event.loss),
    )
    assert [v for _, v in widget.plot.loss] == losses and len(losses) == 4
    for name, value in reference.net.state_dict().items():
        assert torch.equal(trained.net.state_dict()[name], value), name
