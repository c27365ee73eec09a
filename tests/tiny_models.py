"""Tiny U-Nets that several test modules build alike (``tests/`` is on pytest's pythonpath).

Their batch-norm layers get non-trivial running statistics from one random batch, so that
evaluation mode, buffers and model files are exercised as well as the weights.
"""

from __future__ import annotations

from typing import Any

import torch

from napari_unet.core.model import TrainedModel, UNet, UNetConfig


def with_statistics(net: UNet, size: int, scale: float) -> UNet:
    """``net`` in evaluation mode, its batch norm (if any) fed one batch ``N(1, scale)``.

    Parameters
    ----------
    net : UNet
        A new network.
    size : int
        Edge of the two random images of the batch.
    scale : float
        Their standard deviation (their mean is 1).

    Returns
    -------
    UNet
        The same network, in evaluation mode.
    """
    if net.config.batch_norm:
        net.train()
        with torch.no_grad():
            net(torch.randn(2, net.config.in_channels, size, size) * scale + 1)
    return net.eval()


def tiled_model(
    padding: str = "same",
    in_channels: int = 1,
    seed: int = 0,
    depth: int = 2,
    n_classes: int = 2,
) -> TrainedModel:
    """The inference tests' model: batch norm with ``'same'`` padding, none with ``'valid'``.

    Parameters
    ----------
    padding : {'same', 'valid'}
        The convolutions' padding.
    in_channels, seed, depth, n_classes : int
        Channels in, the torch seed set first, levels, classes out.

    Returns
    -------
    TrainedModel
        An untrained 4-channel-wide model.
    """
    torch.manual_seed(seed)
    config = UNetConfig(
        in_channels=in_channels,
        n_classes=n_classes,
        depth=depth,
        base_channels=4,
        padding=padding,
        batch_norm=padding == "same",
    )
    return TrainedModel(with_statistics(UNet(config), 64, 2.0))


def file_net(seed: int = 0, **config: Any) -> UNet:
    """The model-file tests' network: depth 2, 4 channels, ``config`` on top.

    Parameters
    ----------
    seed : int
        The torch seed set first.
    **config
        Other :class:`UNetConfig` fields.

    Returns
    -------
    UNet
        An untrained network in evaluation mode.
    """
    torch.manual_seed(seed)
    return with_statistics(UNet(UNetConfig(**{"depth": 2, "base_channels": 4, **config})), 32, 3.0)


def file_model(training: dict[str, Any], seed: int = 0, **config: Any) -> TrainedModel:
    """The model-file tests' model: :func:`file_net`, percentile (2, 99.5), gap 2, ``training``.

    Parameters
    ----------
    training : dict
        The model's training record.
    seed : int
        The torch seed set first.
    **config
        Other :class:`UNetConfig` fields.

    Returns
    -------
    TrainedModel
        An untrained model with a non-default normalisation and gap.
    """
    return TrainedModel(
        file_net(seed, **config),
        normalization={"method": "percentile", "low": 2.0, "high": 99.5},
        gap=2,
        training=training,
    )
