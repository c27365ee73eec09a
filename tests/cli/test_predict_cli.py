"""Tests for ``napari-unet predict``."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_unet.cli import batch, main
from napari_unet.core.inference import predict_probabilities, segment
from napari_unet.core.model import TrainedModel, UNet, UNetConfig
from napari_unet.core.model_files import save_model
from napari_unet.core.progress import run_to_end
from napari_unet.sample_data import make_touching_cells

TILE = 64  # several tiles per slice of the test images


@pytest.fixture(scope="module")
def model(stack) -> TrainedModel:
    torch.manual_seed(0)
    net = UNet(UNetConfig(depth=2, base_channels=4))
    net.train()
    with torch.no_grad():
        net(torch.randn(2, 1, 48, 48))
    model = TrainedModel(net.eval(), gap=1, training={"min_size": 3, "min_confidence": 0.0})
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


def test_predict_min_confidence(tmp_path, model, model_path, stack, capsys):
    src, out = tmp_path / "in.npy", tmp_path / "labels.npy"
    np.save(src, stack[0])
    argv = ["predict", str(model_path), str(src), "-o", str(out), "--tile", str(TILE)]
    all_objects = _segment(model, stack[0])  # the model records 0: every object kept
    peaks = _segment(model, stack[0], min_confidence=0.0)
    prob = run_to_end(predict_probabilities(model, stack[0], tile=TILE, device="cpu"))
    cut = float(np.median([prob[all_objects == i].max() for i in range(1, all_objects.max() + 1)]))
    assert main([*argv, "--min-confidence", str(cut), "--device", "cpu"]) == 0
    expected = _segment(model, stack[0], min_confidence=cut)
    np.testing.assert_array_equal(np.load(out), expected)
    np.testing.assert_array_equal(peaks, all_objects)
    assert 0 < expected.max() < all_objects.max()  # the objects without a core that sure go
    assert main([*argv, "--min-confidence", "1"]) == 2
    assert "--min-confidence must be in [0, 1), got 1.0" in capsys.readouterr().err


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


# ----------------------------------------------------------------------------------------------
# Channel layout from the model's training settings
# ----------------------------------------------------------------------------------------------


def _model_with_settings(in_channels: int, **settings) -> TrainedModel:
    torch.manual_seed(1)
    net = UNet(UNetConfig(in_channels=in_channels, depth=2, base_channels=4)).eval()
    return TrainedModel(
        net, gap=1, training={"min_size": 3, "min_confidence": 0.0, "settings": settings}
    )


def _probabilities(model, image, **kwargs):
    return run_to_end(predict_probabilities(model, image, tile=TILE, device="cpu", **kwargs))


def test_channel_layout_from_the_model(tmp_path, stack):
    model = _model_with_settings(2, channel_axis=0, rgb=False)
    path = save_model(model, tmp_path / "two.pt")
    two = stack[:2]  # (C, Y, X), as in training
    np.save(tmp_path / "two.npy", two)
    prob = tmp_path / "p.npy"
    argv = ["predict", str(path), str(tmp_path / "two.npy"), "-o", str(tmp_path / "l.tif")]
    argv += ["--probabilities", str(prob), "--tile", str(TILE), "--device", "cpu"]
    assert main(argv) == 0  # no --channel-axis: the model's
    np.testing.assert_array_equal(np.load(prob), _probabilities(model, two, channel_axis=0))

    # A stack (Z, C, Y, X) does not have the training layout: the option is needed, and wins.
    zc = np.stack([two, two[:, ::-1], two[::-1]])  # (3, 2, Y, X)
    np.save(tmp_path / "zc.npy", zc)
    argv[2] = str(tmp_path / "zc.npy")
    assert main(argv) == 2
    assert main([*argv, "--channel-axis", "1"]) == 0
    np.testing.assert_array_equal(np.load(prob), _probabilities(model, zc, channel_axis=1))


def test_rgb_from_the_model(tmp_path, stack):
    model = _model_with_settings(3, channel_axis=None, rgb=True)
    path = save_model(model, tmp_path / "rgb.pt")
    rgb = np.stack([stack[0] // 257] * 3, axis=-1).astype(np.uint8)
    rgb[..., 1] = rgb[::-1, :, 1]
    np.save(tmp_path / "rgb.npy", rgb)
    prob = tmp_path / "p.npy"
    argv = ["predict", str(path), str(tmp_path / "rgb.npy"), "-o", str(tmp_path / "l.tif")]
    assert main([*argv, "--probabilities", str(prob), "--tile", str(TILE), "--device", "cpu"]) == 0
    np.testing.assert_array_equal(np.load(prob), _probabilities(model, rgb, rgb=True))


# ----------------------------------------------------------------------------------------------
# Folder batches
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path, stack):
    """Three good images, a corrupt TIFF and an image of the wrong shape."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i, name in enumerate(["a.tif", "b.npy", "c.tif"]):
        path = folder / name
        np.save(path, stack[i]) if name.endswith("npy") else tifffile.imwrite(path, stack[i])
    (folder / "broken.tif").write_bytes(b"this is not a TIFF file")
    np.save(folder / "wrong.npy", np.zeros((2, 2, 2, 70, 60), np.uint16))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_a_folder_with_a_corrupt_file(tmp_path, model, model_path, stack, folder, capsys):
    out = tmp_path / "out"
    argv = ["predict", str(model_path), str(folder), "--out", str(out), "--tile", str(TILE)]
    assert main([*argv, "--device", "cpu"]) == 1  # some failed
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["a_labels.tif", "b_labels.tif", "c_labels.tif"]
    for i, name in enumerate("abc"):
        np.testing.assert_array_equal(
            tifffile.imread(out / f"{name}_labels.tif"), _segment(model, stack[i])
        )
    errors = [line for line in captured.err.splitlines() if ": error: " in line]
    assert len(errors) == 2
    assert any("broken.tif: error: cannot read" in line and "TIFF" in line for line in errors)
    assert any("wrong.npy: error:" in line for line in errors)
    assert "5 image(s)" in captured.out and "3 written, 0 skipped, 2 failed" in captured.out

    # Again with --skip-existing, the broken files gone: nothing is redone.
    (folder / "broken.tif").unlink()
    (folder / "wrong.npy").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main([*argv, "--device", "cpu", "--skip-existing"]) == 0
    assert "0 written, 3 skipped, 0 failed" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_files_and_glob_patterns(tmp_path, model, model_path, stack, folder, capsys):
    out = tmp_path / "out"
    argv = ["predict", str(model_path), str(folder / "*.tif"), str(folder / "b.npy")]
    argv += ["--out", str(out), "--probabilities", str(out), "--tile", str(TILE)]
    assert main([*argv, "--device", "cpu"]) == 1  # broken.tif matches the pattern
    assert sorted(p.name for p in out.iterdir()) == [
        "a_labels.tif",
        "a_probabilities.tif",
        "b_labels.tif",
        "b_probabilities.tif",
        "c_labels.tif",
        "c_probabilities.tif",
    ]
    np.testing.assert_array_equal(
        tifffile.imread(out / "c_probabilities.tif"), _probabilities(model, stack[2])
    )
    assert "3 written, 0 skipped, 1 failed" in capsys.readouterr().out


