"""The Train widget's reports: validation AP, warnings about the annotation, worker errors, and
the bioimage.io export."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_unet.widgets.session import session_for

#: TrainSettings for tests: tiny patches, CPU, seeded
TINY = {"patch_size": 32, "batch_size": 2, "device": "cpu", "seed": 0, "validation_fraction": 0.0}


@pytest.fixture
def widget(viewer: Any, dock: Any, cells: Any, tiny_model: Any) -> Any:
    """The Train widget on the cells, with a tiny model in the session (for Train again)."""
    image, labels = cells
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels.copy(), name="annotation")
    train = dock("Train")
    train.extra_settings = dict(TINY)
    session_for(viewer).set_model(tiny_model(), "file", "tiny test model")
    return train


def _separate_pair(labels: np.ndarray) -> tuple[int, int]:
    """Two label values whose cells are at least two pixels apart."""
    values = [v for v in np.unique(labels) if v]
    for a in values:
        grown = ndi.binary_dilation(labels == a, iterations=2)
        for b in values:
            if b != a and not (grown & (labels == b)).any():
                return int(a), int(b)
    raise AssertionError("no two separate cells in the test image")


def test_validation_ap_in_status_plot_and_summary(widget, qtbot, wait_idle, notes) -> None:
    widget.extra_settings = {**TINY, "validation_fraction": 0.25, "validate_every": 1}
    widget.iterations.value = 0  # until Stop
    assert widget.train(fine_tune=True)
    assert widget.plot.validation_label == "validation AP"
    qtbot.waitUntil(lambda: "best validation AP" in widget.status.value, timeout=60_000)
    widget.stop()
    wait_idle(widget)
    assert widget.plot.validation and all(0 <= v <= 1 for _, v in widget.plot.validation)
    summary = session_for(widget.viewer).model.training["summary"]
    assert summary["validation_metric"].startswith("instance AP")
    assert f"validation AP {summary['validation']:.3f}" in widget.model_info.value
    assert "IoU" not in widget.model_info.value
    # the IoU metric is named as such
    widget.extra_settings = {**TINY, "validation_fraction": 0.25, "validation_metric": "iou"}
    widget.iterations.value = 2
    assert widget.train(fine_tune=True)
    assert widget.plot.validation_label == "validation IoU"
    wait_idle(widget)


def test_one_label_on_separate_cells_is_reported(viewer, widget, wait_idle, notes) -> None:
    annotation = viewer.layers["annotation"]
    a, b = _separate_pair(annotation.data)
    annotation.data[annotation.data == b] = a  # one brush value for two cells
    annotation.refresh()
    painted = annotation.data.copy()
    widget.iterations.value = 2
    assert widget.train(fine_tune=True)
    wait_idle(widget)
    split = [m for m in notes.messages("warning") if "split into" in m]
    assert split == [
        "Annotation 'annotation': 1 label value painted on several separate cells was split "
        "into 2 cells (one label per connected region); paint each cell with its own label to "
        "silence this"
    ]
    assert session_for(viewer).model.training["summary"]["split_cells"] == 2
    np.testing.assert_array_equal(annotation.data, painted)  # the user's painting stays


def test_annotation_too_small_for_validation_is_reported(viewer, widget, wait_idle, notes) -> None:
    annotation = viewer.layers["annotation"]
    keep = int(np.max(annotation.data))
    viewer.add_labels(np.where(annotation.data == keep, 1, 0).astype(np.int32), name="one cell")
    widget.annotation_layer.value = viewer.layers["one cell"]
    widget.extra_settings = {**TINY, "validation_fraction": 0.2}
    widget.iterations.value = 2
    assert widget.train(fine_tune=True)
    wait_idle(widget)
    warnings = [m for m in notes.messages("warning") if "too small to hold out" in m]
    assert len(warnings) == 1
    assert warnings[0].startswith("Annotation 'one cell': The annotation is too small")
    assert "20%" in warnings[0]
    assert session_for(viewer).model.training["summary"]["validation_blocks"] == 0
    # no warning when no validation was asked for
    widget.extra_settings = dict(TINY)
    assert widget.train(fine_tune=True)
    wait_idle(widget)
    assert sum("too small to hold out" in m for m in notes.messages("warning")) == 1


def test_an_error_in_training_is_a_notification(widget, monkeypatch, wait_idle, notes) -> None:
    """A RuntimeError (a diverging loss) reaches the widget through the worker's errored
    signal: a plain notification, the widget ready again, the session's model unchanged."""
    import napari_unet.core.training as training

    def diverging(*_args: Any, **_kwargs: Any):  # type: ignore[no-untyped-def]
        yield from ()
        raise RuntimeError("the loss became NaN at iteration 3; try a smaller learning rate")

    before = session_for(widget.viewer).model
    finished: list[Any] = []
    widget.training_done.connect(finished.append)
    monkeypatch.setattr(training, "train", diverging)
    assert widget.train()
    wait_idle(widget)
    assert notes.messages("error")[-1] == (
        "Training failed: RuntimeError: the loss became NaN at iteration 3; try a smaller "
        "learning rate"
    )
    assert widget.status.value == "Training failed; see the notification."
    assert finished == [None] and session_for(widget.viewer).model is before
    assert widget.train_button.enabled and not widget.stop_button.enabled


def test_export_for_bioimageio(viewer, widget, qtbot, tmp_path, monkeypatch, notes) -> None:
    pytest.importorskip("bioimageio.spec")
    from qtpy.QtWidgets import QFileDialog

    from napari_unet.bioimageio import load_model_or_package

    model = session_for(viewer).model
    asked: list[str] = []

    def dialog(_parent: Any, _title: str, start: str, _filters: str) -> tuple[str, str]:
        asked.append(start)
        return str(tmp_path / "tiny"), ""  # no suffix: .zip is added

    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(dialog))
    assert widget.export_button.enabled
    with qtbot.waitSignal(widget.export_done, timeout=120_000) as done:
        widget.export_button.native.click()
        assert not widget.export_button.enabled  # one export at a time
    path = tmp_path / "tiny.zip"
    assert done.args == [path] and path.is_file()
    assert asked == ["unet.zip"]
    assert f"bioimage.io package written to {path}" in notes.messages("info")
    assert widget.export_button.enabled
    loaded = load_model_or_package(path)
    for name, value in model.net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[name], value), name
    # a folder that does not exist: a notification, nothing written
    with qtbot.waitSignal(widget.export_done, timeout=60_000) as done:
        assert widget.export_model(tmp_path / "missing" / "model.zip")
    assert done.args == [None]
    assert notes.messages("error")[-1].startswith(
        f"Could not export the model to '{tmp_path / 'missing' / 'model.zip'}'"
    )


def test_export_without_a_model(viewer, dock, notes) -> None:
    widget = dock("Train")
    assert not widget.export_button.enabled
    assert not widget.export_model("anywhere.zip")
    assert notes.messages("warning")[-1] == (
        "There is no model to export yet: train one or load a model file."
    )
