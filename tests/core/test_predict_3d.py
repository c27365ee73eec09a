"""3D inference: exact overlap-tile over volumes, lazy reads, out-of-memory halving, 3D objects."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from napari_unet.core.inference import (
    Cancelled,
    predict_probabilities,
    predict_whole,
    prediction_plan,
    probabilities_to_labels,
    segment,
)
from napari_unet.core.inference import predict as predict_module
from napari_unet.core.model import TrainedModel, UNet, UNetConfig
from napari_unet.core.progress import run_to_end

ATOL = 1e-4
VOXEL = (3.0, 1.0, 1.0)


def _model(padding: str = "same", seed: int = 0, voxel: tuple = VOXEL) -> TrainedModel:
    torch.manual_seed(seed)
    config = UNetConfig(depth=2, base_channels=4, padding=padding, spatial_dims=3, voxel_size=voxel)
    net = UNet(config)
    if config.batch_norm:  # non-trivial batch-norm statistics
        net.train()
        with torch.no_grad():
            net(torch.randn(2, 1, *config.admissible_shape((6, 48, 48))) * 2 + 0.5)
    return TrainedModel(net.eval(), gap=1)


def _volume(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 1000).astype(np.uint16)


@pytest.mark.parametrize(("padding", "tile"), [("same", (26, 72, 72)), ("valid", (24, 68, 68))])
def test_tiled_volume_equals_one_whole_pass(padding: str, tile: tuple[int, int, int]) -> None:
    model = _model(padding)
    volume = _volume((9, 40, 37))
    plan = prediction_plan(model, volume, tile=tile, device="cpu")
    assert plan.layout.count > 1 and all(a.count > 1 for a in plan.layout.axes[:2])
    assert plan.shape == volume.shape
    tiled = run_to_end(
        predict_probabilities(model, volume, tile=tile, device="cpu", runtime="torch")
    )
    whole = predict_whole(model, volume, device="cpu", runtime="torch")
    assert tiled.shape == whole.shape == volume.shape
    assert float(np.abs(tiled - whole).max()) <= ATOL
    assert 0.0 < float(whole.std())  # not a constant map: the comparison means something


def test_tiled_volume_exported_graph_and_tta() -> None:
    model = _model("same")
    volume = _volume((7, 26, 23), seed=2)
    whole = predict_whole(model, volume, device="cpu", tta=True, runtime="torch")
    tiled = run_to_end(
        predict_probabilities(model, volume, tile=(26, 72, 72), device="cpu", tta=True)
    )
    assert float(np.abs(tiled - whole).max()) <= ATOL
    plain = predict_whole(model, volume, device="cpu", runtime="torch")
    assert float(np.abs(plain - whole).max()) > 1e-3  # TTA does change the result


def test_volume_with_channels_and_lazy_zarr(tmp_path) -> None:
    torch.manual_seed(3)
    config = UNetConfig(depth=2, base_channels=4, spatial_dims=3, in_channels=2, voxel_size=VOXEL)
    model = TrainedModel(UNet(config).eval())
    volume = _volume((6, 2, 20, 24))  # (Z, C, Y, X)
    src = zarr.open_array(
        str(tmp_path / "in.zarr"), mode="w", shape=volume.shape, chunks=(2, 1, 8, 8), dtype="u2"
    )
    src[:] = volume
    out = zarr.open_array(
        str(tmp_path / "out.zarr"), mode="w", shape=(6, 20, 24), chunks=(2, 8, 8), dtype="f4"
    )
    run_to_end(
        predict_probabilities(
            model, src, channel_axis=1, tile=(26, 56, 72), device="cpu", out=out, runtime="torch"
        )
    )
    whole = predict_whole(model, volume, channel_axis=1, device="cpu", runtime="torch")
    assert float(np.abs(out[:] - whole).max()) <= ATOL


class OOMNet(nn.Module):
    """Raises CUDA's out-of-memory error for inputs of more than ``max_voxels`` voxels."""

    def __init__(self, net: nn.Module, max_voxels: int) -> None:
        super().__init__()
        self.net, self.config, self.max_voxels = net, net.config, max_voxels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x[:, 0].numel() > self.max_voxels:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.net(x)