def test_batch_usage_errors(tmp_path, model_path, folder, capsys):
    base = ["predict", str(model_path)]
    assert main([*base, str(folder), "--out", str(tmp_path / "x.tif")]) == 2
    assert "--out must be a folder when several inputs" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "none*.tif"), "--out", str(tmp_path / "o")]) == 2
    assert "no image in pattern" in capsys.readouterr().err
    assert main([*base, str(folder)]) == 2
    assert "say where the labels go" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# OME-Zarr
# ----------------------------------------------------------------------------------------------


def _ome_zarr(path, data, axes):
    writer = pytest.importorskip("ome_zarr.writer")
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    from ome_zarr.format import FormatV04

    writer.write_image(data, root, axes=axes, fmt=FormatV04(), scale_factors=(2,))
    return path


def _ome_labels(path, name):
    from napari_unet.cli.ngff import label_names

    assert name in label_names(path)
    group = zarr.open_group(str(path / "labels" / name), mode="r")
    return np.asarray(group[sorted(group.array_keys())[0]])


def test_ome_zarr_labels_into_the_image(tmp_path, model, model_path, stack, capsys):
    path = _ome_zarr(tmp_path / "cells.ome.zarr", stack[None], "czyx")  # one channel
    common = ["--tile", str(TILE), "--device", "cpu"]
    assert main(["predict", str(model_path), str(path), "--labels-into", *common]) == 0
    assert "cells.ome.zarr/labels/unet" in capsys.readouterr().out
    labels = _ome_labels(path, "unet")
    assert labels.shape == (1, 3, 70, 60)
    np.testing.assert_array_equal(labels[0], _segment(model, stack))

    # --out naming the input itself, and a name of one's own
    assert main(["predict", str(model_path), str(path), "--out", str(path), *common]) == 0
    assert main(["predict", str(model_path), str(path), "--labels-into", "mine", *common]) == 0
    from napari_unet.cli.ngff import label_names

    assert label_names(path) == ["unet", "mine"]

    # A batch of OME-Zarr images to a folder: <name>_labels.zarr
    out = tmp_path / "out"
    assert main(["predict", str(model_path), str(path), "--out", str(out), *common]) == 0
    written = zarr.open_array(str(out / "cells_labels.zarr"), mode="r")
    np.testing.assert_array_equal(written[:], _segment(model, stack))


