"""Fixtures every test package may use: one torch thread for tiny networks, tiny models."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="module")
def one_thread() -> Any:
    """One torch thread for a module's tests (``pytestmark = usefixtures("one_thread")``).

    Tiny tensors gain nothing from threads, and on a busy, shared machine OpenMP's barriers make
    them many times slower.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_model() -> Any:
    """Factory of untrained depth-2 U-Nets with 4 base channels.

    ``tiny_model(in_channels=1, seed=0, **config)``: the seed is set before the network is
    built; ``config`` overrides other :class:`~napari_unet.core.model.UNetConfig` fields.
    """
    import torch

    from napari_unet.core.model import TrainedModel, UNet, UNetConfig

    def make(in_channels: int = 1, seed: int = 0, **config: Any) -> TrainedModel:
        torch.manual_seed(seed)
        fields = {"in_channels": in_channels, "depth": 2, "base_channels": 4, **config}
        return TrainedModel(UNet(UNetConfig(**fields)))

    return make
