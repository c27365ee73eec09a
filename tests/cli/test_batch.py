"""Folder batches: inputs from files, folders and patterns; outputs named after them; layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.cli.batch import (
    PredictSettings,
    Target,
    batch_targets,
    channel_layout,
    collect_inputs,
    segment_files,
    stem,
)
from napari_unet.cli.files import ImageFile
from napari_unet.core.inference import segment
from napari_unet.core.model import TrainedModel, UNet, UNetConfig
from napari_unet.core.progress import run_to_end


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ["b.tif", "a.npy", "c.png", "a_labels.tif", "x_probabilities.tif", "notes.txt"]:
        (folder / name).write_bytes(b"")
    (folder / ".hidden.tif").write_bytes(b"")
    (folder / "d.zarr").mkdir()
    (folder / "sub").mkdir()
    (folder / "sub" / "e.tif").write_bytes(b"")
    return folder


def test_collect_inputs(folder):
    names = [p.name for p in collect_inputs([folder])]
    assert names == ["a.npy", "b.tif", "c.png", "d.zarr"]  # sorted; our outputs left out
    assert [p.name for p in collect_inputs([str(folder / "*.tif"), folder / "b.tif"])] == [
        "a_labels.tif",  # named explicitly (by a pattern): taken
        "b.tif",
        "x_probabilities.tif",
    ]
    assert [p.name for p in collect_inputs([str(folder / "**" / "e.tif")])] == ["e.tif"]
    assert [p.name for p in collect_inputs([folder / "missing.tif"])] == ["missing.tif"]
    assert len(collect_inputs([folder / "b.tif", folder / "b.tif", folder])) == 4  # each once


def test_collect_inputs_empty(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image in folder"):
        collect_inputs([tmp_path / "empty"])
    with pytest.raises(ValueError, match=r"no image in pattern '.*\*\.tif'"):
        collect_inputs([str(tmp_path / "*.tif")])


def test_stem_and_output_names(tmp_path, folder):
    assert stem("x/cells.ome.zarr") == "cells" and stem("a.b.TIF") == "a.b"
    targets = batch_targets(
        [folder / "a.npy", folder / "d.zarr"], tmp_path / "out", probabilities_dir=tmp_path / "p"
    )
    assert targets[0] == Target(
        folder / "a.npy",
        tmp_path / "out" / "a_labels.tif",
        None,
        tmp_path / "p" / "a_probabilities.tif",
    )
    assert targets[1].labels.name == "d_labels.zarr"
    assert targets[1].probabilities.name == "d_probabilities.zarr"
    into = batch_targets([folder / "d.zarr"], None, labels_into="unet")
    assert into[0].labels is None and into[0].destination.endswith("d.zarr/labels/unet")
    with pytest.raises(ValueError, match=r"would both be written as a_labels\.tif"):
        batch_targets([folder / "a.npy", tmp_path / "a.tif"], tmp_path)
    with pytest.raises(ValueError, match="say where the labels go"):
        batch_targets([folder / "a.npy"], None)


def _model(in_channels=1, **settings):
    torch.manual_seed(0)
    net = UNet(UNetConfig(in_channels=in_channels, depth=2, base_channels=4)).eval()
    return TrainedModel(net, training={"settings": settings} if settings else {})


@pytest.mark.parametrize(
    ("shape", "settings", "given", "expected"),
    [
        ((2, 32, 32), {"channel_axis": 0}, {}, (0, False, "the model")),
        ((5, 2, 32, 32), {"channel_axis": 1}, {}, (1, False, "the model")),
        ((5, 2, 32, 32), {"channel_axis": 0}, {}, (None, False, "")),  # not that layout
        ((2, 32, 32), {"channel_axis": 0}, {"channel_axis": 1}, (1, False, "")),  # given wins
        ((32, 32, 2), {"rgb": True}, {}, (None, True, "the model")),
        ((32, 32, 3), {"rgb": True}, {}, (None, False, "")),  # 3 channels, the model reads 2
        ((2, 32, 32), {}, {}, (None, False, "")),  # nothing stored
    ],
)
def test_channel_layout(shape, settings, given, expected):
    model = _model(2, **settings) if settings else _model(2)
    image = ImageFile(path=None, data=np.zeros(shape, np.float32))
    assert channel_layout(model, image, **given) == expected


def test_channel_layout_from_the_file():
    image = ImageFile(path=None, data=np.zeros((2, 5, 32, 32)), channel_axis=0)
    assert channel_layout(_model(2, channel_axis=1), image) == (0, False, "the file")
    assert channel_layout(_model(1), ImageFile(None, np.zeros((32, 32)))) == (None, False, "")


def test_segment_files_events_and_failures(tmp_path):
    model = _model()
    rng = np.random.default_rng(0)
    good = rng.random((40, 36)).astype(np.float32)
    np.save(tmp_path / "good.npy", good)
    np.save(tmp_path / "bad.npy", np.zeros((2, 2, 2, 40, 36)))
    targets = batch_targets([tmp_path / "bad.npy", tmp_path / "good.npy"], tmp_path)
    events = []
    work = segment_files(model, targets, PredictSettings(device="cpu"))
    results = run_to_end(work, events.append)
    assert [r.status for r in results] == ["failed", "written"]
    assert "bad.npy has 5 dimension(s)" in results[0].message
    stages = [(e.stage, e.done, e.total) for e in events if e.stage in ("file", "files")]
    assert stages == [("file", 0, 2), ("files", 1, 2), ("file", 1, 2), ("files", 2, 2)]
    assert any(e.stage == "tiles" for e in events)
    import tifffile

    expected = run_to_end(segment(model, good, device="cpu"))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "good_labels.tif"), expected)
    assert not (tmp_path / "bad_labels.tif").exists()
