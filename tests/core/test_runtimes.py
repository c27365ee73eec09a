"""Tests of the runtimes behind the tile engine: torch, ONNX Runtime, OpenVINO (tiny networks)."""

from __future__ import annotations

import logging

import pytest
import torch

from napari_unet.core.inference import runtimes as rt
from napari_unet.core.inference.runner import NetworkRunner, is_out_of_memory, make_runner
from napari_unet.core.model import TrainedModel, UNet, UNetConfig

ATOL = 1e-4
CPU = torch.device("cpu")
INSTALLED = [r for r in rt.GRAPH_RUNTIMES if r in rt.available_runtimes()]


def _model(padding: str = "same", in_channels: int = 1, n_classes: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    config = UNetConfig(
        in_channels=in_channels,
        n_classes=n_classes,
        depth=2,
        base_channels=4,
        padding=padding,
        batch_norm=padding == "same",
    )
    net = UNet(config)
    if config.batch_norm:  # non-trivial running statistics, used in eval mode
        net.train()
        with torch.no_grad():
            net(torch.randn(2, in_channels, 64, 64) * 2 + 1)
    return TrainedModel(net.eval())


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_runner_with_exported_network_keeps_tta(runtime, padding):
    model = _model(padding)
    size = model.config.admissible_size(72)
    x = torch.randn(2, 1, size, size)
    graph = NetworkRunner(rt.exported_network(model, runtime), CPU, None, False, True)
    with torch.inference_mode():
        expected = make_runner(model, CPU, True, "float32")(x)
        got = graph(x)
    assert got.dtype == torch.float32
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= ATOL


@pytest.mark.parametrize("runtime", INSTALLED)
def test_exported_network_is_cached_by_content(runtime, monkeypatch):
    calls = []
    export = rt.export_onnx
    monkeypatch.setattr(rt, "export_onnx", lambda model: calls.append(1) or export(model))
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

    def broken(model):
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
