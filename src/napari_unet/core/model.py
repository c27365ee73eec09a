"""The U-Net of Ronneberger et al. (2015): configuration, network and tiling geometry.

The network is built from a few small typed blocks (:class:`DoubleConv`, :class:`Down`,
:class:`Up`) composed by :class:`UNet`. The geometry helpers on :class:`UNetConfig` say which
input sizes the network accepts, how large its output is, and how many pixels of context (the
halo) an output pixel needs, which is what exact overlap-tile inference is built on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "PRESETS",
    "DoubleConv",
    "Down",
    "TrainedModel",
    "UNet",
    "UNetConfig",
    "Up",
    "preset_config",
]

Padding = Literal["same", "valid"]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a U-Net.

    Parameters
    ----------
    in_channels : int
        Number of image channels the network reads (1 for grey images, 3 for RGB).
    n_classes : int
        Number of output classes; 2 (background, foreground) for cell segmentation.
    depth : int
        Number of 2x2 max-pooling steps in the contracting path (4 in the paper).
    base_channels : int
        Feature channels of the first level; each level down doubles them (64 in the paper).
    padding : {'same', 'valid'}
        ``'valid'``: unpadded convolutions as in the paper, the output is smaller than the input.
        ``'same'``: zero-padded convolutions, the output has the size of the input.
    batch_norm : bool
        Batch normalisation after every convolution.
    dropout : float
        Dropout probability at the end of the contracting path (0 disables it).
    """

    in_channels: int = 1
    n_classes: int = 2
    depth: int = 4
    base_channels: int = 16
    padding: Padding = "same"
    batch_norm: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("in_channels", "n_classes", "depth", "base_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {self.n_classes}")
        if self.padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {self.padding!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a plain dictionary (for model files)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Build a configuration from :meth:`to_dict` output; unknown keys are an error."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown U-Net configuration keys: {sorted(unknown)}")
        return cls(**data)

    # -- geometry ------------------------------------------------------------------------------
    @property
    def grid(self) -> int:
        """Tile origins must lie on this grid (``2 ** depth``) for tiles to match one pass."""
        return 2**self.depth

    @property
    def halo(self) -> int:
        """Pixels of context needed on each side of an output tile.

        For ``'valid'`` padding this is the number of pixels the network loses per side (92 for
        the paper's depth-4 net). For ``'same'`` padding it is the receptive radius rounded up to
        the tile grid, so that the output of a tile cropped by the halo is exactly the output of
        one whole-image pass.
        """
        if self.padding == "valid":
            return (self._valid_min_input() - self.output_size(self._valid_min_input())) // 2
        r = self.receptive_radius
        return int(math.ceil(r / self.grid) * self.grid)

    @property
    def receptive_radius(self) -> int:
        """Largest distance, in input pixels, from an output pixel to an input pixel it reads.

        Computed exactly by propagating index intervals backwards through the network, taking
        the worst case over the position of the output pixel on the pooling grid.
        """
        return _receptive_radius(self.depth)

    def output_size(self, input_size: int) -> int:
        """Spatial output size for an input of ``input_size`` pixels along one axis.

        Raises
        ------
        ValueError
            If the network does not accept ``input_size``; the message names the nearest
            admissible sizes.
        """
        n = int(input_size)
        if self.padding == "same":
            if n < self.grid or n % self.grid:
                self._raise_inadmissible(n)
            return n
        size = _valid_output_size(n, self.depth)
        if size is None:
            self._raise_inadmissible(n)
        return size

    def is_admissible(self, input_size: int) -> bool:
        """Whether the network accepts ``input_size`` pixels along one axis."""
        try:
            self.output_size(input_size)
        except ValueError:
            return False
        return True

    def admissible_size(self, n: int) -> int:
        """Smallest admissible input size that is at least ``n``."""
        n = max(int(n), 1)
        if self.padding == "same":
            return int(math.ceil(n / self.grid) * self.grid)
        first = self._valid_min_input()
        if n <= first:
            return first
        return first + int(math.ceil((n - first) / self.grid) * self.grid)

    def input_size_for_output(self, output_size: int) -> int:
        """Smallest admissible input size whose output is at least ``output_size`` pixels."""
        if self.padding == "same":
            return self.admissible_size(output_size)
        return self.admissible_size(int(output_size) + 2 * self.halo)

    def _valid_min_input(self) -> int:
        n = self.grid
        while _valid_output_size(n, self.depth) is None:
            n += 1
        return n

    def _raise_inadmissible(self, n: int) -> None:
        below = self._largest_admissible_below(n)
        above = self.admissible_size(n + 1) if n >= 1 else self.admissible_size(1)
        near = f"{below} or {above}" if below else f"{above}"
        raise ValueError(
            f"input size {n} is not admissible for a depth-{self.depth} U-Net with "
            f"{self.padding!r} padding; nearest admissible sizes: {near}"
        )

    def _largest_admissible_below(self, n: int) -> int | None:
        if self.padding == "same":
            below = (n - 1) // self.grid * self.grid
            return below if below >= self.grid else None
        first = self._valid_min_input()
        if n <= first:
            return None
        return first + (n - 1 - first) // self.grid * self.grid


def _valid_output_size(n: int, depth: int) -> int | None:
    """Output size of a valid-padding U-Net for input size ``n``, or None if inadmissible."""
    size = n
    for _ in range(depth):
        size -= 4
        if size < 2 or size % 2:
            return None
        size //= 2
    size -= 4
    for _ in range(depth):
        if size < 1:
            return None
        size = size * 2 - 4
    return size if size >= 1 else None


