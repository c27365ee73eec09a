"""The U-Net in 3D: per-level pooling from the voxel size, per-axis geometry, halo exactness."""

from __future__ import annotations

import pytest
import torch

from napari_unet.core.model import TrainedModel, UNet, UNetConfig, plan_levels, preset_config
from napari_unet.core.model_files import load_model, save_model

ANISO = {"depth": 2, "base_channels": 4, "spatial_dims": 3, "voxel_size": (3.0, 1.0, 1.0)}


def test_planning_rule_pools_z_once_the_spacing_is_close() -> None:
    # z 3x coarser: level 0 in-plane only; after one in-plane pooling z (3) < 2 x 2: pool all.
    assert plan_levels((3.0, 1.0, 1.0), 2) == (
        ((1, 2, 2), (2, 2, 2)),
        ((1, 3, 3), (3, 3, 3), (3, 3, 3)),
    )
    # Exactly twice the in-plane spacing counts as anisotropic; 1.9x does not.
    assert plan_levels((2.0, 1.0, 1.0), 1)[0] == ((1, 2, 2),)
    assert plan_levels((1.9, 1.0, 1.0), 1)[0] == ((2, 2, 2),)
    # Very coarse z: no pooling nor 3-wide kernels along z at all.
    assert plan_levels((20.0, 1.0, 1.0), 2)[0] == ((1, 2, 2), (1, 2, 2))
    assert [k[0] for k in plan_levels((20.0, 1.0, 1.0), 2)[1]] == [1, 1, 1]
    # 2D and isotropic 3D: the paper's network.
    assert plan_levels((1.0, 1.0), 4) == (((2, 2),) * 4, ((3, 3),) * 5)


def test_per_axis_geometry() -> None:
    config = UNetConfig(**ANISO)
    assert config.grids == (2, 4, 4)
    assert config.receptive_radii == (9, 23, 23)
    assert config.halos == (10, 24, 24)
    assert config.admissible_shape((5, 13, 16)) == (6, 16, 16)
    assert config.output_shape((6, 16, 16)) == (6, 16, 16)
    valid = UNetConfig(**ANISO, padding="valid")
    assert valid.halos == (8, 20, 20)
    assert [valid.admissible_size(1, axis) for axis in range(3)] == [18, 44, 44]
    assert valid.output_shape((20, 48, 44)) == (4, 8, 4)
    with pytest.raises(ValueError, match=r"along axis 0 is not admissible.*18 or 20"):
        valid.output_size(19, axis=0)


@pytest.mark.parametrize(("padding", "shape"), [("same", (6, 24, 16)), ("valid", (20, 48, 52))])
def test_3d_output_shapes(padding: str, shape: tuple[int, int, int]) -> None:
    config = UNetConfig(**ANISO, padding=padding, in_channels=2, dropout=0.3)
    net = UNet(config).eval()
    with torch.inference_mode():
        out = net(torch.rand(2, 2, *shape))
    assert out.shape == (2, 2, *config.output_shape(shape))
    assert isinstance(net.dropout, torch.nn.Dropout3d)
    assert isinstance(net.inc[0], torch.nn.Conv3d) and net.inc[0].kernel_size == (1, 3, 3)


def test_3d_receptive_radius_is_exact_per_axis() -> None:
    """Probe the field of view with gradients along each axis: it equals the analytic radius."""
    config = UNetConfig(**{**ANISO, "base_channels": 1}, batch_norm=False)
    net = UNet(config).double()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()  # all-positive weights on positive input: every ReLU passes gradients
    shape, centre = (24, 56, 56), (12, 28, 28)
    found = [0, 0, 0]
    for offset in range(max(config.grids)):
        x = (torch.rand(1, 1, *shape, dtype=torch.float64) + 1).requires_grad_(True)
        at = [c + offset % g for c, g in zip(centre, config.grids, strict=True)]
        net(x)[0, 1, at[0], at[1], at[2]].backward()
        hits = torch.nonzero(x.grad[0, 0])
        for axis in range(3):
            found[axis] = max(found[axis], int((hits[:, axis] - at[axis]).abs().max()))
    assert tuple(found) == config.receptive_radii


