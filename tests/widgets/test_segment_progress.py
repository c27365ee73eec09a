"""The Segment widget's progress (in the widget, not napari's activity dock), its device readout
and its failures (through the worker's errored signal)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from napari_unet.sample_data import make_touching_cells
from napari_unet.widgets.session import session_for


@pytest.fixture
def seg(viewer: Any, dock: Any, threshold_model: Any) -> Any:
    widget = dock("Segment")
    widget.device.value = "cpu"
    session_for(viewer).set_model(threshold_model(), "trained", "test model")
    return widget


def test_progress_bar_in_the_widget(viewer, seg, wait_idle, notes, cells, no_activity_dock):
    image, _ = cells
    viewer.add_image(np.stack([image, image[::-1]]), name="stack")
    seg.tile.value = 64  # several tiles per slice
    assert seg.progress_bar.native.isHidden()
    assert seg.run()
    assert not seg.progress_bar.native.isHidden() and seg.progress_bar.value == 0
    wait_idle(seg)
    done, total = seg.tile_progress
    assert done == total > 2
    assert (seg.progress_bar.value, seg.progress_bar.max) == (total, total)  # shown at the end
    assert seg.progress_bar.native.isHidden()
    assert seg.status.value.startswith("Segmented stack (2 slices):")
    assert no_activity_dock == []


def test_folder_progress_counts_files(viewer, seg, wait_idle, tmp_path, no_activity_dock):
    import tifffile

    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    for i in range(3):
        tifffile.imwrite(folder / f"img{i}.tif", make_touching_cells((48, 40), 4, seed=i)[0])
    seg.folder.value, seg.out_folder.value = folder, out
    assert seg.run_folder()
    assert not seg.progress_bar.native.isHidden() and seg.progress_bar.max == 3
    wait_idle(seg)
    assert (seg.progress_bar.value, seg.progress_bar.max) == (3, 3)
    assert sorted(p.name for p in out.iterdir()) == [f"img{i}_labels.tif" for i in range(3)]
    assert no_activity_dock == []


def test_device_readout_says_what_runs(viewer, seg, dock) -> None:
    from napari_unet.core.device import describe_device
    from napari_unet.core.inference.runtimes import describe_runtime

    assert seg.device_readout.value == f"Running on: {describe_runtime('cpu')}"
    if describe_runtime("cpu") != describe_device("cpu"):  # a graph runtime is installed
        assert seg.device_readout.value.startswith("Running on: CPU (")
    train = dock("Train")
    train.device.value = "cpu"
    assert train.device_readout.value == f"Running on: {describe_device('cpu')}"  # torch trains


def test_a_failure_is_a_notification(viewer, seg, wait_idle, notes, cells, monkeypatch) -> None:
    import napari_unet.core.inference as inference

    def failing(*_args: Any, **_kwargs: Any):  # type: ignore[no-untyped-def]
        yield from ()
        raise MemoryError

    monkeypatch.setattr(inference, "segment", failing)
    viewer.add_image(cells[0], name="cells")
    done: list[Any] = []
    seg.segmentation_done.connect(done.append)
    assert seg.run()
    wait_idle(seg)
    assert done == [None]
    assert notes.messages("error")[-1] == (
        "Segmentation failed: Not enough memory for this job; try a smaller tile, batch or image."
    )
    assert seg.status.value == "Segmentation failed; see the notification."
    assert seg.run_button.enabled and seg.progress_bar.native.isHidden()