def _receptive_radius(depth: int) -> int:
    """Exact receptive radius of a depth-``depth`` U-Net with two 3x3 convs per level."""

    def expanding(lo: int, hi: int, level: int) -> tuple[int, int]:
        # Interval [lo, hi] of outputs at ``level`` of the expanding path (level == depth is the
        # bottleneck) -> interval of level-0 input pixels it depends on.
        lo, hi = lo - 2, hi + 2  # the two 3x3 convolutions of this level
        if level == depth:
            return contracting_input(lo, hi, level)
        a, b = contracting_input(lo, hi, level)  # skip connection
        c, d = expanding(lo // 2, hi // 2, level + 1)  # 2x2 stride-2 transposed conv
        return min(a, c), max(b, d)

    def contracting_input(lo: int, hi: int, level: int) -> tuple[int, int]:
        # Interval at the input of the convolutions of ``level`` (after pooling when level > 0).
        if level == 0:
            return lo, hi
        lo, hi = 2 * lo, 2 * hi + 1  # 2x2 max-pooling from level - 1
        return contracting_input(lo - 2, hi + 2, level - 1)

    radius = 0
    for p in range(2**depth):
        a, b = expanding(p, p, 0)
        radius = max(radius, p - a, b - p)
    return radius


PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"base_channels": 16, "padding": "same", "batch_norm": True, "dropout": 0.0},
    "paper": {"base_channels": 64, "padding": "valid", "batch_norm": False, "dropout": 0.5},
}


def preset_config(name: str, in_channels: int = 1, **overrides: Any) -> UNetConfig:
    """Return the configuration of a named preset.

    Parameters
    ----------
    name : {'fast', 'paper'}
        ``'fast'``: base 16 channels, same padding, batch norm; trains in minutes on a laptop CPU.
        ``'paper'``: base 64 channels, valid convolutions, dropout 0.5 (572 -> 388 tiles,
        31.0 M parameters), as in Ronneberger et al. (2015).
    in_channels : int
        Number of image channels.
    **overrides
        Any :class:`UNetConfig` field to change.

    Returns
    -------
    UNetConfig
        The configuration.

    Examples
    --------
    >>> preset_config("paper").output_size(572)
    388
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return UNetConfig(in_channels=in_channels, **{**PRESETS[name], **overrides})


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by optional batch norm and a ReLU."""

    def __init__(self, in_ch: int, out_ch: int, padding: Padding, batch_norm: bool) -> None:
        pad = 1 if padding == "same" else 0
        layers: list[nn.Module] = []
        for c_in in (in_ch, out_ch):
            layers.append(nn.Conv2d(c_in, out_ch, 3, padding=pad, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Down(nn.Sequential):
    """2x2 max-pooling followed by a :class:`DoubleConv`."""

    def __init__(self, in_ch: int, out_ch: int, padding: Padding, batch_norm: bool) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_ch, out_ch, padding, batch_norm))


class Up(nn.Module):
    """2x2 up-convolution, concatenation with the (cropped) skip features, :class:`DoubleConv`."""

    def __init__(self, in_ch: int, out_ch: int, padding: Padding, batch_norm: bool) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * out_ch, out_ch, padding, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample ``x``, crop ``skip`` to its size (valid padding) and convolve both."""
        x = self.up(x)
        dy = (skip.shape[-2] - x.shape[-2]) // 2
        dx = (skip.shape[-1] - x.shape[-1]) // 2
        if dy or dx:
            skip = skip[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net for 2D images: ``(N, C, H, W)`` -> class logits ``(N, n_classes, H', W')``.

    Parameters
    ----------
    config : UNetConfig
        The architecture. ``H`` and ``W`` must be admissible sizes (see
        :meth:`UNetConfig.output_size`).

    Examples
    --------
    >>> net = UNet(UNetConfig(depth=2, base_channels=4))
    >>> net(torch.zeros(1, 1, 16, 16)).shape
    torch.Size([1, 2, 16, 16])
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c, p, bn = config.base_channels, config.padding, config.batch_norm
        widths = [c * 2**level for level in range(config.depth + 1)]
        self.inc = DoubleConv(config.in_channels, widths[0], p, bn)
        self.downs = nn.ModuleList(
            Down(widths[i], widths[i + 1], p, bn) for i in range(config.depth)
        )
        self.dropout = nn.Dropout2d(config.dropout) if config.dropout > 0 else nn.Identity()
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], p, bn) for i in reversed(range(config.depth))
        )
        self.head = nn.Conv2d(widths[0], config.n_classes, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He (Kaiming normal) initialisation of every convolution, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for the batch ``x``."""
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = self.dropout(skips.pop())
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)

    @property
    def n_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


@dataclass
class TrainedModel:
    """A network together with everything needed to apply it to new images.

    This is what training returns, what model files hold and what inference takes.

    Parameters
    ----------
    net : UNet
        The network (its configuration is ``net.config``).
    normalization : dict
        How images are normalised before they enter the network, as produced by
        :func:`napari_unet.core.normalize.normalization_spec`.
    gap : int
        Width in pixels of the gap cut between touching instances in the training targets;
        post-processing grows instances back by this width.
    training : dict
        Training settings and a summary of the run (plain Python values only).
    """

    net: UNet
    normalization: dict[str, Any] = field(
        default_factory=lambda: {"method": "percentile", "low": 1.0, "high": 99.8}
    )
    gap: int = 1
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> UNetConfig:
        """The network's architecture."""
        return self.net.config

    def copy(self) -> TrainedModel:
        """Return an independent copy (weights included) on the CPU."""
        net = UNet(self.config)
        net.load_state_dict({k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()})
        return replace(
            self,
            net=net,
            normalization=dict(self.normalization),
            training=dict(self.training),
        )
