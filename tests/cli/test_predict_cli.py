"""Tests for ``napari-unet predict``."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_unet import cli
from napari_unet.cli import batch, main
from napari_unet.core.inference import predict_probabilities, segment
from napari_unet.core.model import TrainedModel, UNet, UNetConfig
from napari_unet.core.model_files import save_model
from napari_unet.core.progress import run_to_end
from napari_unet.sample_data import make_touching_cells

TILE = 64  # several tiles per slice of the test images


@pytest.fixture(autouse=True)
def _existing_commands(monkeypatch):
    """Build the parser from the sub-command modules present (others may be in the works)."""
    present = {
        name: module
        for name, module in cli.COMMANDS.items()
        if importlib.util.find_spec(f"napari_unet.cli.{module}") is not None
    }
    assert "predict" in present
    monkeypatch.setattr(cli, "COMMANDS", present)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add waiting on a busy machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(stack) -> TrainedModel:
    torch.manual_seed(0)
    net = UNet(UNetConfig(depth=2, base_channels=4))
    net.train()
    with torch.no_grad():
        net(torch.randn(2, 1, 48, 48))
    model = TrainedModel(net.eval(), gap=1, training={"min_size": 3})
    # Centre the untrained network's output on 0.5, so that there are objects to label.
    median = float(np.median(run_to_end(predict_probabilities(model, stack[0], device="cpu"))))
    with torch.no_grad():
        net.head.bias[1] -= float(np.log(median / (1 - median)))
    return model


@pytest.fixture
def model_path(tmp_path, model):
    return save_model(model, tmp_path / "model.pt")


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    return np.stack([make_touching_cells((70, 60), 6, seed=s)[0] for s in range(3)])


def _segment(model, image, **kwargs):
    return run_to_end(segment(model, image, tile=TILE, device="cpu", **kwargs))


def test_predict_tif_with_probabilities(tmp_path, model, model_path, stack, capsys):
    src, out, prob = tmp_path / "in.tif", tmp_path / "labels.tif", tmp_path / "prob.npy"
    tifffile.imwrite(src, stack)
    argv = ["predict", str(model_path), str(src), "--out", str(out), "--probabilities", str(prob)]
    assert main([*argv, "--tile", str(TILE), "--device", "cpu"]) == 0
    labels = tifffile.imread(out)
    assert labels.dtype == np.int32 and labels.shape == stack.shape
    expected = _segment(model, stack)  # min_size from the model (3)
    assert expected.max() > 3
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(
        np.load(prob), run_to_end(predict_probabilities(model, stack, tile=TILE, device="cpu"))
    )
    assert f"{int(expected.max())} objects" in capsys.readouterr().out


def test_predict_options(tmp_path, model, model_path, stack):
    src, out = tmp_path / "in.npy", tmp_path / "labels.npy"
    np.save(src, stack[0])
    argv = ["predict", str(model_path), str(src), "-o", str(out), "--tile", str(TILE)]
    argv += ["--threshold", "0.45", "--min-size", "8", "--tta", "--batch", "2"]
    assert main([*argv, "--device", "cpu"]) == 0
    expected = _segment(model, stack[0], threshold=0.45, min_size=8, tta=True, batch_size=2)
    np.testing.assert_array_equal(np.load(out), expected)


def _write_zarr(path, data, chunks):
    array = zarr.open_array(str(path), mode="w", shape=data.shape, chunks=chunks, dtype=data.dtype)
    array[:] = data
    return array


def test_predict_zarr_lazily_to_zarr(tmp_path, model, model_path, stack):
    src = tmp_path / "in.zarr"
    _write_zarr(src, stack, (1, 32, 32))
    out, prob = tmp_path / "labels.zarr", tmp_path / "prob.zarr"
    out.mkdir()  # an existing output is replaced
    argv = ["predict", str(model_path), str(src), "--out", str(out), "--probabilities", str(prob)]
    assert main([*argv, "--tile", str(TILE), "--device", "cpu"]) == 0
    labels = zarr.open_array(str(out), mode="r")
    assert labels.dtype == np.int32 and labels.chunks[0] == 1
    np.testing.assert_array_equal(labels[:], _segment(model, stack))
    np.testing.assert_array_equal(
        zarr.open_array(str(prob), mode="r")[:],
        run_to_end(predict_probabilities(model, stack, tile=TILE, device="cpu")),
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "in.zarr",
        "labels.zarr",
        "model.pt",
        "prob.zarr",
    ]


def test_predict_on_a_dask_cluster_equals_local(tmp_path, model_path, stack, monkeypatch):
    distributed = pytest.importorskip("distributed")
    monkeypatch.setattr(batch, "CHUNK", 32)  # several chunks (tasks) per slice
    src = tmp_path / "in.zarr"
    _write_zarr(src, stack, (1, 32, 32))
    local, remote = tmp_path / "local.zarr", tmp_path / "remote.tif"
    prob_local, prob_remote = tmp_path / "pl.npy", tmp_path / "pr.zarr"
    common = ["--tile", str(TILE), "--device", "cpu"]
    assert (
        main(
            [
                "predict",
                str(model_path),
                str(src),
                "-o",
                str(local),
                "--probabilities",
                str(prob_local),
                *common,
            ]
        )
        == 0
    )
    with distributed.LocalCluster(
        processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        assert (
            main(
                [
                    "predict",
                    str(model_path),
                    str(src),
                    "-o",
                    str(remote),
                    "--probabilities",
                    str(prob_remote),
                    "--scheduler",
                    cluster.scheduler_address,
                    *common,
                ]
            )
            == 0
        )
    np.testing.assert_allclose(
        zarr.open_array(str(prob_remote), mode="r")[:], np.load(prob_local), atol=1e-6, rtol=0
    )
    local_labels = zarr.open_array(str(local), mode="r")
    assert local_labels.chunks == (1, 32, 32)
    np.testing.assert_array_equal(tifffile.imread(remote), local_labels[:])


def test_bad_input_exits_2(tmp_path, model_path, capsys):
    rgb = tmp_path / "rgb.npy"
    np.save(rgb, np.zeros((20, 20, 3), np.uint8))
    out = tmp_path / "labels.tif"
    assert main(["predict", str(model_path), str(rgb), "-o", str(out), "--rgb"]) == 2
    assert "channel" in capsys.readouterr().err
    assert main(["predict", str(model_path), str(rgb), "-o", str(tmp_path / "x.png")]) == 2
    assert "--out must end in" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "no.pt"), str(rgb), "-o", str(out)]) == 2
    assert "no such model file" in capsys.readouterr().err
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((20, 20), np.nan, np.float32))
    assert main(["predict", str(model_path), str(nan), "-o", str(out)]) == 2
    assert "NaN" in capsys.readouterr().err
    assert main(["predict", str(model_path), str(nan), "-o", str(out), "--tile", "0"]) == 2
    assert "--tile" in capsys.readouterr().err
    assert not out.exists()
