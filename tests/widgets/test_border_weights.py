"""The Border weights widget: the map as a layer, live while painting and changing settings."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_unet.core.targets import border_weight_map, cut_gap


def _open(viewer: Any, dock: Any, labels: np.ndarray, **settings: Any) -> Any:
    viewer.add_image(np.zeros(labels.shape, np.float32), name="image")
    layer = viewer.add_labels(labels.copy(), name="cells")
    widget = dock("Border weights")
    widget.labels_layer.value = layer
    for name, value in settings.items():
        getattr(widget, name).value = value
    return widget, layer


def _expected(labels: np.ndarray, gap: int, **kwargs: Any) -> np.ndarray:
    return border_weight_map(cut_gap(labels, gap) if gap else labels, **kwargs)


def test_show_adds_the_map_below_the_labels(viewer, dock, wait_idle, notes, cells) -> None:
    _, labels = cells
    widget, layer = _open(viewer, dock, labels, gap=0)
    assert widget.show_weights()
    wait_idle(widget)
    weights = widget.weights_layer
    assert weights.name == "cells border weights"
    names = [lay.name for lay in viewer.layers]
    assert names.index("cells border weights") == names.index("cells") - 1
    np.testing.assert_allclose(weights.data, border_weight_map(labels), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(layer.data, labels)  # the labels are only read
    assert notes.messages("error") == []


def test_painting_updates_the_map_incrementally(viewer, dock, wait_idle, cells) -> None:
    _, labels = cells
    widget, layer = _open(viewer, dock, labels)
    widget.show_weights()
    wait_idle(widget)
    before = widget.weights_layer.data.copy()
    # A user paints a new cell into the background with the brush.
    layer.brush_size = 7
    layer.paint((5, 5), int(labels.max()) + 1)
    layer.paint((80, 8), int(labels.max()) + 2)
    wait_idle(widget)
    assert widget.updates >= 1
    after = widget.weights_layer.data
    assert not np.array_equal(after, before)
    gap = int(widget.gap.value)
    np.testing.assert_allclose(after, _expected(layer.data, gap), rtol=1e-5, atol=1e-5)
    # Undo-able history edits (data_setitem) fire the same event.
    layer.data_setitem((np.array([50]), np.array([50])), 0)
    wait_idle(widget)
    np.testing.assert_allclose(
        widget.weights_layer.data, _expected(layer.data, gap), rtol=1e-5, atol=1e-5
    )


def test_settings_update_the_map(viewer, dock, wait_idle, cells) -> None:
    _, labels = cells
    widget, _ = _open(viewer, dock, labels, gap=0)
    widget.show_weights()
    wait_idle(widget)
    widget.w0.value = 3.0
    wait_idle(widget)
    np.testing.assert_allclose(
        widget.weights_layer.data, border_weight_map(labels, w0=3.0), rtol=1e-5, atol=1e-5
    )
    widget.sigma.value = 2.0
    widget.class_balance.value = False
    wait_idle(widget)
    expected = border_weight_map(labels, w0=3.0, sigma=2.0, class_balance=False)
    np.testing.assert_allclose(widget.weights_layer.data, expected, rtol=1e-5, atol=1e-5)
    widget.gap.value = 1
    wait_idle(widget)
    expected = _expected(labels, 1, w0=3.0, sigma=2.0, class_balance=False)
    np.testing.assert_allclose(widget.weights_layer.data, expected, rtol=1e-5, atol=1e-5)
    assert widget.weights_layer.contrast_limits[1] == float(expected.max())


def test_region_and_stack(viewer, dock, wait_idle, cells) -> None:
    _, labels = cells
    stack = np.stack([labels, np.zeros_like(labels), labels[::-1]])
    widget, _ = _open(viewer, dock, stack, gap=0)
    region = viewer.add_shapes(
        [np.array([[0, 0], [0, 60], [60, 60], [60, 0]])], shape_type="rectangle", name="area"
    )
    widget.region.value = region
    widget.show_weights()
    wait_idle(widget)
    mask = np.zeros(labels.shape, bool)
    mask[:61, :61] = True
    for z in range(3):
        expected = border_weight_map(stack[z], region=mask)
        np.testing.assert_allclose(widget.weights_layer.data[z], expected, rtol=1e-5, atol=1e-5)
    assert widget.weights_layer.data.shape == stack.shape


def test_bad_inputs_are_notified(viewer, dock, wait_idle, notes) -> None:
    widget = dock("Border weights")
    assert not widget.show_weights()
    assert any("Choose the Labels layer" in m for m in notes.messages("error"))
    layer = viewer.add_labels(np.zeros((32, 32), np.int32), name="empty")
    widget.labels_layer.value = layer
    viewer.add_labels(np.ones((16, 16), np.int32), name="small region")
    widget.region.value = viewer.layers["small region"]
    widget.show_weights()
    wait_idle(widget)
    assert any("small region" in m for m in notes.messages("error"))


def test_removing_the_labels_stops_following(viewer, dock, wait_idle, cells) -> None:
    _, labels = cells
    widget, layer = _open(viewer, dock, labels)
    widget.show_weights()
    wait_idle(widget)
    viewer.layers.remove(layer)
    assert "removed" in widget.status.value
    layer.paint((5, 5), 3)  # no longer followed: nothing happens
    assert not widget.busy
    assert "cells border weights" in viewer.layers  # what was shown stays


def test_a_volume_is_weighted_in_3d_with_its_scale(viewer, dock, wait_idle, notes) -> None:
    from napari_unet.sample_data import make_touching_nuclei_3d

    spacing = (2.0, 1.0, 1.0)
    _, volume = make_touching_nuclei_3d((10, 48, 48), 8, spacing=spacing, seed=0)
    viewer.add_image(np.zeros(volume.shape, np.float32), name="image", scale=spacing)
    layer = viewer.add_labels(volume.copy(), name="nuclei", scale=spacing)
    widget = dock("Border weights")
    widget.labels_layer.value = layer
    assert widget.dims.enabled and widget.dims.value == "3D"  # from the layer's scale
    widget.gap.value = 1
    assert widget.show_weights()
    wait_idle(widget)
    weights = widget.weights_layer
    assert weights.data.shape == volume.shape and tuple(weights.scale) == spacing

    def expected(labels):
        cut = cut_gap(labels, 1, sampling=spacing)
        return border_weight_map(cut, sampling=spacing)

    np.testing.assert_allclose(weights.data, expected(volume), rtol=1e-5, atol=1e-5)
    # painting in one slice updates the 3D map around the stroke
    viewer.dims.set_point(0, 5 * spacing[0])
    layer.brush_size = 5
    layer.paint((5, 10, 40), int(volume.max()) + 1)
    wait_idle(widget)
    assert widget.updates >= 1
    np.testing.assert_allclose(weights.data, expected(layer.data), rtol=1e-5, atol=1e-5)
    # the same labels as 2D slices: each slice on its own
    widget.dims.value = "2D slices"
    wait_idle(widget)
    for z in (0, 5):
        flat = border_weight_map(cut_gap(layer.data[z], 1))
        np.testing.assert_allclose(widget.weights_layer.data[z], flat, rtol=1e-5, atol=1e-5)
    assert notes.messages("error") == []


def test_an_isotropic_stack_defaults_to_2d_slices(viewer, dock, cells) -> None:
    _, labels = cells
    layer = viewer.add_labels(np.stack([labels, labels]), name="stack")
    widget = dock("Border weights")
    widget.labels_layer.value = layer
    assert widget.dims.enabled and widget.dims.value == "2D slices"
    widget.labels_layer.value = viewer.add_labels(labels, name="flat")
    assert not widget.dims.enabled


def test_a_volume_with_a_negative_scale_is_refused(viewer, dock, wait_idle, notes) -> None:
    volume = np.zeros((4, 32, 32), np.int32)
    volume[1:3, 4:10, 4:10] = 1
    layer = viewer.add_labels(volume, name="flipped", scale=(-2.0, 1.0, 1.0))
    widget = dock("Border weights")
    widget.labels_layer.value = layer
    assert widget.dims.value == "3D"
    widget.show_weights()
    wait_idle(widget)
    errors = notes.messages("error")
    assert any("the scale of 'flipped' must hold finite spacings > 0" in m for m in errors)


def test_stack_progress_is_in_the_widget(viewer, dock, wait_idle, notes, cells, no_activity_dock):
    """Issue #17: a stack's progress shows in the widget's own bar, not napari's activity dock,
    and the map is drawn by the throttled refresh (every slice there at the end)."""
    _, labels = cells
    stack = np.stack([labels, labels[::-1], labels[:, ::-1], np.zeros_like(labels)])
    widget, _ = _open(viewer, dock, stack, gap=0, dims="2D slices")
    assert widget.progress_bar.native.isHidden()
    assert widget.show_weights()
    assert not widget.progress_bar.native.isHidden()
    assert (widget.progress_bar.value, widget.progress_bar.max) == (0, 4)
    wait_idle(widget)
    assert (widget.progress_bar.value, widget.progress_bar.max) == (4, 4)  # shown at the end
    assert widget.progress_bar.native.isHidden()
    for z in range(4):
        expected = border_weight_map(stack[z])
        np.testing.assert_allclose(widget.weights_layer.data[z], expected, rtol=1e-5, atol=1e-5)
    assert widget.status.value.startswith("Weights 0–")
    assert no_activity_dock == [] and notes.messages("error") == []
