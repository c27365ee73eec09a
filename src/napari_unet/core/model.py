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

from .voxels import check_voxel_size

__all__ = [
    "ANISOTROPY_RATIO",
    "MODES",
    "PRESETS",
    "PRESETS_3D",
    "VOXEL_SIZE_TOLERANCE",
    "DoubleConv",
    "Down",
    "TrainedModel",
    "UNet",
    "UNetConfig",
    "Up",
    "check_image_voxel_size",
    "check_mode",
    "default_class_names",
    "plan_levels",
    "preset_config",
]

Padding = Literal["same", "valid"]

#: An axis is pooled, and convolved 3 wide, only while its spacing is less than this many times
#: the finest spacing at that level (the nnU-Net planning rule).
ANISOTROPY_RATIO = 2.0

Levels = tuple[tuple[int, ...], ...]


def plan_levels(voxel_size: tuple[float, ...], depth: int) -> tuple[Levels, Levels]:
    """Pooling and kernel shape per level from the voxel size (the nnU-Net planning rule).

    At each level an axis is max-pooled by 2, and convolved with 3-wide kernels, only while its
    spacing is less than :data:`ANISOTROPY_RATIO` times the finest spacing at that level;
    otherwise it is left unpooled and convolved 1 wide. Pooling doubles the spacing of the
    pooled axes, so a coarse z axis joins in a few levels down and the receptive field becomes
    roughly isotropic in physical units.

    Parameters
    ----------
    voxel_size : tuple of float
        Spacing per spatial axis, ``(y, x)`` or ``(z, y, x)``.
    depth : int
        Number of pooling steps.

    Returns
    -------
    pools : tuple of tuple of int
        ``depth`` pooling factors per axis (1 or 2), level 0 -> 1 first.
    kernels : tuple of tuple of int
        ``depth + 1`` kernel widths per axis (1 or 3), level 0 first.

    Examples
    --------
    >>> pools, kernels = plan_levels((3.0, 1.0, 1.0), depth=3)
    >>> pools
    ((1, 2, 2), (2, 2, 2), (2, 2, 2))
    >>> kernels
    ((1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3))
    """
    spacing = [float(s) for s in voxel_size]
    pools: list[tuple[int, ...]] = []
    kernels: list[tuple[int, ...]] = []
    for level in range(depth + 1):
        finest = min(spacing)
        wide = [s / finest < ANISOTROPY_RATIO for s in spacing]
        kernels.append(tuple(3 if w else 1 for w in wide))
        if level < depth:
            pools.append(tuple(2 if w else 1 for w in wide))
            spacing = [s * p for s, p in zip(spacing, pools[-1], strict=True)]
    return tuple(pools), tuple(kernels)


#: Relative difference between an image's voxel size and a model's that still counts as equal.
VOXEL_SIZE_TOLERANCE = 0.02


def check_image_voxel_size(
    config: UNetConfig, voxel_size: object, what: str = "the image's voxel size"
) -> None:
    """Refuse an image whose voxel size differs from the one a 3D model was trained at.

    A 3D network's pooling and receptive field are planned for its voxel size, and the sizes
    of the nuclei it learnt are in those voxels: an image of another voxel size is refused
    (resample it to the model's voxel size first) rather than silently segmented badly.

    Parameters
    ----------
    config : UNetConfig
        The model's architecture.
    voxel_size : sequence of float or None
        The image's voxel size (``(z, y, x)`` for a 3D model); None: unknown, accepted.
    what : str
        What to call the value in messages (``'--scale'`` on the command line).

    Raises
    ------
    ValueError
        On a voxel size of the wrong length or with non-positive values, or one that differs
        from the model's by more than :data:`VOXEL_SIZE_TOLERANCE` (relative) on some axis.

    Examples
    --------
    >>> config = UNetConfig(spatial_dims=3, voxel_size=(2.0, 0.5, 0.5))
    >>> check_image_voxel_size(config, (2, 0.5, 0.5))
    """
    if voxel_size is None:
        return
    size = check_voxel_size(voxel_size, config.spatial_dims, what)
    trained = config.spacing
    if config.voxel_size is None and config.spatial_dims == 2:
        return  # a 2D model without a pixel size: any pixel size is taken as it is
    if any(abs(a - b) > VOXEL_SIZE_TOLERANCE * b for a, b in zip(size, trained, strict=True)):
        axes = "(z, y, x)" if config.spatial_dims == 3 else "(y, x)"
        raise ValueError(
            f"{what} {size} differs from the voxel size {trained} {axes} the model was trained "
            "at; resample the image to the model's voxel size first (napari-unet does not "
            "rescale)"
        )


