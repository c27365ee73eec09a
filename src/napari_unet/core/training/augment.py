"""Batched data augmentation on the training device.

Every geometric change of a batch, the paper's elastic deformation (random displacements on a
coarse grid of control points a fixed number of pixels apart, upsampled bicubically, with the
paper's strength whatever the patch size), the 8 flips and 90° rotations, and a small rotation and
scaling, is folded into **one** sampling grid per sample, which
:func:`torch.nn.functional.grid_sample` applies to the image (bilinear) and to the target classes
and loss weights (together, nearest neighbour: the high weight of the gap between two cells never
spreads onto the cells). Intensity changes (gain, offset, gamma,
noise) then act on the image only. Everything runs batched on whatever device the tensors are on.

Input patches may be larger than the output (a margin of context around the patch), so that
rotations and deformations sample real pixels instead of reflections; with valid convolutions
the targets are the center crop of the network's input that its output covers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..targets import IGNORE

__all__ = [
    "ELASTIC_GRID_FACTOR",
    "PAPER_ELASTIC_SPACING",
    "AugmentSettings",
    "augment_batch",
    "center_crop",
    "context_margin",
    "elastic_field",
    "sampling_grid",
]

#: Pixels between the control points of the paper's elastic deformation (3 x 3 over 572 px).
PAPER_ELASTIC_SPACING = 286
#: Bicubic interpolation through a longer row of control points bends more than through the
#: paper's three (which are clamped at the tile's edges): with the standard deviation scaled by
#: this factor too, the local area change of the deformation has the paper's distribution
#: (1st-99th percentile 0.89-1.11 at any patch size, 0.88-1.09 for the paper's grid on its tile).
ELASTIC_GRID_FACTOR = 0.65


@dataclass(frozen=True)
class AugmentSettings:
    """What :func:`augment_batch` does, each part switchable.

    Parameters
    ----------
    elastic : bool
        Elastic deformation as in Ronneberger et al. (2015): random displacement vectors on a
        coarse grid of control points ``elastic_spacing`` pixels apart, normally distributed,
        upsampled bicubically to every pixel. Its strength is the paper's whatever the patch
        size: the paper draws 10 px on a 3 x 3 grid over its 572 px tile (control points
        :data:`PAPER_ELASTIC_SPACING` = 286 px apart); a grid of another spacing gets a
        proportional standard deviation, so that the local stretch and area change (the
        gradient of the displacement) keep the paper's distribution.
    elastic_std : float
        Standard deviation of the displacements in pixels *at the paper's spacing* (10 in the
        paper); the control points get :attr:`elastic_sigma` pixels, about
        ``elastic_std * elastic_spacing / 286`` (see :data:`ELASTIC_GRID_FACTOR`).
    elastic_spacing : float
        Distance between control points in pixels (rounded to whole pixels); the grid covers
        the patch whatever its size.
    flips : bool
        A random one of the 8 flips and 90° rotations (exact: pixel centres map to pixel
        centres).
    affine : bool
        A small random rotation and scaling.
    max_rotation : float
        Largest rotation of the small rotation, in degrees either way.
    scale_range : tuple of float
        Range of the zoom factor (log-uniform); above 1 magnifies.
    intensity : bool
        Random gamma, gain, offset and Gaussian noise on the (normalised) image.
    gamma_range, gain_range : tuple of float
        Ranges of the gamma exponent and the gain (log-uniform).
    max_offset : float
        Largest additive offset either way (normalised units: 1 = the image's 1-99.8
        percentile range).
    max_noise : float
        Largest standard deviation of the added noise (drawn per sample from 0 to this).
    """

    elastic: bool = True
    elastic_std: float = 10.0
    elastic_spacing: float = 64.0
    flips: bool = True
    affine: bool = True
    max_rotation: float = 15.0
    scale_range: tuple[float, float] = (0.85, 1.15)
    intensity: bool = True
    gamma_range: tuple[float, float] = (0.8, 1.25)
    gain_range: tuple[float, float] = (0.8, 1.25)
    max_offset: float = 0.1
    max_noise: float = 0.04

    def __post_init__(self) -> None:
        if self.elastic_std < 0:
            raise ValueError(f"elastic_std must be >= 0 pixels, got {self.elastic_std!r}")
        if not self.elastic_spacing >= 2:
            raise ValueError(f"elastic_spacing must be >= 2 pixels, got {self.elastic_spacing!r}")
        if not 0 <= self.max_rotation <= 180:
            raise ValueError(f"max_rotation must be in [0, 180] degrees, got {self.max_rotation}")
        for name in ("scale_range", "gamma_range", "gain_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {lo, hi}")
        if self.max_offset < 0 or self.max_noise < 0:
            raise ValueError(
                f"max_offset and max_noise must be >= 0, got {self.max_offset}, {self.max_noise}"
            )

    @property
    def geometric(self) -> bool:
        """Whether any geometric transformation is switched on."""
        return self.elastic or self.flips or self.affine

    @property
    def elastic_sigma(self) -> float:
        """Standard deviation of the displacement at the control points, in pixels."""
        spacing = round(self.elastic_spacing)
        return self.elastic_std * ELASTIC_GRID_FACTOR * spacing / PAPER_ELASTIC_SPACING


def context_margin(size: int, settings: AugmentSettings) -> int:
    """Pixels of context to cut around a patch so that augmentation rarely samples outside.

    Parameters
    ----------
    size : int
        Edge of the (square) patch that :func:`augment_batch` outputs.
    settings : AugmentSettings
        The augmentation.

    Returns
    -------
    int
        Margin per side: what the small rotation and the smallest zoom reach beyond the patch,
        plus twice the elastic displacement's standard deviation at the control points. Samples
        that still fall outside are mirrored.

    Examples
    --------
    >>> context_margin(128, AugmentSettings(elastic=False, affine=False))
    0
    """
    margin = 0.0
    if settings.affine:
        angle = math.radians(settings.max_rotation)
        reach = (abs(math.cos(angle)) + abs(math.sin(angle))) / settings.scale_range[0]
        margin += max(reach - 1.0, 0.0) * size / 2
    if settings.elastic:
        margin += 2 * settings.elastic_sigma
    return math.ceil(margin)


def _uniform(
    n: int, lo: float, hi: float, generator: torch.Generator | None, device
) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (hi - lo) + lo


def _log_uniform(
    n: int, lo: float, hi: float, generator: torch.Generator | None, device
) -> torch.Tensor:
    return torch.exp(_uniform(n, math.log(lo), math.log(hi), generator, device))


def sampling_grid(
    n: int,
    in_size: tuple[int, ...],
    out_size: tuple[int, ...],
    settings: AugmentSettings,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    sampling: tuple[float, ...] | None = None,
) -> torch.Tensor:
    """Random sampling grids for :func:`torch.nn.functional.grid_sample`.

    Output pixel ``p`` (relative to the output's centre) reads input position
    ``c + A p + d(p)``, where ``c`` is the input's centre, ``A`` combines a random flip/90°
    rotation, a small rotation and a zoom, and ``d`` is the elastic displacement field. For a
    volume ``(D, H, W)`` the rotations act in-plane, flips include a z flip, and the zoom and
    the elastic field are isotropic in physical units (``sampling``).

    Parameters
    ----------
    n : int
        Number of grids (the batch size).
    in_size, out_size : tuple of int
        ``(H, W)`` (or ``(D, H, W)``) of the input and of the output.
    settings : AugmentSettings
        What to draw.
    generator : torch.Generator, optional
        Source of randomness, on ``device``.
    device : torch.device or str
        Where to build the grids.
    sampling : tuple of float, optional
        Voxel size of a volume (the elastic grid and displacements are scaled to it).

    Returns
    -------
    torch.Tensor
        float32 ``(n, h, w, 2)`` (``(n, d, h, w, 3)``) in normalised coordinates
        (``align_corners=False``), the last axis ``(x, y[, z])``.
    """
    device = torch.device(device)
    ndim = len(out_size)
    axes = [torch.arange(s, device=device, dtype=torch.float32) - (s - 1) / 2 for s in out_size]
    mesh = torch.meshgrid(*axes, indexing="ij")
    points = torch.stack(mesh[::-1], dim=-1).reshape(1, -1, ndim).expand(n, -1, -1)  # (x, y, z)
    plane = _plane_matrix(n, settings, generator, device)
    matrix = torch.eye(ndim, device=device).expand(n, ndim, ndim).clone()
    matrix[:, :2, :2] = plane
    if ndim == 3:
        zoom = plane[:, 0, 0].hypot(plane[:, 0, 1])  # the in-plane zoom (1 / scale), isotropic
        z_flip = torch.ones(n, device=device)
        if settings.flips:
            z_flip = torch.randint(0, 2, (n,), generator=generator, device=device) * 2.0 - 1
        matrix[:, 2, 2] = zoom * z_flip
    coords = points @ matrix.transpose(1, 2)  # (n, pixels, ndim), input pixels from the centre
    coords = coords.reshape(n, *out_size, ndim)
    if settings.elastic and settings.elastic_std > 0:
        field = elastic_field(
            n, tuple(out_size), settings, generator=generator, device=device, sampling=sampling
        )
        coords = coords + torch.movedim(field, 1, -1)
    # input pixel offsets from the centre -> normalised coordinates (align_corners=False)
    scale = torch.tensor([2.0 / s for s in reversed(in_size)], device=device)
    return coords * scale


def _plane_matrix(
    n: int, settings: AugmentSettings, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Random in-plane ``(x, y)`` matrices: flip/90° rotation, then small rotation and zoom."""
    matrix = torch.eye(2, device=device).expand(n, 2, 2).clone()
    if settings.flips:
        k = torch.randint(0, 4, (n,), generator=generator, device=device)
        flip = torch.randint(0, 2, (n,), generator=generator, device=device) * 2 - 1
        # rotation by k * 90 degrees: exact integer cos/sin
        cos = torch.tensor([1.0, 0.0, -1.0, 0.0], device=device)[k]
        sin = torch.tensor([0.0, 1.0, 0.0, -1.0], device=device)[k]
        rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        mirror = torch.diag_embed(torch.stack([flip.float(), torch.ones(n, device=device)], -1))
        matrix = rot @ mirror @ matrix
    if settings.affine:
        angle = _uniform(n, -settings.max_rotation, settings.max_rotation, generator, device)
        angle = angle * (math.pi / 180)
        zoom = _log_uniform(n, *settings.scale_range, generator, device)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        matrix = rot @ matrix
    return matrix


def elastic_field(
    n: int,
    size: tuple[int, ...],
    settings: AugmentSettings,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    sampling: tuple[float, ...] | None = None,
) -> torch.Tensor:
    """Random elastic displacement fields: control points a fixed distance apart, bicubic.

    Parameters
    ----------
    n : int
        Number of fields.
    size : tuple of int
        ``(h, w)`` (or ``(d, h, w)``) of each field.
    settings : AugmentSettings
        ``elastic_spacing`` and the strength (:attr:`AugmentSettings.elastic_sigma`).
    generator : torch.Generator, optional
        Source of randomness, on ``device``.
    device : torch.device or str
        Where to build the fields.
    sampling : tuple of float, optional
        Voxel size: along an axis ``k`` times coarser than the finest, the control points are
        ``k`` times fewer voxels apart and the displacements ``k`` times smaller in voxels
        (the same deformation in physical units). Volumes are upsampled trilinearly.

    Returns
    -------
    torch.Tensor
        float32 ``(n, 2, h, w)`` displacements ``(x, y)`` in pixels (``(n, 3, d, h, w)``,
        ``(x, y, z)``, for a volume). The control points lie ``elastic_spacing`` pixels apart
        on a grid centred on the field, and cover it.

    Examples
    --------
    >>> s = AugmentSettings(elastic_spacing=32)
    >>> tuple(elastic_field(2, (100, 40), s).shape)
    (2, 2, 100, 40)
    >>> tuple(elastic_field(1, (8, 40, 40), s, sampling=(4.0, 1.0, 1.0)).shape)
    (1, 3, 8, 40, 40)
    """
    ndim = len(size)
    spacing_px = max(round(settings.elastic_spacing), 2)
    spacing = tuple(float(v) for v in (sampling or (1.0,) * ndim))
    ratio = [min(spacing) / v for v in spacing]  # voxels of this axis per finest-axis pixel
    spacings = [max(round(spacing_px * r), 2) for r in ratio]
    steps = [max(math.ceil((s - 1) / d), 1) for s, d in zip(size, spacings, strict=True)]
    coarse = torch.randn(n, ndim, *(t + 1 for t in steps), generator=generator, device=device)
    # component c displaces along axis ndim - 1 - c (x first): in that axis's voxels
    gains = torch.tensor(ratio[::-1], device=device).view(1, ndim, *([1] * ndim))
    coarse = coarse * settings.elastic_sigma * gains
    full = tuple(t * d + 1 for t, d in zip(steps, spacings, strict=True))
    mode = "bicubic" if ndim == 2 else "trilinear"
    field = F.interpolate(coarse, size=full, mode=mode, align_corners=True)
    return center_crop(field, size)


def center_crop(t: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """The central ``size`` (``(h, w)`` or ``(d, h, w)``) of the last axes of ``t`` (a view).

    Examples
    --------
    >>> center_crop(torch.arange(16).reshape(4, 4), (2, 2)).tolist()
    [[5, 6], [9, 10]]
    """
    shape = t.shape[-len(size) :]
    starts = [(a - b) // 2 for a, b in zip(shape, size, strict=True)]
    return t[(..., *(slice(s, s + b) for s, b in zip(starts, size, strict=True)))]


def augment_batch(
    images: torch.Tensor,
    classes: torch.Tensor,
    weights: torch.Tensor,
    settings: AugmentSettings,
    *,
    out_size: int | tuple[int, ...] | None = None,
    target_size: int | tuple[int, ...] | None = None,
    generator: torch.Generator | None = None,
    sampling: tuple[float, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augment a batch of patches with one sampling grid for image, targets and weights.

    Parameters
    ----------
    images : torch.Tensor
        float ``(N, C, H, W)`` (or ``(N, C, D, H, W)``) normalised image patches, with context
        around the output.
    classes : torch.Tensor
        ``(N, H, W)`` (``(N, D, H, W)``) target classes (uint8 or integer;
        :data:`~napari_unet.core.targets.IGNORE` marks unannotated pixels).
    weights : torch.Tensor
        float ``(N, H, W)`` (``(N, D, H, W)``) loss weights.
    settings : AugmentSettings
        What to do.
    out_size : int or tuple of int, optional
        ``(h, w)`` (``(d, h, w)``) of the image patches returned (the network's input);
        default the input's. The output is centred on the input.
    target_size : int or tuple of int, optional
        ``(h', w')`` of the targets and weights returned, the centre of the output (the
        network's output size with valid convolutions); default ``out_size``.
    generator : torch.Generator, optional
        Source of randomness, on the tensors' device.
    sampling : tuple of float, optional
        Voxel size of volumes (see :func:`sampling_grid`).

    Returns
    -------
    images : torch.Tensor
        float32 ``(N, C, h, w)``.
    classes : torch.Tensor
        int64 ``(N, h', w')`` (nearest-neighbour sampled).
    weights : torch.Tensor
        float32 ``(N, h', w')`` (nearest neighbour, with the classes), 0 wherever the class
        is ``IGNORE``.

    Examples
    --------
    >>> img = torch.rand(2, 1, 48, 48)
    >>> cls = torch.randint(0, 2, (2, 48, 48), dtype=torch.uint8)
    >>> x, y, w = augment_batch(img, cls, torch.ones(2, 48, 48), AugmentSettings(), out_size=32)
    >>> tuple(x.shape), tuple(y.shape), y.dtype
    ((2, 1, 32, 32), (2, 32, 32), torch.int64)
    """
    out, tgt = _check_batch(images, classes, weights, out_size, target_size)
    images = images.float()
    if settings.geometric:
        x, y, w = _warp(images, classes, weights, settings, out, tgt, generator, sampling)
    else:
        x = center_crop(images, out)
        y = center_crop(classes, tgt).long()
        w = center_crop(weights, tgt).float()
    w = torch.where(y == IGNORE, torch.zeros((), device=w.device), w)
    if settings.intensity:
        x = _intensity(x, settings, generator)
    return x.contiguous(), y.contiguous(), w.contiguous()


def _check_batch(
    images: torch.Tensor,
    classes: torch.Tensor,
    weights: torch.Tensor,
    out_size: int | tuple[int, ...] | None,
    target_size: int | tuple[int, ...] | None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Check the batch's shapes; the image and target sizes to return."""
    if images.ndim not in (4, 5):
        raise ValueError(
            f"images must be (N, C, H, W) or (N, C, D, H, W), got shape {tuple(images.shape)}"
        )
    n, spatial = images.shape[0], tuple(images.shape[2:])
    if classes.shape != (n, *spatial) or weights.shape != (n, *spatial):
        raise ValueError(
            f"classes and weights must be (N, ...) = {(n, *spatial)}, got "
            f"{tuple(classes.shape)} and {tuple(weights.shape)}"
        )
    out = spatial if out_size is None else _sizes(out_size, len(spatial))
    tgt = out if target_size is None else _sizes(target_size, len(spatial))
    if any(o > i for o, i in zip(out, spatial, strict=True)):
        raise ValueError(f"out_size {out} must not exceed the input size {spatial}")
    if any(t > o for t, o in zip(tgt, out, strict=True)):
        raise ValueError(f"target_size {tgt} must not exceed out_size {out}")
    return out, tgt


def _warp(
    images: torch.Tensor,
    classes: torch.Tensor,
    weights: torch.Tensor,
    settings: AugmentSettings,
    out: tuple[int, ...],
    tgt: tuple[int, ...],
    generator: torch.Generator | None,
    sampling: tuple[float, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Resample image, classes and weights through one random sampling grid."""
    n, spatial = images.shape[0], tuple(images.shape[2:])
    grid = sampling_grid(
        n, spatial, out, settings, generator=generator, device=images.device, sampling=sampling
    )
    x = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    grid_t = torch.movedim(center_crop(torch.movedim(grid, -1, 1), tgt), 1, -1)
    # classes and weights in one nearest-neighbour pass: every target pixel takes the class and
    # the weight of one input pixel, so the high weight of a gap never spreads onto the cells
    targets = torch.stack([classes.float(), weights.float()], dim=1)
    targets = F.grid_sample(
        targets, grid_t, mode="nearest", padding_mode="reflection", align_corners=False
    )
    return x, targets[:, 0].round_().long(), targets[:, 1]


def _sizes(size: int | tuple[int, ...], ndim: int) -> tuple[int, ...]:
    if isinstance(size, int):
        return (size,) * ndim
    if len(size) != ndim:
        raise ValueError(f"expected {ndim} sizes, got {tuple(size)}")
    return tuple(int(s) for s in size)


def _intensity(
    x: torch.Tensor, settings: AugmentSettings, generator: torch.Generator | None
) -> torch.Tensor:
    n = x.shape[0]
    dev = x.device
    shape = (n, *([1] * (x.ndim - 1)))
    gamma = _log_uniform(n, *settings.gamma_range, generator, dev).view(shape)
    gain = _log_uniform(n, *settings.gain_range, generator, dev).view(shape)
    offset = _uniform(n, -settings.max_offset, settings.max_offset, generator, dev).view(shape)
    noise = _uniform(n, 0.0, settings.max_noise, generator, dev).view(shape)
    # gamma acts on magnitudes so that values below 0 (under the 1st percentile) stay valid
    x = torch.sign(x) * x.abs().pow(gamma)
    x = x * gain + offset
    if settings.max_noise > 0:
        x = x + noise * torch.randn(x.shape, generator=generator, device=dev)
    return x
