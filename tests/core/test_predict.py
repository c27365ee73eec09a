"""Tests of exact overlap-tile inference and segmentation (tiny networks, tiny images)."""

from __future__ import annotations

import logging
import threading

import dask.array as da
import numpy as np
import pytest
import torch
import zarr
from torch import nn

import napari_unet.core.inference.predict as predict_module
from napari_unet.core.inference import (
    Cancelled,
    predict_probabilities,
    predict_region,
    predict_whole,
    prediction_plan,
    probabilities_to_labels,
    segment,
    slice_normalization,
)
from napari_unet.core.model import TrainedModel, UNet, UNetConfig
from napari_unet.core.progress import Step, run_to_end
from tiny_models import tiled_model

pytestmark = pytest.mark.usefixtures("one_thread")


ATOL = 1e-4


@pytest.fixture(scope="module", params=["same", "valid"])
def model(request: pytest.FixtureRequest) -> TrainedModel:
    return tiled_model(request.param)


def _tile(model: TrainedModel, stride: int) -> int:
    """The input tile whose output advances by ``stride`` pixels."""
    return model.config.admissible_size(2 * model.config.halo + stride)


def _image(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 1000).astype(np.uint16)


class PixelNet(nn.Module):
    """A stand-in network: foreground logit ``gain * (x - 0.5)`` per pixel (no context)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        self.gain = nn.Parameter(torch.tensor(40.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = self.gain * (x[:, :1] - 0.5)
        return torch.cat([torch.zeros_like(fg), fg], dim=1)


class OOMNet(nn.Module):
    """Wraps a network and raises CUDA's out-of-memory error for inputs above a pixel count."""

    def __init__(self, net: nn.Module, max_pixels: int) -> None:
        super().__init__()
        self.net, self.config, self.max_pixels = net, net.config, max_pixels
        self.sizes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape))
        if x.shape[0] * x.shape[-2] * x.shape[-1] > self.max_pixels:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.net(x)


# -- exactness ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 7), (37, 53), (70, 64)])
def test_tiled_equals_one_whole_pass(model: TrainedModel, shape: tuple[int, int]) -> None:
    image = _image(shape)
    whole = predict_whole(model, image, device="cpu")
    assert whole.shape == shape and whole.dtype == np.float32
    for tile, batch in ((_tile(model, 12), 3), (_tile(model, 20) + 1, 1), (None, None)):
        tiled = run_to_end(
            predict_probabilities(model, image, tile=tile, batch_size=batch, device="cpu")
        )
        assert tiled.shape == shape and tiled.dtype == np.float32
        np.testing.assert_allclose(tiled, whole, atol=ATOL, rtol=0)


def test_exactness_test_can_fail(model: TrainedModel) -> None:
    # Control: stitching blocks predicted without context is visibly wrong, so the tolerance
    # above would catch a halo or grid mistake.
    image = _image((48, 48))
    whole = predict_whole(model, image, device="cpu")
    naive = np.block(
        [
            [predict_whole(model, image[y : y + 24, x : x + 24], device="cpu") for x in (0, 24)]
            for y in (0, 24)
        ]
    )
    assert np.abs(naive - whole).max() > 100 * ATOL


def test_tiles_cover_image_with_one_shape_on_the_grid(model: TrainedModel) -> None:
    config = model.config
    plan = prediction_plan(model, _image((70, 45)), tile=_tile(model, 16), device="cpu")
    for axis, n in ((plan.layout.y, 70), (plan.layout.x, 45)):
        assert config.is_admissible(axis.tile)
        assert all(o % config.grid == 0 for o in axis.origins())
        assert axis.count > 1 and axis.extent(axis.count - 1)[1] == n
    # An image smaller than a tile is one tile just large enough.
    plan = prediction_plan(model, _image((5, 7)), tile=500, device="cpu")
    assert plan.layout.count == 1
    assert plan.tile == tuple(config.admissible_size(n + 2 * config.halo) for n in (5, 7))