#: What a model is trained for: instances of cells, or classes painted as scribbles.
MODES = ("cells", "classes")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a U-Net with 2 or 3 spatial dimensions.

    Parameters
    ----------
    in_channels : int
        Number of image channels the network reads (1 for grey images, 3 for RGB).
    n_classes : int
        Number of output classes; 2 (background, foreground) for cell segmentation.
    depth : int
        Number of max-pooling steps in the contracting path (4 in the paper).
    base_channels : int
        Feature channels of the first level; each level down doubles them (64 in the paper).
    padding : {'same', 'valid'}
        ``'valid'``: unpadded convolutions as in the paper, the output is smaller than the input.
        ``'same'``: zero-padded convolutions, the output has the size of the input.
    batch_norm : bool
        Batch normalisation after every convolution.
    dropout : float
        Dropout probability at the end of the contracting path (0 disables it).
    spatial_dims : {2, 3}
        2 for images ``(N, C, Y, X)``, 3 for volumes ``(N, C, Z, Y, X)``.
    voxel_size : tuple of float, optional
        Spacing per spatial axis (``(y, x)`` or ``(z, y, x)``, any one unit); None: isotropic.
        It sets the pooling and kernel shape of every level (:func:`plan_levels`):
        :attr:`pools` and :attr:`kernels`.
    """

    in_channels: int = 1
    n_classes: int = 2
    depth: int = 4
    base_channels: int = 16
    padding: Padding = "same"
    batch_norm: bool = True
    dropout: float = 0.0
    spatial_dims: int = 2
    voxel_size: tuple[float, ...] | None = None

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
        if self.spatial_dims not in (2, 3) or isinstance(self.spatial_dims, bool):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
        if self.voxel_size is not None:
            size = check_voxel_size(self.voxel_size, self.spatial_dims)
            object.__setattr__(self, "voxel_size", size)

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a plain dictionary (for model files).

        A 2D network without a voxel size leaves ``spatial_dims`` and ``voxel_size`` out, so
        its record is the one earlier versions wrote.
        """
        data = asdict(self)
        if self.spatial_dims == 2 and self.voxel_size is None:
            del data["spatial_dims"], data["voxel_size"]
        elif self.voxel_size is not None:
            data["voxel_size"] = list(self.voxel_size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Build a configuration from :meth:`to_dict` output; unknown keys are an error."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown U-Net configuration keys: {sorted(unknown)}")
        return cls(**data)

    # -- per-level shape -----------------------------------------------------------------------
    @property
    def spacing(self) -> tuple[float, ...]:
        """The voxel size, isotropic ones when none is set."""
        return self.voxel_size or (1.0,) * self.spatial_dims

    @property
    def pools(self) -> Levels:
        """Max-pooling factor per axis for each of the ``depth`` steps (:func:`plan_levels`)."""
        return plan_levels(self.spacing, self.depth)[0]

    @property
    def kernels(self) -> Levels:
        """Kernel width per axis for each of the ``depth + 1`` levels (:func:`plan_levels`)."""
        return plan_levels(self.spacing, self.depth)[1]

    def _axis(self, axis: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Pools and kernels along one spatial axis (negative counts from the last)."""
        if not -self.spatial_dims <= axis < self.spatial_dims:
            raise ValueError(
                f"axis must be in [-{self.spatial_dims}, {self.spatial_dims}), got {axis}"
            )
        pools, kernels = plan_levels(self.spacing, self.depth)
        return tuple(p[axis] for p in pools), tuple(k[axis] for k in kernels)

    # -- geometry ------------------------------------------------------------------------------
    @property
    def grids(self) -> tuple[int, ...]:
        """Per axis, the grid tile origins must lie on (the product of that axis's pooling)."""
        return tuple(self.axis_grid(a) for a in range(self.spatial_dims))

    @property
    def halos(self) -> tuple[int, ...]:
        """Per axis, the context an output tile needs on each side (see :attr:`halo`)."""
        return tuple(self.axis_halo(a) for a in range(self.spatial_dims))

    @property
    def receptive_radii(self) -> tuple[int, ...]:
        """Per axis, the exact receptive radius (see :attr:`receptive_radius`)."""
        return tuple(_receptive_radius(*self._axis(a)) for a in range(self.spatial_dims))

    @property
    def grid(self) -> int:
        """In-plane grid tile origins must lie on (``2 ** depth``); see :attr:`grids`."""
        return self.axis_grid(-1)

    @property
    def halo(self) -> int:
        """In-plane pixels of context needed on each side of an output tile (:attr:`halos`).

        For ``'valid'`` padding this is the number of pixels the network loses per side (92 for
        the paper's depth-4 net). For ``'same'`` padding it is the receptive radius rounded up to
        the tile grid, so that the output of a tile cropped by the halo is exactly the output of
        one whole-image pass.
        """
        return self.axis_halo(-1)

    @property
    def receptive_radius(self) -> int:
        """Largest in-plane distance, in input pixels, from an output pixel to one it reads.

        Computed exactly by propagating index intervals backwards through the network, taking
        the worst case over the position of the output pixel on the pooling grid.
        """
        return _receptive_radius(*self._axis(-1))

    def axis_grid(self, axis: int = -1) -> int:
        """The pooling grid along ``axis`` (product of its pooling factors)."""
        return math.prod(self._axis(axis)[0])

    def axis_halo(self, axis: int = -1) -> int:
        """The halo along ``axis`` (see :attr:`halo`)."""
        if self.padding == "valid":
            first = self._valid_min_input(axis)
            return (first - self.output_size(first, axis)) // 2
        grid = self.axis_grid(axis)
        return int(math.ceil(_receptive_radius(*self._axis(axis)) / grid) * grid)

    def output_size(self, input_size: int, axis: int = -1) -> int:
        """Output size along ``axis`` for an input of ``input_size`` pixels.

        Raises
        ------
        ValueError
            If the network does not accept ``input_size``; the message names the nearest
            admissible sizes.
        """
        n = int(input_size)
        if self.padding == "same":
            grid = self.axis_grid(axis)
            if n < grid or n % grid:
                self._raise_inadmissible(n, axis)
            return n
        size = _valid_output_size(n, *self._axis(axis))
        if size is None:
            self._raise_inadmissible(n, axis)
        return size

    def is_admissible(self, input_size: int, axis: int = -1) -> bool:
        """Whether the network accepts ``input_size`` pixels along ``axis``."""
        try:
            self.output_size(input_size, axis)
        except ValueError:
            return False
        return True

    def admissible_size(self, n: int, axis: int = -1) -> int:
        """Smallest admissible input size along ``axis`` that is at least ``n``."""
        n = max(int(n), 1)
        grid = self.axis_grid(axis)
        if self.padding == "same":
            return int(math.ceil(n / grid) * grid)
        first = self._valid_min_input(axis)
        if n <= first:
            return first
        return first + int(math.ceil((n - first) / grid) * grid)

    def input_size_for_output(self, output_size: int, axis: int = -1) -> int:
        """Smallest admissible input size whose output is at least ``output_size`` pixels."""
        if self.padding == "same":
            return self.admissible_size(output_size, axis)
        return self.admissible_size(int(output_size) + 2 * self.axis_halo(axis), axis)

    def largest_admissible_below(self, n: int, axis: int = -1) -> int | None:
        """Largest admissible input size along ``axis`` below ``n``; None if there is none."""
        grid = self.axis_grid(axis)
        if self.padding == "same":
            below = (n - 1) // grid * grid
            return below if below >= grid else None
        first = self._valid_min_input(axis)
        if n <= first:
            return None
        return first + (n - 1 - first) // grid * grid

    def admissible_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """:meth:`admissible_size` along every spatial axis of ``shape``."""
        return tuple(self.admissible_size(n, a) for a, n in enumerate(self._spatial(shape)))

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """:meth:`output_size` along every spatial axis of ``shape``."""
        return tuple(self.output_size(n, a) for a, n in enumerate(self._spatial(shape)))

    def _spatial(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(int(n) for n in shape)
        if len(shape) != self.spatial_dims:
            raise ValueError(
                f"expected {self.spatial_dims} spatial sizes for a {self.spatial_dims}D network, "
                f"got {shape}"
            )
        return shape

    def _valid_min_input(self, axis: int = -1) -> int:
        pools, kernels = self._axis(axis)
        n = math.prod(pools)
        while _valid_output_size(n, pools, kernels) is None:
            n += 1
        return n

    def _raise_inadmissible(self, n: int, axis: int) -> None:
        below = self.largest_admissible_below(n, axis)
        above = self.admissible_size(n + 1, axis) if n >= 1 else self.admissible_size(1, axis)
        near = f"{below} or {above}" if below else f"{above}"
        where = "" if self.spatial_dims == 2 else f" along axis {axis % self.spatial_dims}"
        raise ValueError(
            f"input size {n}{where} is not admissible for a depth-{self.depth} U-Net with "
            f"{self.padding!r} padding; nearest admissible sizes: {near}"
        )


def _valid_output_size(n: int, pools: tuple[int, ...], kernels: tuple[int, ...]) -> int | None:
    """Output size along an axis of a valid-padding U-Net for input size ``n``, or None if
    inadmissible; ``pools`` and ``kernels`` are that axis's factors and widths per level."""
    size = n
    for p, k in zip(pools, kernels, strict=False):
        size -= 2 * (k - 1)
        if size < p or size % p:
            return None
        size //= p
    size -= 2 * (kernels[-1] - 1)
    if size < 1:
        return None
    for p, k in zip(reversed(pools), reversed(kernels[:-1]), strict=True):
        size = size * p - 2 * (k - 1)
        if size < 1:
            return None
    return size


def _receptive_radius(pools: tuple[int, ...], kernels: tuple[int, ...]) -> int:
    """Exact receptive radius along an axis with these pooling factors and kernel widths (two
    convolutions per level)."""
    depth = len(pools)

    def expanding(lo: int, hi: int, level: int) -> tuple[int, int]:
        # Interval [lo, hi] of outputs at ``level`` of the expanding path (level == depth is the
        # bottleneck) -> interval of level-0 input pixels it depends on.
        reach = kernels[level] - 1  # the two convolutions of this level
        lo, hi = lo - reach, hi + reach
        if level == depth:
            return contracting_input(lo, hi, level)
        a, b = contracting_input(lo, hi, level)  # skip connection
        p = pools[level]
        c, d = expanding(lo // p, hi // p, level + 1)  # stride-p transposed conv
        return min(a, c), max(b, d)

    def contracting_input(lo: int, hi: int, level: int) -> tuple[int, int]:
        # Interval at the input of the convolutions of ``level`` (after pooling when level > 0).
        if level == 0:
            return lo, hi
        p, reach = pools[level - 1], kernels[level - 1] - 1
        lo, hi = p * lo, p * hi + p - 1  # max-pooling from level - 1
        return contracting_input(lo - reach, hi + reach, level - 1)

    radius = 0
    for p in range(math.prod(pools)):
        a, b = expanding(p, p, 0)
        radius = max(radius, p - a, b - p)
    return radius


PRESETS: dict[str, dict[str, Any]] = {
    "fast": {
        "depth": 3,
        "base_channels": 16,
        "padding": "same",
        "batch_norm": True,
        "dropout": 0.0,
    },
    "paper": {"base_channels": 64, "padding": "valid", "batch_norm": False, "dropout": 0.5},
}

#: What the presets change for volumes: ``fast`` one level shallower (a quarter of the halo's
#: voxels) and half the channels (base 8: a 3 x 3 x 3 convolution costs 27 times a pixel's
#: 1 x 1, so that a CPU trains it in minutes; ``bench/bench_3d.py``), ``paper`` the 3D U-Net of
#: Cicek et al. (2016): depth 3, base 32, batch norm, valid convolutions (132 -> 44 voxels per
#: isotropic axis). A model file stores its configuration, so models made with other presets
#: load as they were.
PRESETS_3D: dict[str, dict[str, Any]] = {
    "fast": {"depth": 3, "base_channels": 8},
    "paper": {"depth": 3, "base_channels": 32, "batch_norm": True, "dropout": 0.0},
}


def preset_config(
    name: str,
    in_channels: int = 1,
    *,
    spatial_dims: int = 2,
    voxel_size: tuple[float, ...] | None = None,
    **overrides: Any,
) -> UNetConfig:
    """Return the configuration of a named preset.

    Parameters
    ----------
    name : {'fast', 'paper'}
        ``'fast'``: depth 3, base 16 channels, same padding, batch norm (receptive radius 51 px,
        halo 56); trains in minutes on a laptop CPU. Depth 4 (107 px, the bundled ``nuclei``
        model) learnt a few painted nuclei worse: ``TrainSettings.depth``, docs/benchmarks.md.
        ``'paper'``: base 64 channels, valid convolutions, dropout 0.5 (572 -> 388 tiles,
        31.0 M parameters), as in Ronneberger et al. (2015). In 3D see :data:`PRESETS_3D`.
    in_channels : int
        Number of image channels.
    spatial_dims : {2, 3}
        2 for images, 3 for volumes.
    voxel_size : tuple of float, optional
        Spacing per spatial axis (sets the per-level pooling and kernels); None: isotropic.
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
    >>> preset_config("paper", spatial_dims=3).output_size(132)
    44
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    fields = {**PRESETS[name], **(PRESETS_3D[name] if spatial_dims == 3 else {}), **overrides}
    return UNetConfig(
        in_channels=in_channels, spatial_dims=spatial_dims, voxel_size=voxel_size, **fields
    )


_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_UPCONV = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}


class DoubleConv(nn.Sequential):
    """Two convolutions (3x3, or ``kernel`` per axis), each with optional batch norm and a ReLU.

    The number of spatial dimensions is ``len(kernel)``; ``out_channels`` is ``out_ch``.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        padding: Padding,
        batch_norm: bool,
        kernel: tuple[int, ...] = (3, 3),
    ) -> None:
        dims = len(kernel)
        pad = tuple((k - 1) // 2 if padding == "same" else 0 for k in kernel)
        layers: list[nn.Module] = []
        for c_in in (in_ch, out_ch):
            layers.append(_CONV[dims](c_in, out_ch, kernel, padding=pad, bias=not batch_norm))
            if batch_norm:
                layers.append(_NORM[dims](out_ch))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_ch


def _window(pool: tuple[int, ...]) -> int | tuple[int, ...]:
    """A pooling window as torch takes it: one int when every axis is alike."""
    return pool if len(set(pool)) > 1 else pool[0]


class Down(nn.Sequential):
    """Max-pooling (2x2, or ``pool`` per axis) followed by the level's :class:`DoubleConv`."""

    def __init__(self, pool: tuple[int, ...], conv: DoubleConv) -> None:
        super().__init__(_POOL[len(pool)](_window(pool)), conv)


class Up(nn.Module):
    """Up-convolution (2x2, or ``pool`` per axis) from ``in_ch`` channels, concatenation with
    the (cropped) skip features, the level's :class:`DoubleConv` (which takes twice its output
    channels)."""

    def __init__(self, in_ch: int, pool: tuple[int, ...], conv: DoubleConv) -> None:
        super().__init__()
        size = _window(pool)
        self.up = _UPCONV[len(pool)](in_ch, conv.out_channels, kernel_size=size, stride=size)
        self.conv = conv

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample ``x``, crop ``skip`` to its size (valid padding) and convolve both."""
        x = self.up(x)
        offsets = [(s - t) // 2 for s, t in zip(skip.shape[2:], x.shape[2:], strict=True)]
        if any(offsets):
            crop = tuple(slice(o, o + t) for o, t in zip(offsets, x.shape[2:], strict=True))
            skip = skip[(slice(None), slice(None), *crop)]
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net for images ``(N, C, H, W)`` or volumes ``(N, C, D, H, W)`` -> class logits.

    Parameters
    ----------
    config : UNetConfig
        The architecture. The spatial sizes must be admissible (see
        :meth:`UNetConfig.output_size`); ``config.spatial_dims`` says whether the network is 2D
        or 3D, ``config.pools`` and ``config.kernels`` give each level's shape.

    Examples
    --------
    >>> net = UNet(UNetConfig(depth=2, base_channels=4))
    >>> net(torch.zeros(1, 1, 16, 16)).shape
    torch.Size([1, 2, 16, 16])
    >>> net = UNet(UNetConfig(depth=2, base_channels=4, spatial_dims=3, voxel_size=(4, 1, 1)))
    >>> net(torch.zeros(1, 1, 6, 16, 16)).shape
    torch.Size([1, 2, 6, 16, 16])
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c, p, bn = config.base_channels, config.padding, config.batch_norm
        pools, kernels = config.pools, config.kernels
        widths = [c * 2**level for level in range(config.depth + 1)]
        self.inc = DoubleConv(config.in_channels, widths[0], p, bn, kernels[0])
        self.downs = nn.ModuleList(
            Down(pools[i], DoubleConv(widths[i], widths[i + 1], p, bn, kernels[i + 1]))
            for i in range(config.depth)
        )
        dropout = _DROPOUT[config.spatial_dims]
        self.dropout = dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.ups = nn.ModuleList(
            Up(widths[i + 1], pools[i], DoubleConv(2 * widths[i], widths[i], p, bn, kernels[i]))
            for i in reversed(range(config.depth))
        )
        self.head = _CONV[config.spatial_dims](widths[0], config.n_classes, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He (Kaiming normal) initialisation of every convolution, zero biases."""
        convs = (*_CONV.values(), *_UPCONV.values())
        for m in self.modules():
            if isinstance(m, convs):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, tuple(_NORM.values())):
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
    mode : {'cells', 'classes'}
        What the network predicts: ``'cells'``, foreground probability made into instances
        (two output classes); ``'classes'``, one probability per class of a semantic
        segmentation trained from scribbles (``net.config.n_classes`` classes).
    class_names : tuple of str
        Names of the classes of a ``'classes'`` model, class 1 first (empty for ``'cells'``).
    """

    net: UNet
    normalization: dict[str, Any] = field(
        default_factory=lambda: {"method": "percentile", "low": 1.0, "high": 99.8}
    )
    gap: int = 1
    training: dict[str, Any] = field(default_factory=dict)
    mode: str = "cells"
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        self.class_names = tuple(str(name) for name in self.class_names)
        if self.mode == "classes" and len(self.class_names) != self.config.n_classes:
            self.class_names = default_class_names(self.config.n_classes, self.class_names)

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


def default_class_names(n_classes: int, names: Any = ()) -> tuple[str, ...]:
    """Names of ``n_classes`` classes: the given ones, then ``'class k'`` for the rest.

    Parameters
    ----------
    n_classes : int
        Number of classes.
    names : sequence of str
        Known names, class 1 first (extra ones are dropped, empty ones replaced).

    Returns
    -------
    tuple of str
        One name per class.

    Examples
    --------
    >>> default_class_names(3, ["nucleus"])
    ('nucleus', 'class 2', 'class 3')
    """
    given = [str(n) for n in list(names)[:n_classes]]
    return tuple(
        given[k] if k < len(given) and given[k].strip() else f"class {k + 1}"
        for k in range(n_classes)
    )


def check_mode(model: TrainedModel, mode: str, what: str = "this") -> None:
    """Raise ValueError when ``model`` was trained for another mode than ``mode``.

    Parameters
    ----------
    model : TrainedModel
        The model.
    mode : {'cells', 'classes'}
        The mode the caller needs.
    what : str
        What needs it, for the message (e.g. ``'fine-tuning with --mode cells'``).

    Examples
    --------
    >>> model = TrainedModel(UNet(UNetConfig(depth=2, base_channels=4)))
    >>> check_mode(model, "cells")
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if model.mode == mode:
        return
    found = (
        f"a 'classes' model ({model.config.n_classes} classes: {', '.join(model.class_names)})"
        if model.mode == "classes"
        else "a 'cells' model (instance segmentation)"
    )
    raise ValueError(
        f"{what} needs a '{mode}' model, got {found}; use a model trained with mode '{mode}'"
    )
