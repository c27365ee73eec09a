"""The classes mode in the widgets: Train from scribbles, Segment into class ids and objects."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from napari_unet.core.inference import class_objects, predict_probabilities, segment
from napari_unet.core.model import TrainedModel, UNet, UNetConfig
from napari_unet.core.progress import run_to_end
from napari_unet.sample_data import CELL_CLASS_NAMES, make_cell_classes
from napari_unet.widgets.layers import class_names_from_layer
from napari_unet.widgets.session import session_for

TINY = {"patch_size": 32, "batch_size": 2, "device": "cpu", "seed": 0}


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return make_cell_classes((96, 96), 8, scribbled_cells=3, seed=1)


def _classes_model(n_classes: int = 3) -> TrainedModel:
    torch.manual_seed(0)
    net = UNet(UNetConfig(depth=2, base_channels=4, n_classes=n_classes))
    with torch.no_grad():
        net.head.weight.mul_(4)  # every class wins somewhere
    return TrainedModel(net.eval(), mode="classes", class_names=CELL_CLASS_NAMES[:n_classes])


def _scribbles_layer(viewer: Any, scribbles: np.ndarray) -> Any:
    features = {"index": [0, 1, 2, 3], "name": ["not painted", "bg", "disc", "rod"]}
    return viewer.add_labels(scribbles.copy(), name="scribbles", features=features)


def _classes_train(viewer: Any, dock: Any, sample: Any) -> Any:
    """The Train widget on the sample's image, its annotation the scribbles layer."""
    image, scribbles, _ = sample
    viewer.add_image(image, name="cells")
    _scribbles_layer(viewer, scribbles)
    widget = dock("Train")
    widget.annotation_layer.value = viewer.layers["scribbles"]
    return widget


def test_class_names_come_from_the_features(viewer, sample) -> None:
    _, scribbles, _ = sample
    layer = _scribbles_layer(viewer, scribbles)
    assert class_names_from_layer(layer, 3) == ["bg", "disc", "rod"]
    assert class_names_from_layer(layer, 4) == ["bg", "disc", "rod", "class 4"]
    plain = viewer.add_labels(scribbles, name="plain")
    assert class_names_from_layer(plain, 2) == ["class 1", "class 2"]
    by_row = viewer.add_labels(scribbles, name="rows", features={"class": ["-", "a", "b"]})
    assert class_names_from_layer(by_row, 3) == ["a", "b", "class 3"]


def test_train_again_in_classes_mode_keeps_the_names(
    viewer, dock, sample, wait_idle, notes
) -> None:
    _, scribbles, _ = sample
    widget = _classes_train(viewer, dock, sample)
    widget.extra_settings = dict(TINY)
    widget.mode.value = "classes"
    widget.iterations.value = 2
    start = _classes_model()
    session_for(viewer).set_model(start, "file", "tiny classes model")
    widget.again_button.native.click()
    wait_idle(widget)
    model = session_for(viewer).model
    assert model is not start and model.mode == "classes"
    assert model.class_names == ("bg", "disc", "rod")
    assert model.training["annotation_layer"] == "scribbles"
    assert any("Training finished: 2 iterations" in m for m in notes.messages("info"))
    np.testing.assert_array_equal(viewer.layers["scribbles"].data, scribbles)


def test_train_again_with_a_model_of_the_other_mode_is_refused(
    viewer, dock, sample, tiny_model, notes
) -> None:
    widget = _classes_train(viewer, dock, sample)
    widget.mode.value = "classes"
    session_for(viewer).set_model(tiny_model(), "file", "tiny cells model")
    assert widget.train(fine_tune=True) is False
    assert any("needs a 'classes' model, got a 'cells' model" in m for m in notes.messages())


def test_segment_writes_class_ids_probabilities_and_objects(
    viewer, dock, sample, wait_idle, notes
) -> None:
    image, scribbles, _ = sample
    model = _classes_model()
    model.training["annotation_layer"] = "scribbles"
    annotation = _scribbles_layer(viewer, scribbles)
    viewer.add_image(image, name="cells")
    session_for(viewer).set_model(model, "trained", "classes model")
    seg = dock("Segment")
    seg.device.value = "cpu"
    assert seg.threshold.native.isHidden() and not seg.objects.native.isHidden()
    assert seg.object_class.choices == (1, 2, 3)
    seg.probabilities.value = True
    seg.objects.value = True
    seg.object_class.value = 3
    done: list[Any] = []
    seg.segmentation_done.connect(done.append)
    seg.run_button.native.click()
    wait_idle(seg)
    (layer,) = done
    assert layer.name == "cells classes" and layer.data.dtype == np.uint8
    expected = run_to_end(segment(model, image, device="cpu"))
    np.testing.assert_array_equal(layer.data, expected)
    for k in (1, 2, 3):
        np.testing.assert_array_equal(layer.colormap.map(k), annotation.colormap.map(k))
    prob = viewer.layers["cells class probabilities"].data
    np.testing.assert_allclose(
        prob, run_to_end(predict_probabilities(model, image, device="cpu")), atol=1e-5
    )
    objects = viewer.layers["cells objects"].data
    np.testing.assert_array_equal(objects, class_objects(expected, [3])[0])
    assert any(
        f"{int(objects.max())} objects of 'granular rods'" in m for m in notes.messages("info")
    )


def test_choosing_the_classes_mode_shows_its_defaults(viewer, dock) -> None:
    widget = dock("Train")
    assert (widget.patch_size.value, widget.batch_size.value) == (128, 4)
    widget.mode.value = "classes"
    assert (widget.patch_size.value, widget.batch_size.value) == (64, 8)
    widget.batch_size.value = 6  # the user's choice is kept
    widget.mode.value = "cells"
    assert (widget.patch_size.value, widget.batch_size.value) == (128, 6)
