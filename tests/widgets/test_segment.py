"""The Segment widget: labels written as slices finish, equal to core segment's output."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import pytest
import torch

from napari_unet.core.inference import predict_probabilities, segment
from napari_unet.core.model_files import save_model
from napari_unet.core.progress import run_to_end
from napari_unet.sample_data import make_touching_cells
from napari_unet.widgets.session import session_for


@pytest.fixture
def seg(viewer: Any, dock: Any) -> Any:
    widget = dock("Segment")
    widget.device.value = "cpu"
    return widget


def _model(viewer: Any, model: Any) -> Any:
    session_for(viewer).set_model(model, "trained", "test model")
    return model


def _run(widget: Any, wait_idle: Any) -> Any:
    done: list[Any] = []
    widget.segmentation_done.connect(done.append)
    widget.run_button.native.click()
    wait_idle(widget)
    assert len(done) == 1
    return done[0]


def test_segments_a_2d_image_like_core(viewer, seg, threshold_model, wait_idle, notes, cells):
    image, truth = cells
    model = _model(viewer, threshold_model())
    viewer.add_image(image, name="cells")
    seg.tile.value = 64  # several tiles, reported one by one
    layer = _run(seg, wait_idle)
    assert layer.name == "cells segmentation"
    expected = run_to_end(segment(model, image, device="cpu", tile=64))
    np.testing.assert_array_equal(layer.data, expected)
    n_cells = int(expected.max())
    assert 3 <= n_cells <= truth.max()
    assert seg.tile_progress[0] == seg.tile_progress[1] > 1
    assert any(f"{n_cells} cells in 'cells segmentation'" in m for m in notes.messages("info"))
    assert "Model: test model" in seg.model_info.value


def test_whole_stack_and_current_slice(viewer, seg, threshold_model, wait_idle, cells) -> None:
    image, _ = cells
    stack = np.stack([image, image[::-1], image[:, ::-1]])
    model = _model(viewer, threshold_model())
    viewer.add_image(stack, name="stack")
    seg.probabilities.value = True
    layer = _run(seg, wait_idle)
    expected = run_to_end(segment(model, stack, device="cpu"))
    np.testing.assert_array_equal(layer.data, expected)
    assert len(np.unique(layer.data)) - 1 == expected.max()  # unique across the stack
    prob = viewer.layers["stack probability"].data
    np.testing.assert_allclose(
        prob, run_to_end(predict_probabilities(model, stack, device="cpu")), atol=1e-6
    )

    # The current slice only, into the same layer: labels stay unique across the stack.
    layer.data[...] = 0
    viewer.dims.set_current_step(0, 1)
    seg.scope.value = "current slice"
    again = _run(seg, wait_idle)
    assert again is layer or again.name == layer.name
    assert not layer.data[0].any() and not layer.data[2].any()
    one = run_to_end(segment(model, stack[1], device="cpu"))
    np.testing.assert_array_equal(layer.data[1] > 0, one > 0)


def test_dask_backed_image(viewer, seg, threshold_model, wait_idle, cells) -> None:
    image, _ = cells
    stack = np.stack([image, image.T])
    model = _model(viewer, threshold_model())
    viewer.add_image(da.from_array(stack, chunks=(1, 48, 48)), name="lazy")
    layer = _run(seg, wait_idle)
    np.testing.assert_array_equal(layer.data, run_to_end(segment(model, stack, device="cpu")))


def test_zarr_backed_image(viewer, seg, threshold_model, wait_idle, cells) -> None:
    zarr = pytest.importorskip("zarr")
    image, _ = cells
    stack = np.stack([image, image.T])
    store = zarr.create_array(store={}, shape=stack.shape, chunks=(1, 48, 48), dtype=stack.dtype)
    store[:] = stack
    model = _model(viewer, threshold_model())
    viewer.add_image(store, name="on disk", contrast_limits=(0, 65535))
    layer = _run(seg, wait_idle)
    np.testing.assert_array_equal(layer.data, run_to_end(segment(model, stack, device="cpu")))


def test_rgb_and_multichannel_images(viewer, seg, threshold_model, wait_idle, cells) -> None:
    image, _ = cells
    rgb = np.stack([image // 257] * 3, axis=-1).astype(np.uint8)
    model = _model(viewer, threshold_model(3))
    viewer.add_image(rgb, rgb=True, name="colour")
    layer = _run(seg, wait_idle)
    assert layer.data.shape == image.shape
    np.testing.assert_array_equal(
        layer.data, run_to_end(segment(model, rgb, rgb=True, device="cpu"))
    )

    two = np.stack([image, image[::-1]])  # (C, Y, X), channels found by 'auto'
    model = _model(viewer, threshold_model(2))
    viewer.add_image(two, name="two channels")
    seg.image.value = viewer.layers["two channels"]
    layer = _run(seg, wait_idle)
    assert layer.data.shape == image.shape
    np.testing.assert_array_equal(
        layer.data, run_to_end(segment(model, two, channel_axis=0, device="cpu"))
    )


def test_model_from_a_file(viewer, seg, threshold_model, wait_idle, notes, cells, tmp_path):
    image, _ = cells
    model = threshold_model()
    save_model(model, tmp_path / "m.pt")
    viewer.add_image(image, name="cells")
    seg.model_source.value = "file"
    assert not seg.model_file.native.isHidden() and seg.model_info.native.isHidden()
    seg.model_file.value = tmp_path / "m.pt"
    layer = _run(seg, wait_idle)
    np.testing.assert_array_equal(layer.data, run_to_end(segment(model, image, device="cpu")))


def test_edited_results_are_never_overwritten(viewer, seg, threshold_model, wait_idle, cells):
    image, _ = cells
    _model(viewer, threshold_model())
    viewer.add_image(image, name="cells")
    first = _run(seg, wait_idle)
    first.paint((3, 3), 99)  # the user corrects the result
    edited = first.data.copy()
    second = _run(seg, wait_idle)
    assert second.name != first.name and second.name.startswith("cells segmentation")
    np.testing.assert_array_equal(first.data, edited)


def test_stop_keeps_finished_slices(viewer, seg, threshold_model, wait_idle, notes, cells):
    image, _ = cells
    _model(viewer, threshold_model())
    viewer.add_image(np.stack([image] * 6), name="stack")
    seg.tile.value = 56
    done: list[Any] = []
    seg.segmentation_done.connect(done.append)
    assert seg.run()
    seg.stop_button.native.click()
    seg.stop_button.native.click()
    wait_idle(seg)
    assert done == [None]
    infos = notes.messages("info")
    assert any("already stopping" in m for m in infos)
    assert any("Segmentation stopped after" in m for m in infos)
    assert "stack segmentation" in viewer.layers


def test_bad_inputs_end_in_notifications(viewer, seg, threshold_model, notes, cells, tmp_path):
    image, _ = cells

    def error_after() -> str:
        count = len(notes.messages("error"))
        assert seg.run() is False
        assert not seg.busy
        errors = notes.messages("error")
        assert len(errors) == count + 1
        return errors[-1]

    assert "Choose the image" in error_after()
    viewer.add_image(image, name="cells")
    assert "no model in this session" in error_after()

    seg.model_source.value = "file"
    seg.model_file.value = tmp_path / "missing.pt"
    assert "Choose a model file" in error_after()
    torch.save({"something": torch.ones(2)}, tmp_path / "foreign.pt")
    seg.model_file.value = tmp_path / "foreign.pt"
    assert "is not a napari-unet model file" in error_after()

    seg.model_source.value = "session"
    _model(viewer, threshold_model(3))
    assert "The model reads 3 channel(s)" in error_after()
    assert len(viewer.layers) == 1  # nothing was added or changed


def test_multiscale_layer_is_segmented_at_level_0(viewer, seg, threshold_model, wait_idle, notes):
    image, _ = make_touching_cells((80, 72), 6, seed=5)
    level0 = da.from_array(np.stack([image, image[::-1]]), chunks=(1, 40, 40))
    model = _model(viewer, threshold_model())
    viewer.add_image([level0, level0[:, ::2, ::2]], multiscale=True, name="ome")
    layer = _run(seg, wait_idle)
    assert layer.data.shape == (2, 80, 72)
    expected = run_to_end(segment(model, np.asarray(level0), device="cpu"))
    np.testing.assert_array_equal(layer.data, expected)
    assert any("'ome' is multiscale (2 levels): using level 0" in m for m in notes.messages())


def _folder_run(widget: Any, wait_idle: Any) -> Any:
    done: list[Any] = []
    widget.folder_done.connect(done.append)
    widget.folder_button.native.click()
    wait_idle(widget)
    assert len(done) == 1
    return done[0]


def test_segment_a_folder(viewer, seg, threshold_model, wait_idle, notes, tmp_path):
    import tifffile

    images = {f"img{i}": make_touching_cells((64, 56), 5, seed=10 + i)[0] for i in range(3)}
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    for name, image in images.items():
        tifffile.imwrite(folder / f"{name}.tif", image)
    (folder / "broken.tif").write_bytes(b"not a TIFF")
    model = _model(viewer, threshold_model())
    seg.folder.value, seg.out_folder.value = folder, out
    results = _folder_run(seg, wait_idle)
    assert [(r.target.source.name, r.status) for r in results] == [
        ("broken.tif", "failed"),
        ("img0.tif", "written"),
        ("img1.tif", "written"),
        ("img2.tif", "written"),
    ]
    for name, image in images.items():
        expected = run_to_end(segment(model, image, device="cpu"))
        np.testing.assert_array_equal(tifffile.imread(out / f"{name}_labels.tif"), expected)
    warning = notes.messages("warning")[-1]
    assert "Segmented 3 of 4 image(s)" in warning and "1 failed (broken.tif: cannot read" in warning
    assert len(viewer.layers) == 0  # files in, files out

    (folder / "broken.tif").unlink()
    seg.skip_existing.value = True
    again = _folder_run(seg, wait_idle)
    assert [r.status for r in again] == ["skipped"] * 3
    assert "3 skipped" in notes.messages("info")[-1]


def test_folder_choices_that_do_not_work(viewer, seg, threshold_model, notes, tmp_path):
    _model(viewer, threshold_model())
    seg.folder.value = tmp_path / "missing"
    assert seg.run_folder() is False
    assert "Choose the folder of images" in notes.messages("error")[-1]
    seg.folder.value = tmp_path
    assert seg.run_folder() is False
    assert "Choose the output folder" in notes.messages("error")[-1]
    seg.out_folder.value = tmp_path
    assert seg.run_folder() is False  # an empty folder
    assert "no image in folder" in notes.messages("error")[-1]
    assert not seg.busy


def test_threshold_and_min_size_come_from_the_model(viewer, seg, threshold_model, cells):
    viewer.add_image(cells[0], name="cells")
    model = threshold_model()
    model.training = {**model.training, "threshold": 0.35, "min_size": 42, "min_confidence": 0.7}
    _model(viewer, model)
    assert seg.threshold.value == pytest.approx(0.35)
    assert seg.min_size.value == 42
    assert seg.min_confidence.value == pytest.approx(0.7)
    seg.threshold.value = 0.6  # the user's choice wins until the model changes
    seg.min_confidence.value = 0.9
    params = seg._plan()["params"]
    assert params["threshold"] == pytest.approx(0.6)
    assert params["min_confidence"] == pytest.approx(0.9)
    assert seg._batch_settings().min_confidence == pytest.approx(0.9)


def test_link_slices_into_3d_objects(viewer, seg, threshold_model, wait_idle, notes) -> None:
    from napari_unet.core.inference import link_slices
    from napari_unet.sample_data import make_touching_nuclei_3d

    image, _ = make_touching_nuclei_3d((8, 64, 64), 8, spacing=(2.0, 1.0, 1.0), seed=1)
    model = _model(viewer, threshold_model())
    viewer.add_image(image, name="nuclei", scale=(2.0, 1.0, 1.0))
    seg.link_slices.value = True
    layer = _run(seg, wait_idle)
    per_slice = run_to_end(segment(model, image, device="cpu"))
    np.testing.assert_array_equal(layer.data, link_slices(per_slice))
    assert layer.data.max() < per_slice.max()  # objects spanning slices share one label
    n = int(layer.data.max())
    assert any(f"{n} 3D objects in 'nuclei segmentation'" in m for m in notes.messages("info"))
    settings = seg._batch_settings()
    assert settings.link_slices == 0.5