def test_multichannel_rgb_and_stack() -> None:
    two = tiled_model("same", in_channels=2)
    image = _image((2, 30, 41))
    tiled = run_to_end(predict_probabilities(two, image, channel_axis=0, tile=60, device="cpu"))
    whole = predict_whole(two, image, channel_axis=0, device="cpu")
    np.testing.assert_allclose(tiled, whole, atol=ATOL, rtol=0)

    three = tiled_model("valid", in_channels=3)
    rgb = _image((33, 29, 3))
    tiled = run_to_end(predict_probabilities(three, rgb, rgb=True, tile=70, device="cpu"))
    np.testing.assert_allclose(tiled, predict_whole(three, rgb, rgb=True, device="cpu"), atol=ATOL)

    one = tiled_model("same")
    base = _image((25, 31)).astype(np.float32)
    stack = np.stack([base, _image((25, 31), seed=5), base * 10 + 7])
    prob = run_to_end(predict_probabilities(one, stack, tile=56, batch_size=4, device="cpu"))
    assert prob.shape == stack.shape
    for z in range(3):
        np.testing.assert_allclose(prob[z], predict_whole(one, stack[z], device="cpu"), atol=ATOL)
    # Each slice is normalised by its own percentiles.
    np.testing.assert_allclose(prob[2], prob[0], atol=ATOL)


def test_tta_is_mean_of_eight_transformed_predictions(model: TrainedModel) -> None:
    grid = model.config.grid
    image = _image((10 * grid, 12 * grid))  # sides on the grid: see predict_probabilities
    tta = run_to_end(
        predict_probabilities(model, image, tile=_tile(model, 24), tta=True, device="cpu")
    )
    preds = []
    for k in range(4):
        for flip in (False, True):
            t = np.rot90(image[:, ::-1] if flip else image, k)
            p = np.rot90(
                run_to_end(predict_probabilities(model, np.ascontiguousarray(t), device="cpu")), -k
            )
            preds.append(p[:, ::-1] if flip else p)
    np.testing.assert_allclose(tta, np.mean(preds, axis=0), atol=ATOL, rtol=0)
    assert (
        np.abs(tta - run_to_end(predict_probabilities(model, image, device="cpu"))).max()
        > 10 * ATOL
    )
    np.testing.assert_allclose(
        tta, predict_whole(model, image, tta=True, device="cpu"), atol=ATOL, rtol=0
    )


# -- lazy inputs and outputs --------------------------------------------------------------------