def test_labels_into_needs_ome_zarr(tmp_path, model_path, stack, capsys):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, stack[0])
    assert main(["predict", str(model_path), str(src), "--labels-into"]) == 2
    assert "is not an OME-Zarr image" in capsys.readouterr().err


def test_runtime_option_gives_the_same_labels(tmp_path) -> None:
    """--runtime torch and onnxruntime give the same probabilities (to 1e-4)."""
    image, _ = make_touching_cells((64, 64), n_cells=5, seed=3)
    torch.manual_seed(0)
    model = TrainedModel(UNet(UNetConfig(depth=2, base_channels=4)))
    save_model(model, tmp_path / "m.pt")
    tifffile.imwrite(tmp_path / "img.tif", image)
    outs = {}
    for runtime in ("torch", "onnxruntime"):
        out = tmp_path / f"{runtime}.tif"
        code = main(
            [
                "predict",
                str(tmp_path / "m.pt"),
                str(tmp_path / "img.tif"),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--runtime",
                runtime,
                "--probabilities",
                str(tmp_path / f"p_{runtime}.tif"),
            ]
        )
        assert code == 0
        outs[runtime] = tifffile.imread(tmp_path / f"p_{runtime}.tif")
    np.testing.assert_allclose(outs["torch"], outs["onnxruntime"], atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Linking slice objects into 3D objects
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_link_slices_gives_one_label_per_object_across_z(
    tmp_path, model, model_path, stack, suffix, capsys
):
    from napari_unet.core.inference import link_slices

    image = np.stack([stack[0]] * 3)  # the same cells in three slices
    src, out = tmp_path / "in.npy", tmp_path / f"labels{suffix}"
    np.save(src, image)
    argv = ["predict", str(model_path), str(src), "-o", str(out), "--tile", str(TILE)]
    assert main([*argv, "--device", "cpu", "--link-slices"]) == 0
    labels = tifffile.imread(out) if suffix == ".tif" else zarr.open_array(str(out), mode="r")[:]
    unlinked = _segment(model, image)
    n = len(np.unique(unlinked[0])) - 1
    assert n >= 2 and unlinked.max() == 3 * n  # unique per slice before linking
    np.testing.assert_array_equal(labels, link_slices(unlinked))
    np.testing.assert_array_equal(labels[0], labels[2])  # one label through the stack
    assert labels.max() == n
    assert f"int32, {n} objects" in capsys.readouterr().out
    assert main([*argv, "--device", "cpu", "--link-slices", "0.9"]) == 0  # a threshold given


def test_link_slices_bad_values_exit_2(tmp_path, model_path, stack, capsys):
    src = tmp_path / "in.npy"
    np.save(src, stack)
    argv = ["predict", str(model_path), str(src), "-o", str(tmp_path / "l.tif")]
    assert main([*argv, "--link-slices", "0"]) == 2
    assert "--link-slices must be in (0, 1], got 0.0" in capsys.readouterr().err
    assert main([*argv, "--link-slices", "1.5"]) == 2
    assert not (tmp_path / "l.tif").exists()


def test_link_slices_is_refused_for_a_3d_model(tmp_path, stack, capsys):
    config = UNetConfig(spatial_dims=3, depth=2, base_channels=4, voxel_size=(2.0, 1.0, 1.0))
    path = save_model(TrainedModel(UNet(config).eval(), gap=1), tmp_path / "m3.pt")
    src = tmp_path / "in.npy"
    np.save(src, stack)
    argv = ["predict", str(path), str(src), "-o", str(tmp_path / "l.tif"), "--link-slices"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "m3.pt is a 3D model, whose objects are 3D already" in err
