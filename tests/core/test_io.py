from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from napari_unet import __version__
from napari_unet.core.model import TrainedModel
from napari_unet.core.model_files import (
    FORMAT,
    FORMAT_VERSION,
    ModelFileError,
    load_model,
    save_model,
)
from tiny_models import file_model


def _model(seed: int = 0, **config) -> TrainedModel:
    training = {"iterations": 7, "loss": [0.5, np.float32(0.25)], "preset": "fast"}
    return file_model(training, seed, **config)


def test_round_trip_gives_identical_outputs(tmp_path):
    model = _model(in_channels=2)
    path = save_model(model, tmp_path / "model.pt")
    assert path == tmp_path / "model.pt"
    loaded = load_model(path)
    assert loaded.config == model.config
    assert loaded.normalization == model.normalization
    assert loaded.gap == 2
    assert loaded.training == {"iterations": 7, "loss": [0.5, 0.25], "preset": "fast"}
    assert not loaded.net.training  # evaluation mode
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.net(x), loaded.net(x))
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT
    assert raw["format_version"] == FORMAT_VERSION
    assert raw["package_version"] == __version__


def test_valid_padding_round_trip(tmp_path):
    model = _model(padding="valid", batch_norm=False, dropout=0.5)
    loaded = load_model(save_model(model, tmp_path / "m.pt"))
    n = model.config.admissible_size(40)
    x = torch.randn(1, 1, n, n)
    with torch.no_grad():
        assert torch.equal(model.net(x), loaded.net(x))


def test_save_replaces_atomically_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "model.pt"
    save_model(_model(seed=1), path)
    save_model(_model(seed=2), path)
    assert os.listdir(tmp_path) == ["model.pt"]
    a = load_model(path).net.state_dict()
    b = _model(seed=2).net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_model(_model(seed=1), path)
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_model(_model(seed=2), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.pt"]


def test_save_refuses_values_that_are_not_plain(tmp_path):
    model = _model()
    model.training["callback"] = object()
    with pytest.raises(ValueError, match=r"model.training\['callback'\]"):
        save_model(model, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()
    with pytest.raises(ValueError, match="TrainedModel"):
        save_model(model.net, tmp_path / "m.pt")
    with pytest.raises(FileNotFoundError):
        save_model(_model(), tmp_path / "missing" / "m.pt")


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        load_model("/nonexistent/model.pt")


def test_file_that_is_not_ours(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ModelFileError, match="not a napari-unet model"):
        load_model(foreign)
    plain_state_dict = tmp_path / "state.pt"
    torch.save(_model().net.state_dict(), plain_state_dict)
    with pytest.raises(ModelFileError, match="not a napari-unet model"):
        load_model(plain_state_dict)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), tensor)
    with pytest.raises(ModelFileError, match="holds a Tensor"):
        load_model(tensor)
    text = tmp_path / "notes.pt"
    text.write_text("hello, this is not a model")
    with pytest.raises(ModelFileError, match="not a readable napari-unet model"):
        load_model(text)
    assert issubclass(ModelFileError, ValueError)


def test_newer_format_is_refused_with_a_clear_message(tmp_path):
    path = save_model(_model(), tmp_path / "m.pt")
    data = torch.load(path, weights_only=True)
    data["format_version"] = FORMAT_VERSION + 1
    data["package_version"] = "9.0.0"
    torch.save(data, path)
    with pytest.raises(ModelFileError, match=r"format 2, newer .*napari-unet 9\.0\.0.*update"):
        load_model(path)


def test_truncated_file(tmp_path):
    path = save_model(_model(), tmp_path / "m.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated, corrupt"):
        load_model(path)
    path.write_bytes(b"")
    with pytest.raises(ModelFileError):
        load_model(path)


def test_mismatched_weights_are_a_model_file_error(tmp_path):
    path = save_model(_model(), tmp_path / "m.pt")
    data = torch.load(path, weights_only=True)
    data["config"]["base_channels"] = 8
    torch.save(data, path)
    with pytest.raises(ModelFileError, match="cannot be rebuilt"):
        load_model(path)
    data["config"] = {"base_channels": 4, "depth": 2, "colour": "red"}
    torch.save(data, path)
    with pytest.raises(ModelFileError, match="unknown U-Net configuration keys"):
        load_model(path)


class _Exploit:
    """Unpickling this object would create a file (arbitrary code execution)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = save_model(_model(), tmp_path / "m.pt")
    data = torch.load(path, weights_only=True)
    data["training"] = {"payload": _Exploit(str(marker))}
    torch.save(data, path)
    # Sanity check: the payload really does create the file when unpickled unsafely.
    check = tmp_path / "check.txt"
    pickle.loads(pickle.dumps(_Exploit(str(check)))).close()
    assert check.exists()

    with pytest.raises(ModelFileError, match="refused"):
        load_model(path)
    assert not marker.exists()

    # The same with a bare pickle (legacy, non-zip format).
    legacy = tmp_path / "legacy.pt"
    with open(legacy, "wb") as f:
        pickle.dump({"format": FORMAT, "x": _Exploit(str(marker))}, f, protocol=2)
    with pytest.raises(ModelFileError):
        load_model(legacy)
    assert not marker.exists()


def test_written_file_is_a_torch_zip_archive(tmp_path):
    path = save_model(_model(), tmp_path / "m.pt")
    assert zipfile.is_zipfile(path)