class CountingArray:
    """A lazy array-like that records every read."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype = data, data.shape, data.dtype
        self.reads: list[tuple[int, ...]] = []

    def __getitem__(self, index: object) -> np.ndarray:
        block = self.data[index]
        self.reads.append(block.shape)
        return block


def test_lazy_inputs_are_read_tile_by_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiled_model("same")
    monkeypatch.setattr(predict_module, "PERCENTILE_MAX_PIXELS", 300)  # force subsampling
    image = _image((2, 90, 80))
    lazy = CountingArray(image)
    expected = run_to_end(predict_probabilities(model, image, tile=64, batch_size=2, device="cpu"))
    got = run_to_end(predict_probabilities(model, lazy, tile=64, batch_size=2, device="cpu"))
    np.testing.assert_array_equal(got, expected)
    assert len(lazy.reads) > 8
    assert max(int(np.prod(s)) for s in lazy.reads) <= 64 * 64  # never one whole slice

    dask_image = da.from_array(image, chunks=(1, 16, 16))
    np.testing.assert_array_equal(
        run_to_end(predict_probabilities(model, dask_image, tile=64, batch_size=2, device="cpu")),
        expected,
    )


def test_strided_percentiles_for_big_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiled_model("same")
    image = _image((60, 50))
    exact = slice_normalization(model, image)
    monkeypatch.setattr(predict_module, "PERCENTILE_MAX_PIXELS", 800)
    offset, scale = slice_normalization(model, CountingArray(image))
    sample = image[::2, ::2].astype(np.float32)  # step ceil(sqrt(3000 / 800)) = 2
    np.testing.assert_allclose(offset[0, 0, 0], np.percentile(sample, 1.0), rtol=1e-6)
    np.testing.assert_allclose(
        scale[0, 0, 0] + offset[0, 0, 0], np.percentile(sample, 99.8), rtol=1e-6
    )
    assert abs(float(offset[0, 0, 0] - exact[0][0, 0, 0])) < 50  # close to the full percentile


def test_zarr_in_and_out(tmp_path) -> None:
    model = tiled_model("valid")
    image = _image((2, 45, 38))
    src = zarr.open_array(
        str(tmp_path / "in.zarr"),
        mode="w",
        shape=image.shape,
        chunks=(1, 20, 20),
        dtype=image.dtype,
    )
    src[:] = image
    out = zarr.open_array(
        str(tmp_path / "out.zarr"), mode="w", shape=image.shape, chunks=(1, 16, 16), dtype="float32"
    )
    result = run_to_end(predict_probabilities(model, src, tile=70, out=out, device="cpu"))
    assert result is out
    expected = run_to_end(predict_probabilities(model, image, tile=70, device="cpu"))
    np.testing.assert_array_equal(out[:], expected)


def test_region_matches_whole_slice(model: TrainedModel) -> None:
    image = _image((3, 50, 43))
    tile = _tile(model, 12)
    full = run_to_end(predict_probabilities(model, image, tile=tile, batch_size=1, device="cpu"))
    norm = slice_normalization(model, image, 1)
    parts = np.zeros((50, 43), np.float32)
    for rows in ((0, 17), (17, 50)):
        for cols in ((0, 30), (30, 43)):
            parts[rows[0] : rows[1], cols[0] : cols[1]] = predict_region(
                model,
                image,
                z=1,
                rows=rows,
                cols=cols,
                tile=tile,
                normalization=norm,
                device="cpu",
            )
    np.testing.assert_array_equal(parts, full[1])
    with pytest.raises(ValueError, match="rows"):
        predict_region(model, image, z=1, rows=(10, 60), cols=(0, 5), tile=tile, device="cpu")


# -- progress, cancellation, memory -------------------------------------------------------------


def test_progress_counts_tiles_and_stop_cancels(model: TrainedModel) -> None:
    image = _image((2, 40, 40))
    tile = _tile(model, 16)
    plan = prediction_plan(model, image, tile=tile, batch_size=1, device="cpu")
    calls: list[tuple[int, int]] = []
    run_to_end(
        predict_probabilities(model, image, tile=tile, batch_size=1, device="cpu"),
        lambda e: calls.append((e.done, e.total)),
    )
    assert plan.n_tiles > 4
    assert calls == [(i, plan.n_tiles) for i in range(1, plan.n_tiles + 1)]

    stop = threading.Event()
    done: list[int] = []

    def progress(event: Step) -> None:
        done.append(event.done)
        if event.done == 2:
            stop.set()

    out = np.full(image.shape, -1, np.float32)
    with pytest.raises(Cancelled):
        run_to_end(
            predict_probabilities(
                model, image, tile=tile, batch_size=1, device="cpu", out=out, stop=stop
            ),
            progress,
        )
    assert 2 <= max(done) < plan.n_tiles
    assert (out == -1).any() and (out != -1).any()  # finished tiles stay written


def test_closing_early_ends_the_reader_thread(model: TrainedModel) -> None:
    image = _image((3, 40, 40))
    before = set(threading.enumerate())
    work = segment(model, image, tile=_tile(model, 16), batch_size=1, device="cpu")
    first = next(work)
    assert (first.stage, first.done) == ("tiles", 1)
    readers = [t for t in threading.enumerate() if t not in before]
    assert readers and all(t.name == "napari-unet-tile-reader" for t in readers)
    work.close()
    assert not any(t.is_alive() for t in readers)


def test_segment_reports_each_slice_outside_inference_mode(model: TrainedModel) -> None:
    image = _image((3, 40, 40))
    events: list[Step] = []

    def on_event(event: Step) -> None:
        assert not torch.is_inference_mode_enabled()  # the consumer's code runs as usual
        events.append(event)

    labels = run_to_end(segment(model, image, tile=_tile(model, 16), device="cpu"), on_event)
    prob = run_to_end(predict_probabilities(model, image, tile=_tile(model, 16), device="cpu"))
    slices = [e for e in events if e.stage == "labels"]
    assert [(e.done, e.total, e.item.z) for e in slices] == [(1, 3, 0), (2, 3, 1), (3, 3, 2)]
    for e in slices:
        np.testing.assert_array_equal(e.item.labels, labels[e.item.z])
        np.testing.assert_array_equal(e.item.probabilities, prob[e.item.z])
    tiles = [e for e in events if e.stage == "tiles"]
    assert tiles[-1].done == tiles[-1].total == len(tiles)


def test_out_of_memory_halves_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    base = tiled_model("same")
    image = _image((2, 60, 70))
    whole = [predict_whole(base, image[z], device="cpu") for z in range(2)]
    wrapped = OOMNet(base.net, max_pixels=100 * 100)
    model = TrainedModel(wrapped)
    # The runner works on a private copy of the network: look at the sizes it recorded there.
    seen: list[tuple[int, ...]] = []
    original = predict_module.make_runner

    def spy(*args, **kwargs):
        runner = original(*args, **kwargs)
        seen.append(runner.net.sizes)
        return runner

    predict_module.make_runner = spy
    try:
        with caplog.at_level(logging.WARNING, logger="napari_unet.core.inference.predict"):
            prob = run_to_end(
                predict_probabilities(model, image, tile=200, batch_size=4, device="cpu")
            )
    finally:
        predict_module.make_runner = original
    for z in range(2):
        np.testing.assert_allclose(prob[z], whole[z], atol=ATOL, rtol=0)
    sizes = seen[0]
    assert sizes[0][0] == 2 and sizes[0][-1] > 100  # first try: both slices in one batch
    assert sizes[-1][0] == 1 and sizes[-1][-1] * sizes[-1][-2] <= 100 * 100  # after shrinking
    assert "out of memory" in caplog.text


def test_out_of_memory_at_the_smallest_tile_is_an_error() -> None:
    base = tiled_model("same")
    model = TrainedModel(OOMNet(base.net, max_pixels=10))
    with pytest.raises(MemoryError, match="smallest tile"):
        run_to_end(predict_probabilities(model, _image((30, 30)), device="cpu"))


def test_model_is_left_as_it_was() -> None:
    model = tiled_model("same")
    model.net.train()
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    run_to_end(predict_probabilities(model, _image((20, 20)), device="cpu"))
    assert model.net.training
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert next(model.net.parameters()).is_contiguous()


# -- bad input ----------------------------------------------------------------------------------


def test_bad_input_gives_clear_errors() -> None:
    model = tiled_model("same")
    with pytest.raises(ValueError, match=r"1 channel.*has 3"):
        run_to_end(predict_probabilities(model, _image((20, 20, 3)), rgb=True, device="cpu"))
    with pytest.raises(ValueError, match="empty"):
        run_to_end(predict_probabilities(model, np.zeros((0, 20)), device="cpu"))
    nan = np.ones((20, 20), np.float32)
    nan[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        run_to_end(predict_probabilities(model, nan, device="cpu"))
    with pytest.raises(ValueError, match="NaN"):
        run_to_end(
            segment(model, da.from_array(np.stack([nan * 0 + 1, nan]), chunks=5), device="cpu")
        )
    with pytest.raises(ValueError, match="tile must be at least"):
        run_to_end(predict_probabilities(model, _image((20, 20)), tile=8, device="cpu"))
    with pytest.raises(ValueError, match="batch_size"):
        run_to_end(predict_probabilities(model, _image((20, 20)), batch_size=0, device="cpu"))
    with pytest.raises(ValueError, match="precision"):
        run_to_end(predict_probabilities(model, _image((20, 20)), precision="half", device="cpu"))
    with pytest.raises(ValueError, match="out must have shape"):
        run_to_end(
            predict_probabilities(model, _image((20, 20)), out=np.zeros((20, 21)), device="cpu")
        )
    with pytest.raises(ValueError, match="real numbers"):
        run_to_end(predict_probabilities(model, np.zeros((20, 20), complex), device="cpu"))
    with pytest.raises(ValueError, match="one 2D image"):
        predict_whole(model, _image((2, 20, 20)), device="cpu")


# -- segmentation -------------------------------------------------------------------------------


def _pixel_model(gap: int = 1, **training) -> TrainedModel:
    return TrainedModel(PixelNet(UNetConfig(depth=2, base_channels=4)), gap=gap, training=training)


def test_segment_labels_unique_across_stack_and_grown_back() -> None:
    image = np.zeros((3, 40, 40), np.uint8)
    image[0, 5:15, 5:15] = 1
    image[0, 5:15, 17:27] = 1  # a 2-pixel gap (the cut of gap 1 on both sides)
    image[0, 30:32, 30:32] = 1  # 4 pixels: dropped
    image[1, 20:30, 20:30] = 1
    image[2, 2:38, 2:5] = 1
    model = _pixel_model(gap=1)
    seen: list[int] = []

    def on_event(event: Step) -> None:
        if event.stage == "labels":
            seen.append(event.item.z)

    labels = run_to_end(segment(model, image, tile=60, min_size=10, device="cpu"), on_event)
    assert labels.dtype == np.int32 and labels.shape == image.shape
    assert seen == [0, 1, 2]
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2, 3, 4]
    assert set(np.unique(labels[1])) == {0, 3} and set(np.unique(labels[2])) == {0, 4}
    assert labels[0, 30, 30] == 0
    # The gap between the two touching cells is split between them again.
    assert labels[0, 10, 15] == labels[0, 10, 10] and labels[0, 10, 16] == labels[0, 10, 20]
    # The same as the per-slice step with running start labels.
    prob = run_to_end(predict_probabilities(model, image, tile=60, device="cpu"))
    start, expected = 1, []
    for z in range(3):
        lab = probabilities_to_labels(prob[z], gap=1, min_size=10, start_label=start)
        start = max(start, int(lab.max()) + 1)
        expected.append(lab)
    np.testing.assert_array_equal(labels, np.stack(expected))


def test_segment_defaults_and_outputs(tmp_path) -> None:
    image = np.zeros((30, 30), np.uint8)
    image[2:6, 2:6] = 1  # 16 pixels
    image[10:20, 10:20] = 1
    labels = run_to_end(
        segment(_pixel_model(), image, device="cpu")
    )  # default min_size 16 keeps both
    assert labels.max() == 2
    labels = run_to_end(segment(_pixel_model(min_size=17), image, device="cpu"))  # from the model
    assert labels.max() == 1
    out = zarr.open_array(
        str(tmp_path / "lab.zarr"), mode="w", shape=(30, 30), chunks=(16, 16), dtype="int32"
    )
    prob_out = np.zeros((30, 30), np.float32)
    run_to_end(
        segment(
            _pixel_model(), image, out=out, probabilities_out=prob_out, threshold=0.7, device="cpu"
        )
    )
    np.testing.assert_array_equal(out[:], run_to_end(segment(_pixel_model(), image, device="cpu")))
    assert prob_out[12, 12] > 0.99 and prob_out[0, 0] < 0.01
    with pytest.raises(ValueError, match="threshold"):
        run_to_end(segment(_pixel_model(), image, threshold=1.5, device="cpu"))


def test_slice_normalization_falls_back_to_min_max_as_training_does() -> None:
    """A sparse uint16 slice (percentiles 1 and 99.8 both 0) enters the network at <= 1, as in
    training (normalize.intensity_range); a constant slice is a clear error."""
    from napari_unet.core.inference import slice_normalization
    from napari_unet.core.normalize import normalize_image

    model = TrainedModel(UNet(UNetConfig(depth=2, base_channels=4)))
    sparse = np.zeros((2, 100, 100), np.uint16)
    sparse[0, 0, :10] = 4000
    sparse[1] = np.arange(10_000).reshape(100, 100)
    offset, scale = slice_normalization(model, sparse, 0)
    assert (float(offset[0, 0, 0]), float(scale[0, 0, 0])) == (0.0, 4000.0)
    for z in range(2):
        offset, scale = slice_normalization(model, sparse, z)
        expected = normalize_image(sparse[z][None].astype(np.float32), model.normalization)
        np.testing.assert_allclose((sparse[z] - offset) / scale, expected, atol=1e-6)
    flat = np.full((2, 30, 30), 7, np.uint16)
    with pytest.raises(ValueError, match=r"image slice 1 is constant \(every pixel is 7\)"):
        slice_normalization(model, flat, 1)
