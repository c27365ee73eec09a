"""Tests of the interior network: a same-padding U-Net's output without its halo, computed
without the border (tiny networks, batch norm with non-trivial statistics)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from napari_unet.core.inference.interior import (
    InteriorUNet,
    interior_margins,
    interior_trim,
)
from napari_unet.core.model import UNet, UNetConfig, preset_config
from tiny_models import tiled_model, with_statistics

pytestmark = pytest.mark.usefixtures("one_thread")


def _crop(x: torch.Tensor, trim: tuple[int, ...]) -> torch.Tensor:
    return x[(..., *(slice(t, n - t) for t, n in zip(trim, x.shape[2:], strict=True)))]


def _check(net: UNet, trim: tuple[int, ...], steps: tuple[int, ...], batch: int = 2) -> None:
    config = net.config
    shape = config.admissible_shape(
        tuple(2 * t + s * g for t, s, g in zip(trim, steps, config.grids, strict=True))
    )
    x = torch.randn(batch, config.in_channels, *shape, generator=torch.Generator().manual_seed(3))
    inner = InteriorUNet(net, trim)
    with torch.inference_mode():
        expected = _crop(net(x), trim)
        got = inner(x)
    assert (
        got.shape
        == expected.shape
        == (batch, config.n_classes, *(n - 2 * t for n, t in zip(shape, trim, strict=True)))
    )
    assert float((got - expected).abs().max()) <= 1e-5


@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("steps", [(1, 1), (2, 5)])
def test_interior_equals_the_cropped_network(depth, steps):
    model = tiled_model("same", in_channels=2, depth=depth, n_classes=3)
    trim = interior_trim(model.config)
    assert trim == model.config.halos
    _check(model.net, trim, steps)  # (1, 1): the smallest tile, one grid step of output


def test_interior_of_an_anisotropic_volume():
    torch.manual_seed(0)
    config = UNetConfig(depth=3, base_channels=2, spatial_dims=3, voxel_size=(3.0, 1.0, 1.0))
    net = UNet(config)
    net.train()
    with torch.no_grad():
        net(torch.randn(2, 1, 24, 32, 32) * 2 + 1)  # batch-norm statistics
    trim = interior_trim(config)
    assert trim == config.halos and trim[0] < trim[1]
    _check(net.eval(), trim, (1, 2, 1), batch=1)


def test_a_larger_trim_is_exact_too():
    net = tiled_model("same").net
    halo = net.config.halo
    _check(net, (halo + 5, halo + 16), (2, 1))


def test_fast_preset_margins():
    margins = interior_margins(replace(preset_config("fast"), depth=4), (112, 112))
    assert margins.input == (18, 18)
    assert margins.features == ((20, 20), (12, 12), (8, 8), (6, 6), (5, 5))
    assert margins.concat == ((110, 110), (53, 53), (24, 24), (10, 10))
    assert margins.expanding == ((112, 112), (55, 55), (26, 26), (12, 12), (5, 5))


def test_no_interior_without_a_border_to_leave_out():
    assert interior_trim(UNetConfig(depth=2, base_channels=4, padding="valid")) is None
    # in-plane halos 24 and 10: the rotations of test-time augmentation need one trim for both,
    # and 10 is less than the receptive radius along y
    assert interior_trim(UNetConfig(depth=2, base_channels=4, voxel_size=(1.0, 2.5))) is None
    config = UNetConfig(depth=2, base_channels=4)
    assert config.receptive_radius == 23
    interior_margins(config, (22, 22))  # the worst pooling phase lies outside: still exact
    with pytest.raises(ValueError, match="the interior depends on the border"):
        interior_margins(config, (21, 21))
    with pytest.raises(ValueError, match="'same' padding"):
        interior_margins(UNetConfig(depth=2, padding="valid"), (30, 30))
    with pytest.raises(ValueError, match="2 values"):
        interior_margins(config, (24,))


def test_the_network_is_left_untouched():
    net = with_statistics(UNet(UNetConfig(depth=2, base_channels=4)), 32, 2.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    InteriorUNet(net, (24, 24))
    assert net.inc[0].padding == (1, 1)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
