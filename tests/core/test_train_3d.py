"""3D training: volumes annotated on a few slices, 3D patches, 3D augmentation, a 3D model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.core.model import TrainedModel, UNet, UNetConfig, preset_config
from napari_unet.core.model_files import load_model, save_model
from napari_unet.core.training import TrainSettings, run_training
from napari_unet.core.training.augment import AugmentSettings, augment_batch, elastic_field
from napari_unet.core.training.data import (
    PatchSampler,
    TargetSpec,
    gap_axes,
    patch_shape,
    prepare_samples,
)
from napari_unet.core.training.loop import VOLUME_SEED_SPLIT
from napari_unet.core.training.settings import FINE_TUNE_DEFAULTS, VOLUME_DEFAULTS
from napari_unet.sample_data import make_touching_nuclei_3d

VOXEL = (2.5, 1.0, 1.0)
TARGETS = TargetSpec(sampling=VOXEL)


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray]:
    image, labels = make_touching_nuclei_3d(
        (12, 40, 40), n_nuclei=6, spacing=VOXEL, radius=(6.0, 8.0), seed=1
    )
    sparse = np.zeros_like(labels)
    sparse[[3, 8]] = labels[[3, 8]]  # two annotated slices
    return image, sparse


def _tiny(**config) -> TrainedModel:
    torch.manual_seed(0)
    cfg = UNetConfig(depth=2, base_channels=4, spatial_dims=3, voxel_size=VOXEL, **config)
    return TrainedModel(UNet(cfg))


def test_only_the_annotated_slices_carry_loss(volume) -> None:
    image, sparse = volume
    (sample,) = prepare_samples(image, sparse, spatial_dims=3, targets=TARGETS)
    assert sample.image.shape == (1, *image.shape) and sample.weights.shape == image.shape
    carrying = np.flatnonzero(sample.weights.reshape(image.shape[0], -1).max(axis=1) > 0)
    assert carrying.tolist() == [3, 8]
    lo, hi = np.percentile(image, [1.0, 99.8])  # one normalisation for the whole volume
    assert np.allclose(sample.image[0], (image - lo) / (hi - lo), atol=1e-5)
    region = np.zeros(image.shape, bool)
    region[2:5, 5:30, 5:30] = True  # a region: everything annotated inside it counts
    (boxed,) = prepare_samples(image, sparse, region, spatial_dims=3, targets=TARGETS)
    assert not boxed.weights[~region].any() and boxed.weights[region].all()
    # the gap is cut along z only in the region (slices 2-4 annotated next to each other)
    assert gap_axes([sample]) == (1, 2) and gap_axes([boxed]) == (0, 1, 2)


def test_3d_patches_are_centred_on_annotated_voxels(volume) -> None:
    image, sparse = volume
    samples = prepare_samples(image, sparse, spatial_dims=3, targets=TARGETS)
    sampler = PatchSampler(samples, (5, 16, 16), "cpu", np.random.default_rng(0))
    assert {c[1] for c in sampler.centres(50)} <= {3, 8}
    x, _, w = sampler.sample(3)
    assert tuple(x.shape) == (3, 1, 5, 16, 16) and tuple(w.shape) == (3, 5, 16, 16)
    assert bool((w[:, 2, 8, 8] > 0).all())  # the centre voxel is an annotated one


def test_patch_shape_is_about_a_cube_in_physical_units() -> None:
    config = UNetConfig(depth=2, base_channels=4, spatial_dims=3, voxel_size=(4.0, 1.0, 1.0))
    assert config.grids == (1, 4, 4) and config.halos == (2, 24, 24)
    in_shape, out_shape = patch_shape(config, 32, 8)
    assert out_shape == (8, 32, 32) and in_shape == (12, 48, 48)
    assert patch_shape(config, 32, 8, limit=(5, 20, 100)) == ((9, 36, 48), (5, 20, 32))


def test_3d_flips_are_exact_and_shared_by_image_and_targets() -> None:
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(16, 1, 4, 6, 6)
    classes = (image[:, 0] > 0.5).to(torch.uint8)
    settings = AugmentSettings(elastic=False, affine=False, intensity=False)
    x, y, _ = augment_batch(image, classes, torch.ones(16, 4, 6, 6), settings, generator=gen)
    seen = set()
    for i in range(16):
        found = None
        for zf in (False, True):
            for k in range(4):
                for f in (False, True):
                    t = image[i, 0].flip(0) if zf else image[i, 0]
                    t = torch.rot90(t.flip(-1) if f else t, k, dims=(-2, -1))
                    if torch.equal(t, x[i, 0]):
                        found = (zf, k, f)
        assert found is not None  # one of the 16 exact transforms
        assert torch.equal((x[i, 0] > 0.5).long(), y[i])
        seen.add(found[0])
    assert seen == {False, True}  # z flips happen


def test_3d_elastic_field_follows_the_voxel_size() -> None:
    settings = AugmentSettings(elastic_spacing=16)
    field = elastic_field(64, (8, 32, 32), settings, sampling=(4.0, 1.0, 1.0))
    assert tuple(field.shape) == (64, 3, 8, 32, 32)
    sx, sy, sz = (float(field[:, c].std()) for c in range(3))
    assert sx == pytest.approx(sy, rel=0.2)
    assert sz == pytest.approx(sx / 4, rel=0.3)  # the same displacement in physical units


def test_3d_training_gives_a_3d_model_with_its_voxel_size(volume, tmp_path) -> None:
    image, sparse = volume
    settings = TrainSettings(
        iterations=2,
        patch_size=16,
        batch_size=2,
        device="cpu",
        seed=0,
        context=4,
        spatial_dims=3,
        voxel_size=VOXEL,
    )
    model = run_training(image, sparse, settings=settings, model=_tiny())
    assert model.config.spatial_dims == 3 and model.config.voxel_size == VOXEL
    assert model.training["summary"]["iterations_done"] == 2
    assert model.training["min_size"] >= 1 and model.training["threshold"] == 0.5
    assert model.training["seed_split"] == VOLUME_SEED_SPLIT == 0.15
    assert "seed_threshold" not in model.training  # default seeds, split by split_seeds
    assert model.training["gap_axes"] == (1, 2)  # slices 3 and 8: the gap cut in-plane only
    loaded = load_model(save_model(model, tmp_path / "m.pt"))
    assert loaded.config.voxel_size == VOXEL
    assert tuple(loaded.training["gap_axes"]) == (1, 2)
    assert TrainSettings.from_dict(loaded.training["settings"]).spatial_dims == 3


def test_3d_training_errors(volume) -> None:
    image, sparse = volume
    settings = TrainSettings(iterations=1, device="cpu", spatial_dims=3, voxel_size=VOXEL)
    with pytest.raises(ValueError, match=r"3D training needs volumes \(Z, Y, X\)"):
        run_training(image[3], sparse[3], settings=settings, model=_tiny())
    two_d = TrainedModel(UNet(UNetConfig(depth=2, base_channels=4)))
    with pytest.raises(ValueError, match="is a 2D network but the settings ask for 3D"):
        run_training(image, sparse, settings=settings, model=two_d)
    with pytest.raises(ValueError, match="voxel_size must have 3 values"):
        TrainSettings(spatial_dims=3, voxel_size=(1.0, 1.0)).validate()
    other = TrainSettings(iterations=1, device="cpu", spatial_dims=3, voxel_size=(1, 1, 1))
    with pytest.raises(ValueError, match="differs from the voxel size"):
        run_training(image, sparse, settings=other, model=_tiny())


def test_channels_last_3d_trains_the_same(volume) -> None:
    image, sparse = volume
    losses = []
    for channels_last in (False, True):
        settings = TrainSettings(
            iterations=2, patch_size=16, batch_size=2, device="cpu", seed=0, context=4,
            spatial_dims=3, voxel_size=VOXEL, channels_last=channels_last,
        )  # fmt: skip
        model = run_training(image, sparse, settings=settings, model=_tiny())
        losses.append(model.training["summary"]["final_loss"])
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)


def test_fast_preset_settings_for_volumes() -> None:
    volume = TrainSettings.for_preset("fast", spatial_dims=3, voxel_size=VOXEL)
    assert (volume.patch_size, volume.context, volume.batch_size) == (48, 8, 2)
    assert volume.learning_rate == 3e-3
    assert {k: getattr(volume, k) for k in VOLUME_DEFAULTS} == VOLUME_DEFAULTS
    config = preset_config("fast", spatial_dims=3, voxel_size=VOXEL)
    assert (config.depth, config.base_channels) == (3, 8)
    # 28 x 64 x 64 voxels in, the loss on 22 x 48 x 48 (z: 2.5x fewer voxels)
    shapes = patch_shape(config, volume.patch_size, volume.context, (32, 128, 128))
    assert shapes == ((28, 64, 64), (22, 48, 48))
    # what the caller gives wins; 2D and the paper preset are as before
    assert TrainSettings.for_preset("fast", spatial_dims=3, patch_size=64).patch_size == 64
    assert TrainSettings.for_preset("fast", spatial_dims=2) == TrainSettings()
    assert TrainSettings.for_preset("paper", spatial_dims=3).patch_size == 388
    tuned = TrainSettings.for_preset("fast", fine_tune=True, spatial_dims=3)
    expected = {**VOLUME_DEFAULTS, **FINE_TUNE_DEFAULTS}  # fine-tuning's own defaults win
    assert {k: getattr(tuned, k) for k in expected} == expected
    classes = TrainSettings.for_preset("fast", mode="classes", spatial_dims=3)
    assert (classes.patch_size, classes.batch_size) == (48, 2)