def test_3d_centre_does_not_see_beyond_the_halo() -> None:
    torch.manual_seed(0)
    config = UNetConfig(**ANISO)
    net = UNet(config).eval()
    shape = tuple(2 * h + 2 * g for h, g in zip(config.halos, config.grids, strict=True))
    x = torch.rand(1, 1, *shape)
    lo = config.halos
    hi = tuple(n - h for n, h in zip(shape, config.halos, strict=True))
    inner = (slice(None), slice(None), *(slice(a, b) for a, b in zip(lo, hi, strict=True)))
    with torch.inference_mode():
        reference = net(x)[inner]
        for axis in range(3):
            y = x.clone()
            # Everything farther than the receptive radius from the block along this axis.
            before = [slice(None)] * 5
            before[2 + axis] = slice(0, lo[axis] - config.receptive_radii[axis])
            after = [slice(None)] * 5
            after[2 + axis] = slice(hi[axis] + config.receptive_radii[axis], None)
            y[tuple(before)] = torch.rand_like(y[tuple(before)]) * 5
            y[tuple(after)] = torch.rand_like(y[tuple(after)]) * 5
            assert not torch.equal(y, x)
            assert torch.equal(net(y)[inner], reference)


def test_presets_in_3d() -> None:
    fast = preset_config("fast", spatial_dims=3, voxel_size=(2.0, 1.0, 1.0))
    assert (fast.depth, fast.base_channels, fast.padding) == (3, 8, "same")
    assert fast.pools[0] == (1, 2, 2)
    paper = preset_config("paper", spatial_dims=3)  # the 3D U-Net of Cicek et al. (2016)
    assert paper.output_size(132) == 44
    assert (paper.depth, paper.base_channels, paper.padding) == (3, 32, "valid")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spatial_dims": 4}, "spatial_dims must be 2 or 3, got 4"),
        ({"spatial_dims": 3, "voxel_size": (1.0, 1.0)}, "must have 3 values .z, y, x."),
        ({"spatial_dims": 3, "voxel_size": (0.0, 1.0, 1.0)}, "positive finite numbers"),
        ({"voxel_size": (1.0, -2.0)}, "positive finite numbers"),
        ({"spatial_dims": 3, "voxel_size": "abc"}, "must be 3 positive numbers"),
    ],
)
def test_bad_3d_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UNetConfig(**kwargs)


def test_3d_model_file_keeps_the_voxel_size(tmp_path) -> None:
    model = TrainedModel(UNet(UNetConfig(**ANISO)), gap=1)
    loaded = load_model(save_model(model, tmp_path / "m.pt"))
    assert loaded.config == model.config
    assert loaded.config.voxel_size == (3.0, 1.0, 1.0)
    x = torch.rand(1, 1, 6, 16, 16)
    with torch.inference_mode():
        assert torch.equal(loaded.net(x), model.net.eval()(x))


def test_file_of_the_first_format_loads_as_2d(tmp_path) -> None:
    # What version 0.1 wrote: a config without spatial_dims / voxel_size.
    old = {"in_channels": 1, "n_classes": 2, "depth": 2, "base_channels": 4, "padding": "same"}
    old |= {"batch_norm": True, "dropout": 0.0}
    net = UNet(UNetConfig(**old))
    payload = {
        "format": "napari-unet-model",
        "format_version": 1,
        "package_version": "0.1.0",
        "config": old,
        "normalization": {"method": "percentile", "low": 1.0, "high": 99.8},
        "gap": 1,
        "training": {},
        "state_dict": net.state_dict(),
    }
    torch.save(payload, tmp_path / "old.pt")
    loaded = load_model(tmp_path / "old.pt")
    assert loaded.config.spatial_dims == 2 and loaded.config.voxel_size is None
    assert set(loaded.config.to_dict()) == set(old)


def test_3d_model_of_the_former_fast_preset_loads(tmp_path) -> None:
    # 3D fast models made before base 8 (base 16) load with the configuration they stored
    config = preset_config("fast", spatial_dims=3, voxel_size=(2.5, 1.0, 1.0), base_channels=16)
    torch.manual_seed(0)
    model = TrainedModel(UNet(config), gap=1)
    loaded = load_model(save_model(model, tmp_path / "m.pt"))
    assert loaded.config == config and loaded.config.base_channels == 16
    x = torch.rand(1, 1, 8, 16, 16)
    with torch.inference_mode():
        assert torch.equal(loaded.net(x), model.net.eval()(x))