def test_out_of_memory_halves_the_3d_tile(caplog: pytest.LogCaptureFixture) -> None:
    base = _model("same", voxel=(10.0, 1.0, 1.0))  # z is not pooled: no halo along z
    assert base.config.halos == (0, 24, 24)
    volume = _volume((8, 100, 100))
    whole = predict_whole(base, volume, device="cpu", runtime="torch")
    model = TrainedModel(OOMNet(base.net, max_voxels=8 * 100 * 100))
    with caplog.at_level(logging.WARNING):
        prob = run_to_end(predict_probabilities(model, volume, tile=(8, 152, 152), device="cpu"))
    assert float(np.abs(prob - whole).max()) <= ATOL
    assert "out of memory" in caplog.text and "8x148x148" in caplog.text
    assert "4x76x76" in caplog.text


def test_stop_cancels_a_volume() -> None:
    import threading

    model = _model("same")
    stop = threading.Event()
    events = predict_probabilities(
        model, _volume((9, 40, 37)), tile=(26, 72, 72), device="cpu", stop=stop
    )
    first = next(events)
    assert (first.stage, first.done) == ("tiles", 1)
    stop.set()
    with pytest.raises(Cancelled):
        run_to_end(events)


def test_3d_objects_are_components_in_3d_and_grown_back() -> None:
    prob = np.zeros((6, 12, 20), np.float32)
    prob[1:5, 2:10, 2:9] = 0.9  # one object spanning z 1..4
    prob[1:5, 2:10, 11:18] = 0.9  # a second, touching it across a gap of 2 voxels
    labels = probabilities_to_labels(prob, gap=1, min_size=1, sampling=VOXEL)
    assert labels.shape == prob.shape and labels.dtype == np.int32
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
    assert len(np.unique(labels[1:5, 5, 3])) == 1  # one label through z, not one per slice
    assert (labels[2, 5, 9:11] > 0).all()  # the gap is grown back


def test_segment_volume_gives_one_3d_labels_event() -> None:
    class Threshold(nn.Module):
        def __init__(self, config: UNetConfig) -> None:
            super().__init__()
            self.config = config

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            fg = 40.0 * (x[:, :1] - 0.5)
            return torch.cat([torch.zeros_like(fg), fg], dim=1)

    config = UNetConfig(depth=2, base_channels=4, spatial_dims=3, voxel_size=VOXEL)
    model = TrainedModel(Threshold(config), gap=0, training={"min_size": 1, "min_confidence": 0.0})
    volume = np.zeros((8, 30, 30), np.float32)
    volume[1:4, 3:12, 3:12] = 1.0
    volume[5:8, 3:12, 3:12] = 1.0  # separated along z only
    volume[2:6, 18:27, 15:25] = 1.0
    events = list(segment(model, volume, tile=(26, 72, 72), device="cpu"))
    labelled = [e for e in events if e.stage == "labels"]
    assert len(labelled) == 1 and labelled[0].item.labels.shape == volume.shape
    labels = run_to_end(segment(model, volume, tile=(26, 72, 72), device="cpu"))
    assert labels.shape == volume.shape and int(labels.max()) == 3
    assert labels[2, 5, 5] != labels[6, 5, 5]


def test_3d_model_on_a_2d_image_is_a_clear_error() -> None:
    model = _model("same")
    with pytest.raises(ValueError, match=r"a 3D model needs a volume \(Z, Y, X\)"):
        run_to_end(predict_probabilities(model, np.zeros((40, 40)), device="cpu"))
    with pytest.raises(ValueError, match="tile must be a positive integer or 3 of them"):
        prediction_plan(model, np.zeros((8, 40, 40)), tile=(52, 52), device="cpu")


def test_normalisation_is_per_volume() -> None:
    model = _model("same")
    volume = _volume((6, 20, 20)).astype(np.float32)
    volume[3:] += 5000  # per-slice percentiles would hide this step
    offset, scale = predict_module.slice_normalization(model, volume)
    assert offset.shape == (1, 1, 1, 1)
    lo, hi = np.percentile(volume, [1.0, 99.8])
    assert np.allclose([offset.ravel()[0], scale.ravel()[0]], [lo, hi - lo], rtol=1e-5)
