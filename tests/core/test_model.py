"""Tests of the U-Net configuration, network and tiling geometry."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from napari_unet.core.model import TrainedModel, UNet, UNetConfig, preset_config


def test_paper_preset_matches_the_paper() -> None:
    config = preset_config("paper")
    net = UNet(config)
    assert net.n_parameters == 31_030_658  # 31.03 M as in Ronneberger et al. (2015)
    assert config.output_size(572) == 388
    assert config.halo == 92
    assert (config.padding, config.base_channels, config.depth) == ("valid", 64, 4)


def test_paper_forward_maps_572_to_388() -> None:
    # Same architecture at a tenth of the width: the geometry does not depend on it.
    net = UNet(preset_config("paper", base_channels=2)).eval()
    with torch.inference_mode():
        out = net(torch.zeros(1, 1, 572, 572))
    assert out.shape == (1, 2, 388, 388)


def test_fast_preset() -> None:
    config = preset_config("fast")
    assert (config.padding, config.base_channels, config.batch_norm) == ("same", 16, True)
    assert config.depth == 3
    assert config.receptive_radius == 51
    assert config.halo == 56  # rounded up to the 8-pixel grid
    deep = replace(config, depth=4)  # the bundled nuclei model's depth
    assert (deep.receptive_radius, deep.halo) == (107, 112)  # 112: the 16-pixel grid


@pytest.mark.parametrize("size", [16, 32, 48, 160])
def test_same_padding_keeps_multiples_of_the_grid(size: int) -> None:
    config = UNetConfig(depth=4, base_channels=2)
    net = UNet(config).eval()
    assert config.output_size(size) == size
    with torch.inference_mode():
        assert net(torch.rand(2, 1, size, size)).shape == (2, 2, size, size)


def test_multichannel_and_classes() -> None:
    config = UNetConfig(in_channels=3, n_classes=4, depth=2, base_channels=4, dropout=0.2)
    net = UNet(config).eval()
    with torch.inference_mode():
        out = net(torch.rand(1, 3, 24, 40))
    assert out.shape == (1, 4, 24, 40)
    assert isinstance(net.dropout, torch.nn.Dropout2d)


def test_valid_geometry_small_config() -> None:
    config = UNetConfig(depth=2, base_channels=2, padding="valid")
    assert config.admissible_size(1) == 44  # 44 -> 40/2=20 -> 16/2=8 -> 4 -> 4 -> 4
    assert config.output_size(44) == 4
    assert config.halo == 20
    assert [n for n in range(40, 70) if config.is_admissible(n)] == [44, 48, 52, 56, 60, 64, 68]
    net = UNet(config).eval()
    with torch.inference_mode():
        assert net(torch.zeros(1, 1, 52, 60)).shape == (1, 2, 12, 20)
    assert config.input_size_for_output(10) == 52  # smallest input whose output >= 10: 52 -> 12


def test_inadmissible_size_names_the_nearest() -> None:
    with pytest.raises(ValueError, match="556 or 572"):
        preset_config("paper").output_size(570)
    with pytest.raises(ValueError, match="96 or 104"):
        preset_config("fast").output_size(100)
    with pytest.raises(ValueError, match="nearest admissible sizes: 188"):
        preset_config("paper").output_size(100)


def test_admissible_size_rounds_up() -> None:
    assert preset_config("fast").admissible_size(100) == 104
    assert preset_config("fast").admissible_size(112) == 112
    assert preset_config("paper").admissible_size(500) == 508
    assert preset_config("paper").admissible_size(1) == 188


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_receptive_radius_is_exact(depth: int) -> None:
    """Probe the field of view with gradients: it must equal the analytic radius."""
    config = UNetConfig(depth=depth, base_channels=1, batch_norm=False)
    net = UNet(config).double()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()  # all-positive weights on positive input: every ReLU passes gradients
    size, centre, found = 128, 64, 0
    for offset in range(config.grid):
        x = (torch.rand(1, 1, size, size, dtype=torch.float64) + 1).requires_grad_(True)
        net(x)[0, 1, centre + offset, centre + offset].backward()
        rows, cols = torch.nonzero(x.grad[0, 0], as_tuple=True)
        found = max(found, int((rows - centre - offset).abs().max()))
        found = max(found, int((cols - centre - offset).abs().max()))
    assert found == config.receptive_radius
    assert config.halo >= config.receptive_radius
    assert config.halo % config.grid == 0


def test_he_initialisation() -> None:
    net = UNet(UNetConfig(base_channels=32, depth=1, batch_norm=False))
    conv = net.inc[0]
    fan_in = conv.weight[0].numel()
    std = float(conv.weight.detach().std())
    assert abs(std - (2.0 / fan_in) ** 0.5) < 0.2 * (2.0 / fan_in) ** 0.5
    assert float(conv.bias.detach().abs().max()) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_channels": 0}, "in_channels must be a positive integer, got 0"),
        ({"n_classes": 1}, "n_classes must be at least 2"),
        ({"padding": "full"}, "padding must be 'same' or 'valid', got 'full'"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UNetConfig(**kwargs)


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset_config("huge")


def test_config_round_trip() -> None:
    config = preset_config("paper", in_channels=3)
    assert UNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown U-Net configuration keys"):
        UNetConfig.from_dict({**config.to_dict(), "kernel": 5})


def test_trained_model_copy_is_independent() -> None:
    model = TrainedModel(UNet(UNetConfig(depth=1, base_channels=2)), gap=2)
    copy = model.copy()
    with torch.no_grad():
        next(model.net.parameters()).add_(1.0)
    first = next(copy.net.parameters())
    assert not torch.equal(first, next(model.net.parameters()))
    assert copy.gap == 2 and copy.config == model.config
