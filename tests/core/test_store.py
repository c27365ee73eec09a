"""Prepared training data on disk, label stacks read slice by slice, patches streamed."""

from __future__ import annotations

import dataclasses
import gc

import dask.array as da
import numpy as np
import pytest
import torch
import zarr

from napari_unet.core.model import TrainedModel, UNet, UNetConfig
from napari_unet.core.training import TrainSettings, prepare_samples, run_training
from napari_unet.core.training import data as data_module
from napari_unet.core.training import store as store_module
from napari_unet.core.training.data import LazyLabels
from napari_unet.core.training.store import SampleStore, prepared_bytes
from napari_unet.sample_data import make_touching_cells


@pytest.fixture(scope="module")
def stack():
    pairs = [make_touching_cells((48, 56), n_cells=6, seed=s) for s in range(3)]
    images = np.stack([p[0] for p in pairs])
    labels = np.stack([p[1] for p in pairs])
    labels[1] = 0  # a slice without labels is skipped
    return images, labels


def _zarr(array):
    """A zarr array as the command line reads one: lazily, through dask."""
    z = zarr.create_array(store={}, shape=array.shape, chunks=(1, 16, 16), dtype=array.dtype)
    z[:] = array
    return da.from_zarr(z)


def test_zarr_stack_on_disk_store_gives_the_same_samples(stack, tmp_path, monkeypatch):
    images, labels = stack
    monkeypatch.setattr(data_module, "LAZY_BYTES", 0)  # read the zarr labels slice by slice
    reference = prepare_samples(images, labels)
    store = SampleStore(tmp_path)
    kept = prepare_samples(_zarr(images), _zarr(labels), store=store)
    assert [s.source for s in kept] == [(0, 0), (0, 2)]
    assert store.on_disk and store.nbytes == prepared_bytes([(1, 48, 56)] * 2)
    assert len(list(tmp_path.glob("napari-unet-data-*/*.npy"))) == 8
    for a, b in zip(reference, kept, strict=True):
        for name in ("image", "classes", "weights", "labels"):
            assert isinstance(getattr(b, name), np.memmap)
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert b.region is None and b.n_annotated == a.n_annotated
    # a copy with new targets (as the validation hold-out makes) keeps them in memory
    changed = dataclasses.replace(kept[0], weights=np.zeros((48, 56), np.float32))
    assert changed.n_annotated == 0 and kept[0].n_annotated == reference[0].n_annotated
    del store, kept, changed, a, b
    gc.collect()
    assert list(tmp_path.iterdir()) == []  # the folder goes with the last sample


def test_lazy_regions_read_slice_by_slice(stack, monkeypatch):
    images, labels = stack
    monkeypatch.setattr(data_module, "LAZY_BYTES", 0)
    region = np.zeros(labels.shape, bool)
    region[0, :30] = True
    region[1, 10:20, 10:20] = True  # a slice without labels, marked annotated (background)
    reference = prepare_samples(images, labels, region)
    lazy = prepare_samples(_zarr(images), _zarr(labels), _zarr(region))
    assert [s.source for s in lazy] == [(0, 0), (0, 1)]
    for a, b in zip(reference, lazy, strict=True):
        np.testing.assert_array_equal(a.region, b.region)
        np.testing.assert_array_equal(a.weights, b.weights)
    bad = _zarr(region.astype(np.float32) * 0.5)
    with pytest.raises(ValueError, match="regions\\[0\\] slice 0"):
        prepare_samples(images, labels, bad)


def test_lazy_labels_check_each_slice(stack, monkeypatch):
    images, labels = stack
    monkeypatch.setattr(data_module, "LAZY_BYTES", 0)
    bad = labels.astype(np.int32)
    bad[2, 0, 0] = -1
    with pytest.raises(ValueError, match="slice 2 must be non-negative"):
        prepare_samples(images, _zarr(bad))
    with pytest.raises(ValueError, match="integer label image"):
        LazyLabels(_zarr(labels.astype(np.float32)), data_module.check_labels, "labels[0]")


def test_training_from_disk_streams_patches_to_the_same_model(stack, monkeypatch):
    images, labels = stack
    settings = TrainSettings(
        iterations=3, patch_size=32, batch_size=2, device="cpu", seed=2, validation_fraction=0
    )

    def tiny():
        torch.manual_seed(0)
        return TrainedModel(UNet(UNetConfig(depth=2, base_channels=4)))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resident = run_training(images, labels, settings=settings, model=tiny())
        monkeypatch.setattr(store_module, "STORE_BYTES", 0)  # everything to disk
        monkeypatch.setattr(data_module, "RESIDENT_BYTES", 0)  # patches read as drawn
        streamed = run_training(images, labels, settings=settings, model=tiny())
    finally:
        torch.set_num_threads(threads)
    for key, value in resident.net.state_dict().items():
        torch.testing.assert_close(streamed.net.state_dict()[key], value, rtol=0, atol=0)
