"""Tests of the runtimes behind the tile engine: torch, ONNX Runtime, OpenVINO (tiny networks)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from napari_unet.core.inference import predict_probabilities, predict_whole, segment
from napari_unet.core.inference import runtimes as rt
from napari_unet.core.inference.interior import interior_trim
from napari_unet.core.inference.runner import NetworkRunner, is_out_of_memory, make_runner
from napari_unet.core.model import TrainedModel, UNet, UNetConfig
from napari_unet.core.progress import run_to_end
from tiny_models import tiled_model

pytestmark = pytest.mark.usefixtures("one_thread")


ATOL = 1e-4
CPU = torch.device("cpu")
INSTALLED = [r for r in rt.GRAPH_RUNTIMES if r in rt.available_runtimes()]


def _model(padding: str = "same", in_channels: int = 1, n_classes: int = 2, seed: int = 0):
    return tiled_model(padding, in_channels, seed, n_classes=n_classes)


@pytest.fixture(autouse=True)
def _fresh_cache():
    rt.clear_runtime_cache()
    yield
    rt.clear_runtime_cache()


# -- choice and readout -----------------------------------------------------------------------


def test_resolve_runtime():
    assert rt.resolve_runtime("torch", "cpu") == "torch"
    assert rt.resolve_runtime("auto", torch.device("cuda")) == "torch"
    assert rt.resolve_runtime("auto", "mps") == "torch"
    assert rt.resolve_runtime("auto", "cpu") in (*INSTALLED, "torch")
    if rt.CPU_DEFAULT_RUNTIME in INSTALLED:
        assert rt.resolve_runtime("auto", "cpu") == rt.CPU_DEFAULT_RUNTIME
    assert rt.resolve_runtime("openvino", CPU) == "openvino"
    with pytest.raises(ValueError, match="runs on the CPU only"):
        rt.resolve_runtime("onnxruntime", torch.device("cuda", 0))
    with pytest.raises(ValueError, match="runtime must be one of"):
        rt.resolve_runtime("tensorrt", "cpu")
    assert rt.resolve_runtime("auto", "cpu", torch.bfloat16) == "torch"
    with pytest.raises(ValueError, match="float32 only"):
        rt.resolve_runtime("openvino", "cpu", torch.bfloat16)


def test_auto_without_graph_runtimes_is_torch(monkeypatch):
    monkeypatch.setattr(rt, "_installed", lambda name: name == "torch")
    assert rt.resolve_runtime("auto", "cpu") == "torch"
    assert rt.available_runtimes() == ["auto", "torch"]
    assert rt.describe_runtime("cpu") == "CPU, 1 thread"


def test_describe_runtime():
    assert rt.describe_runtime("cpu", "torch") == "CPU, 1 thread"
    assert rt.describe_runtime("cpu", "onnxruntime") == "CPU (ONNX Runtime), 1 thread"
    assert rt.describe_runtime(CPU, "openvino") == "CPU (OpenVINO), 1 thread"


# -- content hash -----------------------------------------------------------------------------


def test_fingerprint_follows_weights_and_config():
    model = _model()
    same = rt.model_fingerprint(model)
    assert rt.model_fingerprint(model.copy()) == same
    assert rt.model_fingerprint(_model(seed=1)) != same
    assert rt.model_fingerprint(_model("valid")) != same
    with torch.no_grad():
        model.net.head.bias[0] += 1e-3
    assert rt.model_fingerprint(model) != same
    changed = rt.model_fingerprint(model)
    model.net.inc[1].running_mean[0] += 1.0  # a buffer, not a parameter
    assert rt.model_fingerprint(model) != changed


# -- exported graphs --------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", INSTALLED)
@pytest.mark.parametrize(
    ("padding", "in_channels", "n_classes"), [("same", 1, 2), ("valid", 1, 2), ("same", 2, 3)]
)
def test_exported_network_matches_torch(runtime, padding, in_channels, n_classes):
    model = _model(padding, in_channels, n_classes)
    network = rt.exported_network(model, runtime)
    config = model.config
    for batch, h, w in ((1, 60, 60), (3, 100, 140)):
        shape = (config.admissible_size(h), config.admissible_size(w))
        x = torch.randn(batch, in_channels, *shape)
        with torch.inference_mode():
            expected = model.net(x)
            got = network(x)
        assert got.shape == expected.shape == (batch, n_classes, *map(config.output_size, shape))
        assert torch.allclose(got, expected, atol=ATOL)


@pytest.mark.parametrize("runtime", INSTALLED)
def test_interior_export_matches_the_cropped_torch_network(runtime):
    model = _model("same", in_channels=2, n_classes=3)
    config = model.config
    trim = interior_trim(config)
    network = rt.exported_network(model, runtime, trim=trim)
    assert network.trim == trim == config.halos
    assert rt.exported_network(model, runtime) is not network  # the whole network: another graph
    for batch, steps in ((1, (1, 1)), (3, (3, 5))):  # the smallest tile, and a larger one
        shape = tuple(2 * t + s * config.grid for t, s in zip(trim, steps, strict=True))
        x = torch.randn(batch, 2, *shape)
        with torch.inference_mode():
            expected = model.net(x)[..., trim[0] : -trim[0], trim[1] : -trim[1]]
            got = network(x)
        assert got.shape == expected.shape == (batch, 3, *(s * config.grid for s in steps))
        assert torch.allclose(got, expected, atol=ATOL)


@pytest.mark.parametrize("runtime", INSTALLED)
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_the_tile_engine_runs_the_interior(runtime, padding):
    model = _model(padding)
    runner = make_runner(model, CPU, False, "float32", runtime)
    assert runner.trim == (model.config.halos if padding == "same" else None)
    assert make_runner(model, CPU, False, "float32", "torch").trim is None


@pytest.mark.parametrize("runtime", INSTALLED)
def test_tiled_volume_with_a_graph_equals_one_torch_pass(runtime):
    torch.manual_seed(0)
    config = UNetConfig(depth=2, base_channels=2, spatial_dims=3, voxel_size=(2.5, 1.0, 1.0))
    model = TrainedModel(UNet(config).eval())
    volume = _image((11, 30, 27))
    halos = config.halos
    tile = config.admissible_shape((2 * halos[0] + 4, 2 * halos[1] + 12, 2 * halos[2] + 8))
    assert make_runner(model, CPU, False, "float32", runtime).trim == halos  # an interior
    for tta in (False, True):
        whole = predict_whole(model, volume, device="cpu", tta=tta, runtime="torch")
        tiled = run_to_end(
            predict_probabilities(model, volume, tile=tile, device="cpu", tta=tta, runtime=runtime)
        )
        np.testing.assert_allclose(tiled, whole, atol=ATOL, rtol=0)


@pytest.mark.parametrize("runtime", INSTALLED)
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_runner_with_exported_network_keeps_tta(runtime, padding):
    model = _model(padding)
    size = model.config.admissible_size(72)
    x = torch.randn(2, 1, size, size)
    graph = NetworkRunner(rt.exported_network(model, runtime), CPU, None, False, True)
    with torch.inference_mode():
        expected = make_runner(model, CPU, True, "float32", "torch")(x)
        got = graph(x)
    assert got.dtype == torch.float32
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= ATOL


@pytest.mark.parametrize("runtime", INSTALLED)
def test_exported_network_is_cached_by_content(runtime, monkeypatch):
    calls = []
    export = rt.export_onnx
    monkeypatch.setattr(rt, "export_onnx", lambda model, *a: calls.append(1) or export(model, *a))
    model = _model()
    first = rt.exported_network(model, runtime)
    assert rt.exported_network(model.copy(), runtime) is first
    assert len(calls) == 1
    with torch.no_grad():
        model.net.head.bias[1] -= 0.5  # trained further: a new export, never the stale one
    changed = rt.exported_network(model, runtime)
    assert changed is not first
    assert len(calls) == 2
    x = torch.randn(1, 1, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(changed(x), model.net(x), atol=ATOL)


def test_failed_export_falls_back_with_one_warning(monkeypatch, caplog):
    calls = []

    def broken(model, *args):
        calls.append(1)
        raise RuntimeError("exporter exploded\nwith a second line")

    monkeypatch.setattr(rt, "export_onnx", broken)
    model = _model()
    with caplog.at_level(logging.DEBUG, logger=rt.logger.name):
        assert rt.exported_network_or_none(model, "onnxruntime") is None
        assert rt.exported_network_or_none(model, "onnxruntime") is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "running the network in torch" in warnings[0].getMessage()
    assert "exporter exploded" in warnings[0].getMessage()
    assert "second line" not in warnings[0].getMessage()
    assert len(calls) == 1  # not tried again in the session


@pytest.mark.parametrize("runtime", INSTALLED)
def test_export_that_differs_from_torch_is_refused(runtime, monkeypatch):
    monkeypatch.setattr(rt, "EXPORT_TOLERANCE", -1.0)
    assert rt.exported_network_or_none(_model(), runtime) is None
    trim = interior_trim(_model().config)
    assert rt.exported_network_or_none(_model(), runtime, trim=trim) is None
    monkeypatch.setattr(rt, "EXPORT_TOLERANCE", 1e-4)
    rt.clear_runtime_cache()
    assert rt.exported_network_or_none(_model(), runtime) is not None


def test_missing_runtime_falls_back(monkeypatch, caplog):
    def no_module(graph, threads, smallest_input):
        raise ImportError("No module named 'openvino'")

    monkeypatch.setattr(rt, "_OpenVinoBackend", no_module)
    with caplog.at_level(logging.WARNING, logger=rt.logger.name):
        assert rt.exported_network_or_none(_model(), "openvino") is None
    assert "OpenVINO could not run it (ImportError" in caplog.text


def test_bad_runtime_names():
    with pytest.raises(ValueError, match="runtime must be one of"):
        rt.exported_network(_model(), "torch")
    with pytest.raises(ValueError, match="runtime must be one of"):
        rt.ExportedNetwork(b"", "tensorrt", 1, (1, 1, 4, 4))


@pytest.mark.parametrize("runtime", INSTALLED)
def test_allocation_failure_reads_as_out_of_memory(runtime):
    network = rt.ExportedNetwork(rt.export_onnx(_model()), runtime, 1, (1, 1, 4, 4))

    def fail(x):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : bad allocation")

    network._backend.run = fail
    with pytest.raises(RuntimeError) as info:
        network(torch.zeros(1, 1, 16, 16))
    assert is_out_of_memory(info.value)


@pytest.mark.parametrize("runtime", INSTALLED)
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_release_memory_keeps_results(runtime, padding):
    model = _model(padding)
    network = rt.exported_network(model, runtime)
    size = model.config.admissible_size(90)
    x = torch.randn(2, 1, size, size)
    with torch.inference_mode():
        before = network(x)
        network.release_memory()
        network.release_memory()
        after = network(x)
    assert torch.equal(before, after)


@pytest.mark.parametrize("runtime", INSTALLED)
def test_release_memory_waits_for_a_pause(runtime, monkeypatch):
    model = _model("same")
    network = rt.exported_network(model, runtime)
    released = []
    monkeypatch.setattr(network._backend, "release", lambda: released.append(True))
    x = torch.randn(1, 1, model.config.admissible_size(40), model.config.admissible_size(40))
    with torch.inference_mode():
        network(x)
        network.release_memory(delay=60.0)  # a prediction in a row cancels it
        assert network.release_pending
        network(x)
        assert not network.release_pending and released == []
        network.release_memory(delay=0.01)  # a pause: the timer gives the memory back
        timer = network._timer
        timer.join()
        assert released == [True] and not network.release_pending
        network.release_memory(delay=0)  # now
    assert released == [True, True]


# -- behind the tile engine -------------------------------------------------------------------


def _image(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 1000).astype(np.uint16)


def _tile(model: TrainedModel, stride: int) -> int:
    return model.config.admissible_size(2 * model.config.halo + stride)


@pytest.mark.parametrize("runtime", INSTALLED)
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_tiled_graph_equals_one_torch_pass(runtime, padding):
    model = _model(padding)
    image = _image((2, 37, 53))
    for tta in (False, True):
        whole = [predict_whole(model, im, device="cpu", tta=tta, runtime="torch") for im in image]
        for tile, batch in ((_tile(model, 12), 3), (None, None)):
            tiled = run_to_end(
                predict_probabilities(
                    model,
                    image,
                    tile=tile,
                    batch_size=batch,
                    device="cpu",
                    tta=tta,
                    runtime=runtime,
                )
            )
            np.testing.assert_allclose(tiled, np.stack(whole), atol=ATOL, rtol=0)
        one = predict_whole(model, image[0], device="cpu", tta=tta, runtime=runtime)
        np.testing.assert_allclose(one, whole[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("runtime", INSTALLED)
def test_segment_with_a_graph_runtime(runtime):
    model = _model("same", in_channels=2, n_classes=3)
    image = _image((2, 40, 36))
    args = {"channel_axis": 0, "tile": _tile(model, 12), "device": "cpu"}
    keep_all = {"min_confidence": 0.0}  # an untrained network: no object is confident
    expected = run_to_end(segment(model, image, runtime="torch", **args, **keep_all))
    labels = run_to_end(segment(model, image, runtime=runtime, **args, **keep_all))
    probs = run_to_end(predict_probabilities(model, image, runtime=runtime, **args))
    reference = run_to_end(predict_probabilities(model, image, runtime="torch", **args))
    np.testing.assert_allclose(probs, reference, atol=ATOL, rtol=0)
    assert labels.shape == expected.shape == (40, 36)
    assert labels.max() > 0
    np.testing.assert_array_equal(labels, expected)  # no probability lies within ATOL of a cut


def test_auto_runs_the_default_graph_on_the_cpu():
    model = _model()
    runner = make_runner(model, CPU, False, "auto")
    if rt.CPU_DEFAULT_RUNTIME in INSTALLED:
        assert runner.runtime == rt.CPU_DEFAULT_RUNTIME
        assert isinstance(runner.net, rt.ExportedNetwork)
    assert make_runner(model, CPU, False, "auto", "torch").runtime == "torch"
    assert make_runner(model, CPU, False, "bfloat16").runtime == "torch"
    with pytest.raises(ValueError, match="float32 only"):
        make_runner(model, CPU, False, "bfloat16", "onnxruntime")
    with pytest.raises(ValueError, match="runtime must be one of"):
        run_to_end(predict_probabilities(model, _image((8, 8)), device="cpu", runtime="tvm"))


def test_auto_runs_other_networks_in_torch():
    class Custom(nn.Module):  # a forward that branches on values: an export would not follow
        def __init__(self, config):
            super().__init__()
            self.config, self.head = config, nn.Conv2d(1, 2, 1)

        def forward(self, x):
            return self.head(x) if bool(x.mean() > 0) else -self.head(x)

    model = TrainedModel(Custom(UNetConfig(depth=2, base_channels=4)))
    assert make_runner(model, CPU, False, "auto").runtime == "torch"


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_predict_falls_back_to_torch_when_export_fails(padding, monkeypatch, caplog):
    def broken(model, *args):
        raise RuntimeError("no exporter here")

    monkeypatch.setattr(rt, "export_onnx", broken)
    model = _model(padding)
    image = _image((37, 53))
    whole = predict_whole(model, image, device="cpu", runtime="torch")
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            tiled = run_to_end(
                predict_probabilities(
                    model, image, tile=_tile(model, 12), device="cpu", runtime="onnxruntime"
                )
            )
            np.testing.assert_allclose(tiled, whole, atol=ATOL, rtol=0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "running the network in torch: ONNX Runtime could not run it "
        "(RuntimeError: no exporter here)"
    ]


@pytest.mark.parametrize("runtime", INSTALLED)
def test_one_export_for_two_predictions(runtime, monkeypatch):
    calls = []
    export = rt.export_onnx
    monkeypatch.setattr(rt, "export_onnx", lambda model, *a: calls.append(1) or export(model, *a))
    model = _model("valid")
    first = run_to_end(
        predict_probabilities(model, _image((30, 41)), device="cpu", runtime=runtime)
    )
    other = run_to_end(
        predict_probabilities(model, _image((2, 64, 50)), tile=96, device="cpu", runtime=runtime)
    )
    assert first.shape == (30, 41) and other.shape == (2, 64, 50)
    assert len(calls) == 1
