"""OME-Zarr in (level 0, lazily, axes and pixel size) and labels into the image's labels/ group."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

ome_zarr = pytest.importorskip("ome_zarr")
zarr = pytest.importorskip("zarr")

from ome_zarr.format import FormatV04, FormatV05  # noqa: E402
from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Reader  # noqa: E402
from ome_zarr.writer import write_image as write_ome_image  # noqa: E402

from napari_unet.cli.files import open_image, read_image  # noqa: E402
from napari_unet.cli.ngff import (  # noqa: E402
    is_ome_zarr,
    label_names,
    labels_into,
    read_ome_zarr,
)

FORMATS = {"0.4": FormatV04(), "0.5": FormatV05()}


def write_ome(path, data, axes, version="0.4", scale=None):
    """An OME-Zarr image written by ome_zarr.writer, with a 3-level pyramid."""
    fmt = FORMATS[version]
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    scale = scale or dict.fromkeys(axes, 1.0)
    write_ome_image(data, root, axes=axes, fmt=fmt, scale=scale, scale_factors=(2, 4))
    return path


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (1, 2, 3, 64, 48)).astype(np.uint8)  # t c z y x


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_read_level_0_lazily_with_axes_and_pixel_size(tmp_path, image, version):
    path = write_ome(
        tmp_path / "a.ome.zarr",
        image,
        "tczyx",
        version,
        scale={"t": 1.0, "c": 1.0, "z": 2.0, "y": 0.5, "x": 0.25},
    )
    assert is_ome_zarr(path) and not is_ome_zarr(tmp_path)
    data, ome = read_ome_zarr(path)
    assert isinstance(data, da.Array)  # lazy
    assert data.shape == (2, 3, 64, 48)  # t dropped: (C, Z, Y, X)
    np.testing.assert_array_equal(data.compute(), image[0])
    assert ome.channel_axis == 0
    assert ome.pixel_size == {"z": 2.0, "y": 0.5, "x": 0.25}
    assert ome.version == version and len(ome.shapes) == 3
    info = open_image(path)
    assert info.channel_axis == 0 and info.pixel_size == ome.pixel_size
    np.testing.assert_array_equal(np.asarray(read_image(path)), image[0])


def test_single_channel_and_time_series(tmp_path, image):
    path = write_ome(tmp_path / "one.ome.zarr", image[:, :1], "tczyx")
    data, ome = read_ome_zarr(path)
    assert data.shape == (3, 64, 48) and ome.channel_axis is None  # c squeezed: a stack
    frames = image[0, :1].transpose(1, 0, 2, 3)  # (t=3, c=1, y, x): time points as slices
    data, ome = read_ome_zarr(write_ome(tmp_path / "t.ome.zarr", frames, "tcyx"))
    assert data.shape == (3, 64, 48) and ome.channel_axis is None
    np.testing.assert_array_equal(data.compute(), frames[:, 0])
    plain = write_ome(tmp_path / "yx.ome.zarr", image[0, 0, 0], "yx")
    data, ome = read_ome_zarr(plain)
    assert data.shape == (64, 48) and ome.channel_axis is None
    assert ome.pixel_size == {"y": 1.0, "x": 1.0}


def test_time_series_of_volumes_is_refused(tmp_path, image):
    path = write_ome(tmp_path / "tz.ome.zarr", np.concatenate([image, image])[:, :1], "tczyx")
    with pytest.raises(ValueError, match=r"at most one of t and z.*t=2, z=3"):
        read_ome_zarr(path)


def _reader_nodes(path):
    return list(Reader(parse_url(str(path)))())


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_labels_into_the_image(tmp_path, image, version):
    path = write_ome(tmp_path / "a.ome.zarr", image, "tczyx", version)
    _, ome = read_ome_zarr(path)
    labels = np.arange(3 * 64 * 48, dtype=np.int32).reshape(3, 64, 48)
    with labels_into(ome, "unet", (32, 32)) as out:
        assert out.shape == (3, 64, 48)
        for z in range(3):  # as the core writes them: slice by slice
            out[z] = labels[z]
    assert label_names(path) == ["unet"]
    nodes = _reader_nodes(path)
    label_node = next(n for n in nodes if n.metadata.get("name") == "unet")
    assert [tuple(d.shape) for d in label_node.data] == [
        (1, 1, 3, 64, 48),
        (1, 1, 3, 32, 24),
        (1, 1, 3, 16, 12),
    ]  # the image's levels, one channel
    np.testing.assert_array_equal(np.asarray(label_node.data[0])[0, 0], labels)
    level1 = np.asarray(label_node.data[1])[0, 0]
    np.testing.assert_array_equal(level1, labels[:, 1::2, 1::2])  # nearest neighbour
    transforms = label_node.metadata["coordinateTransformations"]
    assert transforms == nodes[0].metadata["coordinateTransformations"]  # aligned level by level

    # Again under the same name: replaced, listed once; another name is added to the list.
    with labels_into(ome, "unet", (32, 32)) as out:
        out[...] = 5
    with labels_into(ome, "other", (64, 64)) as out:
        out[...] = 1
    assert label_names(path) == ["unet", "other"]
    again = zarr.open_group(str(path / "labels" / "unet"), mode="r")
    assert int(np.asarray(again[ome.datasets[0]["path"]]).max()) == 5


def test_labels_validate_against_the_spec(tmp_path, image):
    models = pytest.importorskip("ome_zarr_models")
    from ome_zarr_models.v04.image import Image as Image04
    from ome_zarr_models.v04.image_label import ImageLabel as Label04
    from ome_zarr_models.v05.image import Image as Image05
    from ome_zarr_models.v05.image_label import ImageLabel as Label05

    assert models is not None
    for version, image_model, label_model in [
        ("0.4", Image04, Label04),
        ("0.5", Image05, Label05),
    ]:
        path = write_ome(tmp_path / f"{version}.ome.zarr", image, "tczyx", version)
        _, ome = read_ome_zarr(path)
        with labels_into(ome, "unet", (32, 32)) as out:
            out[...] = 1
        parsed = image_model.from_zarr(zarr.open_group(str(path), mode="r"))
        assert parsed.labels is not None
        label_model.from_zarr(zarr.open_group(str(path / "labels" / "unet"), mode="r"))


def test_a_crash_leaves_no_registered_label(tmp_path, image):
    path = write_ome(tmp_path / "a.ome.zarr", image, "tczyx")
    _, ome = read_ome_zarr(path)
    with pytest.raises(RuntimeError, match="stopped"), labels_into(ome, "unet", (32, 32)) as out:
        out[0] = 1
        raise RuntimeError("stopped")
    assert label_names(path) == []
    assert [p.name for p in (path / "labels").iterdir()] == []  # nothing half-written
    assert len(_reader_nodes(path)) == 1  # the image only

    with labels_into(ome, "unet", (32, 32)) as out:
        out[...] = 3
    with pytest.raises(RuntimeError), labels_into(ome, "unet", (32, 32)) as out:
        out[...] = 4
        raise RuntimeError("stopped")
    kept = zarr.open_group(str(path / "labels" / "unet"), mode="r")
    assert int(np.asarray(kept[ome.datasets[0]["path"]]).max()) == 3  # the old one, whole
    assert label_names(path) == ["unet"]


def test_bad_label_names(tmp_path, image):
    path = write_ome(tmp_path / "a.ome.zarr", image, "tczyx")
    _, ome = read_ome_zarr(path)
    for name in ["", "../x", ".hidden", "a/b"]:
        with pytest.raises(ValueError, match="plain folder name"), labels_into(ome, name, (8, 8)):
            pass


def test_label_image_reads_back_as_training_labels(tmp_path, image):
    """``train --labels image.ome.zarr/labels/NAME`` reads the label image's level 0."""
    path = write_ome(tmp_path / "a.ome.zarr", image, "tczyx")
    _, ome = read_ome_zarr(path)
    labels = np.random.default_rng(1).integers(0, 9, (3, 64, 48)).astype(np.int32)
    with labels_into(ome, "unet", (32, 32)) as out:
        out[...] = labels
    read = open_image(path / "labels" / "unet")
    assert read.channel_axis is None
    np.testing.assert_array_equal(np.asarray(read.data), labels)
