"""Train and Segment on a 3D volume: '3D' from the layer's scale, one 3D Labels layer, Stop."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from napari_unet.core.inference import segment
from napari_unet.core.model import TrainedModel, UNet, UNetConfig
from napari_unet.core.progress import run_to_end
from napari_unet.sample_data import make_touching_nuclei_3d
from napari_unet.widgets.session import session_for

VOXEL = (2.5, 1.0, 1.0)
TINY = {"patch_size": 32, "batch_size": 2, "device": "cpu", "seed": 0, "context": 8}


@pytest.fixture(scope="module")
def nuclei() -> tuple[np.ndarray, np.ndarray]:
    return make_touching_nuclei_3d((10, 40, 40), n_nuclei=5, spacing=VOXEL, seed=4)


def _tiny_3d(seed: int = 0) -> TrainedModel:
    torch.manual_seed(seed)
    net = UNet(UNetConfig(depth=2, base_channels=4, spatial_dims=3, voxel_size=VOXEL)).eval()
    with torch.no_grad():
        net.head.bias[1] += 0.2  # an untrained network with some foreground
    return TrainedModel(
        net, gap=1, training={"min_size": 2, "threshold": 0.5, "min_confidence": 0.0}
    )


def test_train_as_3d_from_the_layer_scale(viewer, dock, wait_idle, notes, nuclei) -> None:
    image, labels = nuclei
    sparse = np.zeros_like(labels)
    sparse[[3, 6]] = labels[[3, 6]]
    viewer.add_image(image, name="volume", scale=VOXEL)
    viewer.add_labels(sparse, name="annotation", scale=VOXEL)
    widget = dock("Train")
    assert widget.dims.value == "3D"  # z spacing differs from the in-plane one
    widget.extra_settings = dict(TINY)
    widget.iterations.value = 2
    session_for(viewer).set_model(_tiny_3d(), "file", "tiny 3D")
    widget.again_button.native.click()
    wait_idle(widget, timeout=120_000)
    model = session_for(viewer).model
    assert model.config.spatial_dims == 3 and model.config.voxel_size == VOXEL
    assert model.training["summary"]["annotated_pixels"] == 2 * 40 * 40  # two slices
    np.testing.assert_array_equal(viewer.layers["annotation"].data, sparse)

    viewer.add_image(image[3], name="plane")
    viewer.add_labels(sparse[3], name="plane annotation")
    widget.image.value = viewer.layers["plane"]
    widget.annotation_layer.value = viewer.layers["plane annotation"]
    assert widget.dims.value == "2D slices"
    widget.dims.value = "3D"
    assert not widget.train()
    assert any("'3D' trains a 3D network on a volume" in m for m in notes.messages("error"))


def test_train_as_3d_shows_the_volume_defaults(viewer, dock, nuclei) -> None:
    image, _ = nuclei
    viewer.add_image(image, name="volume", scale=VOXEL)
    widget = dock("Train")
    assert widget.dims.value == "3D"
    shown = (widget.patch_size.value, widget.context.value, widget.batch_size.value)
    assert shown == (48, 8, 2)  # VOLUME_DEFAULTS
    widget.batch_size.value = 3  # the user's own value stays
    widget.dims.value = "2D slices"
    shown = (widget.patch_size.value, widget.context.value, widget.batch_size.value)
    assert shown == (128, 16, 3)
    widget.dims.value = "3D"
    assert (widget.patch_size.value, widget.batch_size.value) == (48, 3)
    assert widget.settings().patch_size == 48


def test_segment_volume_into_one_3d_labels_layer(viewer, dock, wait_idle, nuclei) -> None:
    image, _ = nuclei
    model = _tiny_3d()
    session_for(viewer).set_model(model, "trained", "tiny 3D")
    viewer.add_image(image, name="volume", scale=VOXEL)
    seg = dock("Segment")
    seg.device.value = "cpu"
    seg.tile.value = 64
    seg.scope.value = "current slice"  # a 3D model segments the whole volume anyway
    done: list[Any] = []
    seg.segmentation_done.connect(done.append)
    seg.run_button.native.click()
    wait_idle(seg)
    layer = done[0]
    expected = run_to_end(
        segment(model, image, device="cpu", tile=64, threshold=seg.threshold.value,
                min_size=seg.min_size.value)
    )  # fmt: skip
    assert layer.data.shape == image.shape
    np.testing.assert_array_equal(layer.data, expected)
    assert tuple(layer.scale) == VOXEL
    assert seg.tile_progress[0] == seg.tile_progress[1] > 1  # per-tile progress


def test_stop_keeps_the_finished_tiles_of_a_volume(viewer, dock, wait_idle, notes, nuclei):
    image, _ = nuclei
    session_for(viewer).set_model(_tiny_3d(), "trained", "tiny 3D")
    viewer.add_image(np.concatenate([image] * 3), name="volume", scale=VOXEL)
    seg = dock("Segment")
    seg.device.value = "cpu"
    seg.tile.value = 56
    assert seg.run()
    seg.stop_button.native.click()
    wait_idle(seg)
    assert any("tile(s) of the volume" in m for m in notes.messages("info"))
    assert "volume probability" in viewer.layers


def test_volume_of_another_voxel_size_is_refused(viewer, dock, notes, nuclei) -> None:
    session_for(viewer).set_model(_tiny_3d(), "trained", "tiny 3D")
    viewer.add_image(nuclei[0], name="volume", scale=(1.0, 0.5, 0.5))
    seg = dock("Segment")
    seg.device.value = "cpu"
    assert not seg.run()
    assert any("differs from the voxel size" in m for m in notes.messages("error"))
    viewer.add_image(nuclei[0][0], name="plane")
    seg.image.value = viewer.layers["plane"]
    assert not seg.run()
    assert any("it segments volumes (Z, Y, X)" in m for m in notes.messages("error"))
