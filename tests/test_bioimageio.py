"""bioimage.io model packages: export, ``bioimageio test`` for every weight format, round trip."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

pytest.importorskip("bioimageio.core")

from napari_unet import cli
from napari_unet.bioimageio import (
    export_package,
    load_model_or_package,
    load_package,
)
from napari_unet.bioimageio.architecture import architecture_source
from napari_unet.bioimageio.check import check_package
from napari_unet.bioimageio.export import UNET_DOI, package_test_input
from napari_unet.core.inference import predict_whole
from napari_unet.core.model import TrainedModel
from napari_unet.core.model_files import ModelFileError, save_model
from napari_unet.sample_data import make_touching_cells
from tiny_models import file_model

FORMATS = ("onnx", "pytorch_state_dict", "torchscript")


def _model(seed: int = 0, **config) -> TrainedModel:
    training = {
        "settings": {"preset": "fast", "rgb": False, "channel_axis": None},
        "summary": {"validation": 0.75, "best_iteration": 40, "iterations_done": 50},
    }
    return file_model(training, seed, **config)


@pytest.fixture(scope="module")
def image():
    return make_touching_cells((75, 70), 8, seed=3)[0]


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def package(tmp_path_factory, model, image):
    path = tmp_path_factory.mktemp("bioimageio") / "tiny.zip"
    return export_package(
        model, path, test_image=image, name="tiny test U-Net", authors=["A. Tester"]
    )


def test_package_passes_bioimageio_test_for_every_weight_format(package):
    result = check_package(package)
    assert result.problems == []
    assert result.passed
    assert result.weight_formats == FORMATS


def test_package_description(package, model):
    from bioimageio.spec import load_model_description

    descr = load_model_description(package, perform_io_checks=False)
    assert descr.format_version.startswith("0.5")
    assert descr.name == "tiny test U-Net"
    assert [a.name for a in descr.authors] == ["A. Tester"]
    assert str(descr.license) == "CC-BY-4.0"
    assert [str(c.doi) for c in descr.cite] == [UNET_DOI]
    assert descr.documentation is not None and len(descr.covers) == 1
    (inp,) = descr.inputs
    assert [str(a.id) for a in inp.axes] == ["batch", "channel", "y", "x"]
    config = model.config
    min_size = 2 * config.halo + config.grid
    assert (inp.axes[2].size.min, inp.axes[2].size.step) == (min_size, config.grid)
    scale = [p for p in inp.preprocessing if p.id == "scale_range"]
    assert len(scale) == 1
    kwargs = scale[0].kwargs
    assert (kwargs.min_percentile, kwargs.max_percentile) == (2.0, 99.5)
    assert [str(a) for a in kwargs.axes] == ["y", "x"]  # per image and channel
    (out,) = descr.outputs
    assert [a.halo for a in out.axes[2:]] == [config.halo, config.halo]
    record = descr.config.model_extra["napari_unet"]
    assert record["config"] == config.to_dict() and record["gap"] == 2
    assert record["training"]["summary"]["best_iteration"] == 40


def test_test_tensors_come_from_the_image_and_the_model(package, model, image):
    with zipfile.ZipFile(package) as archive:
        test_input = np.load(archive.open("test_input.npy"))
        test_output = np.load(archive.open("test_output.npy"))
    # The largest centred crop of admissible size 52 + 4 n (n = 5 and 4).
    assert test_input.shape == (1, 1, 72, 68)
    np.testing.assert_array_equal(test_input[0, 0], image[1:73, 1:69].astype(np.float32))
    assert test_output.shape == (1, 1, 72, 68) and test_output.dtype == np.float32
    # The whole-image probability of napari-unet's own inference, away from the zero-padded
    # border that the package's halo excludes.
    prob = predict_whole(model, test_input[0, 0], device="cpu")
    h = model.config.halo
    np.testing.assert_allclose(test_output[0, 0, h:-h, h:-h], prob[h:-h, h:-h], atol=1e-5)


def test_round_trip_gives_identical_probabilities(package, model, image):
    loaded = load_package(package)
    assert loaded.config == model.config
    assert loaded.normalization == model.normalization and loaded.gap == model.gap
    assert loaded.training == model.training
    for key, value in model.net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[key], value), key
    expected = predict_whole(model, image, device="cpu")
    np.testing.assert_array_equal(predict_whole(loaded, image, device="cpu"), expected)


def test_load_model_or_package_takes_both(package, model, tmp_path):
    pt = save_model(model, tmp_path / "model.pt")
    for path in (pt, package):
        loaded = load_model_or_package(path)
        assert loaded.config == model.config


def test_architecture_file_is_self_contained(model):
    import sys
    import types

    module = types.ModuleType("shipped_architecture")
    sys.modules["shipped_architecture"] = module  # dataclasses look their module up
    try:
        exec(compile(architecture_source(), "unet_architecture.py", "exec"), module.__dict__)
    finally:
        del sys.modules["shipped_architecture"]
    assert "from napari_unet" not in architecture_source()
    assert "import napari_unet" not in architecture_source()
    net = module.ForegroundUNet(**model.config.to_dict())
    net.load_state_dict(model.net.state_dict(), strict=True)
    net.eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        logits = model.net(x)
        expected = torch.sigmoid(logits[:, 1:2] - logits[:, 0:1])
        torch.testing.assert_close(net(x), expected, rtol=0, atol=0)


def test_valid_padding_package(tmp_path, image):
    model = _model(padding="valid", batch_norm=False)
    path = export_package(model, tmp_path / "valid.zip", test_image=image, weight_formats=["onnx"])
    from bioimageio.spec import load_model_description

    descr = load_model_description(path, perform_io_checks=False)
    y = descr.outputs[0].axes[2]
    assert y.size.offset == -2 * model.config.halo and not hasattr(y, "halo")
    assert descr.weights.torchscript is None and descr.weights.onnx is not None
    result = check_package(path)
    assert result.passed, result.problems
    assert result.weight_formats == ("onnx", "pytorch_state_dict")


def test_not_a_package_is_a_clear_error(tmp_path):
    text = tmp_path / "notes.zip"
    text.write_text("not a zip")
    with pytest.raises(ValueError, match=r"not a bioimage\.io model package"):
        load_package(text)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("hello.txt", "hi")
    with pytest.raises(ValueError, match=r"not a readable bioimage\.io model package"):
        load_package(other)
    with pytest.raises(FileNotFoundError):
        load_package(tmp_path / "missing.zip")


def test_foreign_package_is_a_clear_error(package, tmp_path):
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(foreign, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "rdf.yaml":
                data = data.replace(b"\n  napari_unet:\n", b"\n  another_tool:\n")
            dst.writestr(name, data)
    with pytest.raises(ModelFileError, match="napari-unet did not export"):
        load_package(foreign)
    with pytest.raises(ValueError, match="did not export"):
        load_model_or_package(foreign)


def test_bad_export_arguments(model, image, tmp_path):
    with pytest.raises(ValueError, match=r"\.zip"):
        export_package(model, tmp_path / "model.pt", test_image=image)
    with pytest.raises(ValueError, match="package name"):
        export_package(model, tmp_path / "a.zip", test_image=image, name="a/b")
    with pytest.raises(ValueError, match="weight formats"):
        export_package(model, tmp_path / "a.zip", test_image=image, weight_formats=["keras"])
    with pytest.raises(ValueError, match="license"):
        export_package(model, tmp_path / "a.zip", test_image=image, license="MIT")
    with pytest.raises(ValueError, match="at least 52x52"):
        package_test_input(model, image[:40, :40])
    with pytest.raises(ValueError, match="3 channel"):
        package_test_input(model, np.zeros((3, 64, 64)), channel_axis=0)
    assert not (tmp_path / "a.zip").exists()


@pytest.fixture
def export_command(monkeypatch):
    """Only the ``export`` sub-command (the lead registers it in ``cli.COMMANDS``)."""
    monkeypatch.setattr(cli, "COMMANDS", {"export": "export"})


def test_export_cli(export_command, model, image, tmp_path, capsys):
    import tifffile

    pt = save_model(model, tmp_path / "model.pt")
    tifffile.imwrite(tmp_path / "image.tif", image)
    out = tmp_path / "exported.zip"
    argv = ["export", str(pt), "--out", str(out), "--test-image", str(tmp_path / "image.tif")]
    assert cli.main([*argv, "--no-check", "--authors", "A", "B", "--formats"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert load_package(out).config == model.config
    with zipfile.ZipFile(out) as archive:  # --formats alone: pytorch_state_dict only
        assert {n for n in archive.namelist() if "weights" in n} == {"weights.pt"}
    assert cli.main(["export", str(pt), "--out", str(tmp_path / "x.zip"), "--name", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "package name" in err
    assert cli.main(["export", str(pt), "--out", str(tmp_path / "x.onnx")]) == 2
    assert ".zip" in capsys.readouterr().err
