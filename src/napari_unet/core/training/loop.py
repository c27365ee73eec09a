"""Training: annotated images in, a :class:`~napari_unet.core.model.TrainedModel` out.

:func:`train` is a generator. It checks the inputs, prepares the samples (normalisation,
targets and border weights), holds part of the annotations out for validation when there are
enough, and then runs one optimisation step per iteration, yielding a :class:`TrainEvent` after
each. Its return value (``StopIteration.value``, or what :func:`run_training` returns) is the
best model: the one with the best validation score when part of the annotations was held out
(instance AP@0.5 after post-processing, :mod:`.validation`), else the last one. A stop request
(``stop.set()``) ends training before the next step and still returns a usable model.

One step: draw a batch of patches centred on annotated pixels (:class:`~napari_unet.core.
training.data.PatchSampler`), augment it on the training device with one sampling grid
(:func:`~napari_unet.core.training.augment.augment_batch`), and minimise the weighted softmax
cross-entropy over the annotated pixels (Ronneberger et al. 2015), with Adam or the paper's SGD
(momentum 0.99). With same padding the network's input holds ``settings.context`` pixels of
image (mirrored at the image's edges) around the area the loss is computed on, so that no pixel
that carries loss sees the network's zero padding, as no pixel does at inference. bf16 autocast
and channels-last memory are used on CUDA; on the CPU they are off by default because
``bench/bench_training.py`` measured no gain there.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ... import __version__
from ..device import describe_device, select_device
from ..inference.postprocess import DEFAULT_MIN_CONFIDENCE, DEFAULT_MIN_SIZE
from ..model import (
    TrainedModel,
    UNet,
    UNetConfig,
    check_image_voxel_size,
    check_mode,
    default_class_names,
    preset_config,
)
from ..normalize import normalization_spec
from ..progress import run_to_end
from ..targets import IGNORE
from .augment import augment_batch, center_crop, context_margin
from .checkpoint import Checkpointing, CheckpointKeeper
from .data import (
    AnnotatedImage,
    PatchSampler,
    TargetSpec,
    annotated_cell_areas,
    annotation_min_size,
    gap_axes,
    patch_geometry,
    patch_shape,
    prepare_samples,
)
from .distributed import Distributed, current
from .settings import TrainSettings
from .validation import (
    THRESHOLDS,
    ValidationScore,
    ValidationTiles,
    enough_cells,
    hold_out,
    min_size_candidates,
    score_classes,
    score_network,
    validation_block,
    validation_tiles,
    warn_without_validation,
)

__all__ = [
    "METRIC_LABELS",
    "VOLUME_SEED_SPLIT",
    "TrainEvent",
    "describe_run",
    "freeze_batch_norm",
    "metric_label",
    "preload_training_modules",
    "run_metric",
    "run_training",
    "train",
    "weighted_cross_entropy",
]

logger = logging.getLogger(__name__)

#: The cosine schedule decays the learning rate to this fraction of its start value.
LR_FLOOR = 0.05
#: Linear warm-up over this many first iterations.
WARMUP = 10
#: Seed split a 3D model records for its post-processing
#: (:func:`~napari_unet.core.inference.split_seeds`; 2D models do not split). Annotated slices
#: teach no gap along z, so the network's probability stays high where nuclei touch across
#: slices and seeds at the default 0.75 join them; a seed is split into its cores at higher
#: probability levels where at least two of them hold this share of the median seed's voxels.
#: Chosen on volumes other than the one ``bench/bench_3d.py`` scores (seeds 2-9, 480 nuclei):
#: 3D AP@0.5 0.983 and 0.990 for models of 500 and 900 steps, where a fixed seed threshold of
#: 0.98 (the former choice) scored 0.844 and 0.947 (docs/benchmarks.md).
VOLUME_SEED_SPLIT = 0.15
#: What the validation score means, by ``TrainSettings.validation_metric``.
METRICS = {
    "ap": "instance AP@0.5 on held-out annotations",
    "iou": "foreground IoU on held-out annotations",
    "class_iou": "mean per-class IoU on held-out scribbles",
}
#: Short names of the validation metrics, for progress lines and plot legends.
METRIC_LABELS = {"ap": "AP", "iou": "IoU", "class_iou": "class IoU"}


def run_metric(settings: TrainSettings) -> str:
    """The metric a run's validation is scored by (a key of :data:`METRICS`): ``'class_iou'``
    in classes mode, else ``settings.validation_metric``."""
    return "class_iou" if settings.mode == "classes" else settings.validation_metric


def metric_label(settings: TrainSettings) -> str:
    """The short name of a run's validation metric (:data:`METRIC_LABELS`, e.g. ``'AP'``), for
    progress lines and plot legends."""
    metric = run_metric(settings)
    return METRIC_LABELS.get(metric, metric)


@dataclass(frozen=True)
class TrainEvent:
    """Progress of a training run, yielded after every optimisation step.

    Attributes
    ----------
    iteration : int
        Steps done so far (1 after the first).
    iterations : int, optional
        Steps planned (``None`` when the run is limited by time or by a stop request only).
    loss : float
        Weighted cross-entropy of this step's batch.
    learning_rate : float
        Learning rate used for this step.
    elapsed : float
        Seconds since training started (data preparation included).
    samples_per_second : float
        Patches per second over the last steps.
    validation : float, optional
        The validation score checkpoints are chosen by, when it was measured at this step:
        instance AP at IoU 0.5 on the held-out annotations (``settings.validation_metric
        'ap'``, the default) or their foreground IoU (``'iou'``).
    device : str
        Where training runs, e.g. ``'CPU, 2 threads'``.
    best_validation : float, optional
        Best validation score so far.
    minutes : float, optional
        Time limit of the run in minutes, if any.
    validation_ap : float, optional
        Instance AP at IoU 0.5 on the held-out annotations (with the best probability
        threshold and minimum size), when measured at this step.
    validation_iou : float, optional
        Foreground IoU on the held-out annotations, when measured at this step.
    """

    iteration: int
    iterations: int | None
    loss: float
    learning_rate: float
    elapsed: float
    samples_per_second: float
    validation: float | None
    device: str
    best_validation: float | None = None
    minutes: float | None = None
    validation_ap: float | None = None
    validation_iou: float | None = None

    @property
    def done(self) -> int:
        """Steps done (:class:`~napari_unet.core.progress.ProgressEvent`)."""
        return self.iteration

    @property
    def total(self) -> int | None:
        """Steps planned, ``None`` without an iteration limit."""
        return self.iterations

    @property
    def stage(self) -> str:
        """Always ``'training'``."""
        return "training"

    @property
    def progress(self) -> float | None:
        """Fraction of the planned run done, in [0, 1]; ``None`` without a limit."""
        parts = []
        if self.iterations:
            parts.append(self.iteration / self.iterations)
        if self.minutes:
            parts.append(self.elapsed / (60.0 * self.minutes))
        return min(max(parts), 1.0) if parts else None


def weighted_cross_entropy(
    logits: torch.Tensor,
    classes: torch.Tensor,
    weights: torch.Tensor,
    count: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pixel-wise weighted softmax cross-entropy over the annotated pixels.

    ``sum(w(x) * -log p_{l(x)}(x)) / #{x : w(x) > 0}``: ignored pixels (weight 0, class
    ``IGNORE``) contribute nothing, neither to the sum nor to the count.

    Parameters
    ----------
    logits : torch.Tensor
        ``(N, K, H, W)`` class scores.
    classes : torch.Tensor
        int64 ``(N, H, W)`` target classes; ``IGNORE`` where not annotated.
    weights : torch.Tensor
        float ``(N, H, W)`` pixel weights.
    count : torch.Tensor, optional
        What the sum is divided by instead of this batch's annotated pixels (data-parallel
        training: :meth:`~napari_unet.core.training.distributed.Distributed.loss_count`).

    Returns
    -------
    torch.Tensor
        The scalar loss (float32).

    Examples
    --------
    >>> logits, weights = torch.zeros(1, 2, 1, 2), torch.tensor([[[2.0, 0.0]]])
    >>> float(weighted_cross_entropy(logits, torch.tensor([[[1, 255]]]), weights))
    1.3862943649291992
    """
    target = torch.where(classes == IGNORE, torch.zeros_like(classes), classes)
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    if count is None:
        count = (weights > 0).sum().clamp_min(1)
    return (ce * weights).sum() / count


def _learning_rate(settings: TrainSettings, step: int, elapsed: float) -> float:
    """Learning rate for ``step`` (0-based) at ``elapsed`` seconds: warm-up, then cosine.

    Parameters
    ----------
    settings : TrainSettings
        Peak rate, schedule and the run's limits.
    step : int
        Steps done so far.
    elapsed : float
        Seconds of training so far.

    Returns
    -------
    float
        The learning rate.
    """
    lr = float(settings.learning_rate)
    warm = min(1.0, (step + 1) / WARMUP)
    if settings.schedule == "constant":
        return lr * warm
    parts = []
    if settings.iterations:
        parts.append(step / settings.iterations)
    if settings.minutes:
        parts.append(elapsed / (60.0 * settings.minutes))
    if not parts:
        return lr * warm
    p = min(max(parts), 1.0)
    return lr * warm * (LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * p)))


def _new_net(config: UNetConfig, seed: int = 0) -> UNet:
    """A freshly initialised network, without drawing from torch's global generator.

    Parameters
    ----------
    config : UNetConfig
        The architecture.
    seed : int
        Seed of the initialisation.

    Returns
    -------
    UNet
        The network, on the CPU.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet(config)


def freeze_batch_norm(net: torch.nn.Module) -> int:
    """Put the batch-norm layers of a network in evaluation mode (fine-tuning).

    Their running mean and variance then stay as the model learnt them on its own data, and
    normalise the batches too: a small annotation does not rewrite them (their scale and shift
    are still trained). The rest of the network keeps its mode.

    Parameters
    ----------
    net : torch.nn.Module
        The network, in training mode.

    Returns
    -------
    int
        The number of batch-norm layers frozen.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)).train()
    >>> freeze_batch_norm(net), net[0].training, net[1].training
    (1, True, False)
    """
    kinds = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    norms = [m for m in net.modules() if isinstance(m, kinds)]
    for module in norms:
        module.eval()
    return len(norms)


def _state_cpu(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the network's weights."""
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


@dataclass(frozen=True)
class _RunPlan:
    """What a run resolved from its settings (and the model it fine-tunes) before any data.

    Attributes
    ----------
    settings : TrainSettings
        The checked settings.
    device : torch.device
        Where training runs.
    device_text : str
        The device in words, e.g. ``'CPU, 2 threads'``.
    seed : int
        The seed (drawn at random when the settings hold none).
    amp, channels_last : bool
        bf16 autocast and channels-last memory.
    normalization : dict
        How images are normalised (the model's when fine-tuning).
    gap : int
        Gap cut between touching cells (the model's when fine-tuning).
    in_channels : int, optional
        Channels the images must have (the model's when fine-tuning).
    dist : Distributed
        This process's place in a data-parallel run (a single process by default).
    n_classes : int, optional
        Classes mode, fine-tuning: the model's number of classes.
    spatial_dims : int
        2 or 3 (a fine-tuned model's).
    voxel_size : tuple of float, optional
        Voxel size of a 3D run (a fine-tuned model's when the settings give none).
    """

    settings: TrainSettings
    device: torch.device
    device_text: str
    seed: int
    amp: bool
    channels_last: bool
    normalization: dict[str, Any]
    gap: int
    in_channels: int | None
    dist: Distributed = field(default_factory=Distributed)
    n_classes: int | None = None
    spatial_dims: int = 2
    voxel_size: tuple[float, ...] | None = None

    @property
    def targets(self) -> TargetSpec:
        """How the run makes its targets: the settings' options with the resolved gap, number
        of classes and voxel size."""
        s = self.settings
        options = (self.gap, s.w0, s.sigma, s.class_balance, s.border_weights, s.mode)
        return TargetSpec(*options, n_classes=self.n_classes, sampling=self.voxel_size)


def _resolve_plan(settings: TrainSettings | None, model: TrainedModel | None) -> _RunPlan:
    """Check the settings and work out device, seed and what a fine-tuned model fixes.

    Parameters
    ----------
    settings : TrainSettings, optional
        The settings (``TrainSettings()`` when ``None``).
    model : TrainedModel, optional
        The model to fine-tune.

    Returns
    -------
    _RunPlan
        The resolved plan.
    """
    settings = settings or TrainSettings()
    if not isinstance(settings, TrainSettings):
        raise ValueError(f"settings must be a TrainSettings, got {type(settings).__name__}")
    settings.validate()
    if model is not None and not isinstance(model, TrainedModel):
        raise ValueError(f"model must be a TrainedModel or None, got {type(model).__name__}")
    if model is not None:
        check_mode(model, settings.mode, f"fine-tuning with mode '{settings.mode}'")
    device = select_device(settings.device)
    seed = settings.seed
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**31))
    group = current()
    seed = group.same_seed(seed)
    cuda = device.type == "cuda"
    if model is not None:
        normalization, gap = dict(model.normalization), int(model.gap)
        if gap != settings.gap:
            logger.info(
                "fine-tuning keeps the model's gap of %d px (settings say %d)", gap, settings.gap
            )
    else:
        normalization, gap = normalization_spec(), settings.gap
    processes = f" x {group.world_size} processes" if group.active else ""
    return _RunPlan(
        settings=settings,
        device=device,
        device_text=describe_device(device) + processes,
        seed=seed,
        amp=cuda if settings.amp is None else bool(settings.amp),
        channels_last=cuda if settings.channels_last is None else bool(settings.channels_last),
        normalization=normalization,
        gap=gap,
        in_channels=None if model is None else model.config.in_channels,
        dist=group,
        n_classes=None if model is None else model.config.n_classes,
        **_dimensions(settings, model),
    )


def _dimensions(settings: TrainSettings, model: TrainedModel | None) -> dict[str, Any]:
    """``spatial_dims`` and ``voxel_size`` of a run, checked against a fine-tuned model."""
    voxel = None if settings.voxel_size is None else tuple(float(v) for v in settings.voxel_size)
    if model is None:
        return {"spatial_dims": settings.spatial_dims, "voxel_size": voxel}
    config = model.config
    if config.spatial_dims != settings.spatial_dims:
        raise ValueError(
            f"the model fine-tuned is a {config.spatial_dims}D network but the settings ask for "
            f"{settings.spatial_dims}D training (spatial_dims / --ndim)"
        )
    if config.spatial_dims == 3:
        check_image_voxel_size(config, voxel, "the volumes' voxel size")
        voxel = config.voxel_size
    return {"spatial_dims": config.spatial_dims, "voxel_size": voxel}


@dataclass
class _RunData:
    """The prepared data of a run: samples, network geometry, hold-out and patch sampler.

    Attributes
    ----------
    samples : list of AnnotatedImage
        Every annotated 2D image (validation blocks included).
    config : UNetConfig
        The network's architecture.
    in_size, out_size : int
        In-plane edge of the network's input and output patches.
    blocks : list of tuple of int
        Held-out validation blocks ``(sample, y0, x0)``.
    block : int
        Their edge in pixels.
    tiles : ValidationTiles, optional
        Network inputs and targets of the held-out blocks (``None`` without validation).
    sampler : PatchSampler
        Draws training patches (the held-out blocks carry no loss).
    min_size : int, optional
        Smallest object worth keeping, learnt from the annotated cells.
    in_shape, out_shape : tuple of int
        The input and output patches per spatial axis (3 axes for a 3D network).
    """

    samples: list[AnnotatedImage]
    config: UNetConfig
    in_size: int
    out_size: int
    blocks: list[tuple[int, int, int]]
    block: int
    tiles: ValidationTiles | None
    sampler: PatchSampler
    min_size: int | None
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()


def _prepare_run_data(
    images: Any, labels: Any, regions: Any, plan: _RunPlan, model: TrainedModel | None
) -> _RunData:
    """Check and prepare the data, choose the patch geometry and hold out validation blocks.

    Parameters
    ----------
    images, labels, regions
        As for :func:`train`.
    plan : _RunPlan
        From :func:`resolve_plan`.
    model : TrainedModel, optional
        The model to fine-tune (its architecture is kept).

    Returns
    -------
    _RunData
        Everything the loop draws its batches and validation from.
    """
    settings = plan.settings
    samples = prepare_samples(
        images,
        labels,
        regions,
        channel_axis=settings.channel_axis,
        rgb=settings.rgb,
        normalization=plan.normalization,
        in_channels=plan.in_channels,
        targets=plan.targets,
        spatial_dims=plan.spatial_dims,
    )
    classes_mode = settings.mode == "classes"
    config = model.config if model is not None else _new_config(samples, plan)
    in_shape, out_shape = _geometry(config, samples, settings)
    in_size, out_size = in_shape[-1], out_shape[-1]
    aug = settings.augment_settings()
    crop = tuple(n + 2 * context_margin(n, aug) for n in in_shape)
    rng = np.random.default_rng(plan.seed)
    if config.spatial_dims == 3:  # no held-out part in 3D: the last model, 0.5, learnt size
        sampler = PatchSampler(samples, crop, plan.device, plan.dist.rank_rng(rng, plan.seed))
        min_size = annotation_min_size(samples, settings.min_size_fraction)
        return _RunData(
            samples, config, in_size, out_size, [], 0, None, sampler, min_size, in_shape, out_shape
        )
    block = validation_block(out_size, config.grid)
    spec = replace(plan.targets, n_classes=config.n_classes)
    train_samples, blocks = hold_out(
        samples, settings.validation_fraction, block, rng, targets=spec
    )
    tiles = _validation(samples, blocks, block, config, plan)
    sampler = PatchSampler(train_samples, crop, plan.device, plan.dist.rank_rng(rng, plan.seed))
    min_size = None if classes_mode else annotation_min_size(samples, settings.min_size_fraction)
    return _RunData(
        samples,
        config,
        in_size,
        out_size,
        blocks,
        block,
        tiles,
        sampler,
        min_size,
        in_shape,
        out_shape,
    )


def _validation(
    samples: list[AnnotatedImage],
    blocks: list[tuple[int, int, int]],
    block: int,
    config: UNetConfig,
    plan: _RunPlan,
) -> ValidationTiles | None:
    """The held-out blocks' tiles on rank 0 (every rank holds the same blocks out; rank 0
    alone validates), with a warning when none could be held out."""
    settings = plan.settings
    if not plan.dist.main:
        return None
    warn_without_validation(settings.validation_fraction, blocks, block, settings.mode)
    if not blocks:
        return None
    return validation_tiles(samples, blocks, block, config, settings.mode != "classes")


def _new_config(samples: list[AnnotatedImage], plan: _RunPlan) -> UNetConfig:
    """The architecture of a new network: the preset's (its depth unless the settings give
    one), for the samples' channels and classes.

    In the classes mode the network has as many classes as the largest value painted
    (:func:`~.data.prepare_samples` checked that at least two are); two otherwise.
    """
    settings = plan.settings
    k = 2
    if settings.mode == "classes":
        k = max(int(s.labels.max()) for s in samples if s.labels is not None)
    return preset_config(
        settings.preset,
        in_channels=samples[0].image.shape[0],
        n_classes=k,
        spatial_dims=plan.spatial_dims,
        voxel_size=plan.voxel_size,
        **({} if settings.depth is None else {"depth": settings.depth}),
    )


def _geometry(
    config: UNetConfig, samples: list[AnnotatedImage], settings: TrainSettings
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Network input and output shape of the training patches, checked for batch norm."""
    if config.spatial_dims == 3:
        limit = tuple(max(s.classes.shape[a] for s in samples) for a in range(3))
        in_shape, out_shape = patch_shape(config, settings.patch_size, settings.context, limit)
        deepest = math.prod(n // g for n, g in zip(in_shape, config.grids, strict=True))
        if config.batch_norm and settings.batch_size * max(deepest, 1) < 2:
            raise ValueError(
                f"batch_size={settings.batch_size} with a {in_shape} voxel input leaves one value "
                "per channel at the deepest level; use batch_size >= 2 or a larger patch_size"
            )
        return in_shape, out_shape
    largest = max(max(s.classes.shape) for s in samples)
    patch = min(int(settings.patch_size), config.admissible_size(largest))
    in_size, out_size = patch_geometry(config, patch, min(settings.context, config.halo))
    deepest = (in_size - 2 * config.halo if config.padding == "valid" else in_size) // config.grid
    if config.batch_norm and settings.batch_size * max(deepest, 1) ** 2 < 2:
        raise ValueError(
            f"batch_size={settings.batch_size} with a {in_size} px input leaves one value per "
            "channel at the deepest level of the network, which batch normalisation cannot "
            "train on; use batch_size >= 2 or a larger patch_size"
        )
    return (in_size, in_size), (out_size, out_size)


class _Optimisation:
    """The network, its optimiser and one optimisation step.

    Parameters
    ----------
    config : UNetConfig
        The architecture.
    plan : _RunPlan
        Device, seed and memory options.
    model : TrainedModel, optional
        Start from these weights (fine-tuning).
    """

    def __init__(self, config: UNetConfig, plan: _RunPlan, model: TrainedModel | None) -> None:
        settings = plan.settings
        self.plan = plan
        self.net = _new_net(config, plan.seed)
        if model is not None:
            self.net.load_state_dict(_state_cpu(model.net))
        self.net.to(plan.device)
        # channels-last memory: channels_last_3d for volumes (1.2x a CPU step of the 3D fast net)
        self.memory_format = (
            torch.channels_last if config.spatial_dims == 2 else torch.channels_last_3d
        )
        self.channels_last = plan.channels_last
        if self.channels_last:
            self.net.to(memory_format=self.memory_format)
        self.net.train()
        if model is not None and settings.freeze_batch_norm:
            freeze_batch_norm(self.net)
        self.forward: Callable[[torch.Tensor], torch.Tensor] = plan.dist.wrap(self.net, plan.device)
        if settings.compile:
            self.forward = torch.compile(self.forward)
        params = self.net.parameters()
        if settings.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params,
                lr=settings.learning_rate,
                momentum=settings.momentum,
                weight_decay=settings.weight_decay,
            )
        else:
            self.optimizer = torch.optim.Adam(
                params, lr=settings.learning_rate, weight_decay=settings.weight_decay
            )
        # an exponential moving average of the weights (and batch-norm statistics): what is
        # validated and kept when settings.weight_average > 0
        self.average: AveragedModel | None = None
        if settings.weight_average > 0:
            self.average = AveragedModel(
                self.net,
                multi_avg_fn=get_ema_multi_avg_fn(settings.weight_average),
                use_buffers=True,
            )
        # Dropout draws from torch's global generator: keep a private CPU state so that a seeded
        # run is reproducible and other users of the global generator are left alone.
        self.rng_state: torch.Tensor | None = None
        if config.dropout > 0 and plan.device.type == "cpu":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(plan.dist.rank_seed(plan.seed) + 1)
                self.rng_state = torch.get_rng_state()

    @property
    def evaluated(self) -> torch.nn.Module:
        """The network that is validated and kept: the weight average, else the network."""
        return self.net if self.average is None else self.average.module

    def step(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, lr: float) -> float:
        """One optimisation step at learning rate ``lr``; returns the batch's loss."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.channels_last:
            x = x.contiguous(memory_format=self.memory_format)
        if self.rng_state is None:
            loss = self._step(x, y, w)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(self.rng_state)
                loss = self._step(x, y, w)
                self.rng_state = torch.get_rng_state()
        if self.average is not None:
            self.average.update_parameters(self.net)
        return float(loss)

    def _step(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.plan.device.type, dtype=torch.bfloat16, enabled=self.plan.amp):
            logits = self.forward(x)
        # same padding with context: the loss area is the centre of the output
        count = self.plan.dist.loss_count(w)
        loss = weighted_cross_entropy(center_crop(logits, tuple(y.shape[1:])), y, w, count)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


@dataclass
class _BestState:
    """The best validated weights so far, and the last score.

    Attributes
    ----------
    metric : {'ap', 'iou'}
        What checkpoints are ranked by (see :meth:`ValidationScore.key`).
    score : ValidationScore, optional
        Best validation score so far.
    state : dict, optional
        Its weights, on the CPU.
    iteration : int
        The iteration it was measured at.
    last_score : ValidationScore, optional
        The latest score.
    last_validated : int
        The iteration of the latest score.
    select : bool
        Choose the best checkpoint; ``False`` (too few held-out cells to choose on): the
        latest one is kept, its score reported.
    """

    metric: str = "ap"
    score: ValidationScore | None = None
    state: dict[str, torch.Tensor] | None = None
    iteration: int = 0
    last_score: ValidationScore | None = None
    last_validated: int = 0
    select: bool = True

    def offer(
        self, score: ValidationScore, net: torch.nn.Module, iteration: int, keep: bool = True
    ) -> None:
        """Record a score; keep a copy of the weights if it is the best so far."""
        self.last_score, self.last_validated = score, iteration
        if not self.select:
            self.score, self.iteration, self.state = score, iteration, None
        elif self.score is None or score.key(self.metric) > self.score.key(self.metric):
            self.score, self.iteration = score, iteration
            self.state = _state_cpu(net) if keep else None

    def value(self, score: ValidationScore | None) -> float | None:
        """The number a score is reported as: its AP or its IoU, as :attr:`metric` says."""
        if score is None:
            return None
        return score.ap if self.metric == "ap" and score.ap is not None else score.iou

    def result(self, net: torch.nn.Module, config: UNetConfig, iteration: int) -> UNet:
        """The best network, a fresh CPU copy in evaluation mode (the last one if none)."""
        result = _new_net(config)
        if self.state is not None and self.iteration != iteration:
            result.load_state_dict(self.state)
        else:
            result.load_state_dict(_state_cpu(net))
            self.iteration = iteration
        return result.eval()


def _validation_interval(settings: TrainSettings) -> int:
    """Iterations between validation scores: the setting, or a tenth of the run (10 to 100)."""
    if settings.validate_every is not None:
        return settings.validate_every
    if settings.iterations:
        return max(10, min(100, settings.iterations // 10))
    return 50


def train(
    images: Any,
    labels: Any,
    regions: Any = None,
    *,
    settings: TrainSettings | None = None,
    model: TrainedModel | None = None,
    stop: threading.Event | None = None,
    class_names: Sequence[str] | None = None,
    checkpoint: Checkpointing | None = None,
) -> Generator[TrainEvent, None, TrainedModel]:
    """Train a U-Net on annotated images, yielding progress; return the best model.

    Like every generator, this runs nothing until the first ``next()``; the inputs and
    settings are checked there, before any heavy work, so that a worker thread reports bad
    input at once.

    Parameters
    ----------
    images : array or sequence of arrays
        2D images ``(Y, X)``, multichannel images (``settings.channel_axis``), RGB images
        (``settings.rgb``) or stacks ``(Z, Y, X)``; any numeric dtype; numpy or dask. Each 2D
        image is normalised by its own percentiles.
    labels : array or sequence of arrays
        Integer instance labels of each image's spatial shape (0 = background, k = cell k).
        In a stack, slices without any label are ignored (unless a region marks them). Mode
        ``'classes'``: scribbles, 0 = not painted, k = class k (at least 2 classes, k <= 255).
    regions : array, sequence of (array or None), or None
        Boolean masks of the annotated area; nothing is learnt outside them. ``None``: the
        whole image (or every labelled slice of a stack).
    settings : TrainSettings, optional
        How to train; defaults to ``TrainSettings()``.
    model : TrainedModel, optional
        Continue training this model (fine-tuning). Its architecture, normalisation and gap
        are kept; the given model itself is not modified.
    stop : threading.Event, optional
        Set it to end training before the next step; the best model so far is returned.
    class_names : sequence of str, optional
        Classes mode: names of classes 1, 2, ... (else the fine-tuned model's, or 'class k').
    checkpoint : Checkpointing, optional
        Write checkpoints and/or resume from one (:mod:`.checkpoint`; then pass its settings).

    Yields
    ------
    TrainEvent
        After every optimisation step.

    Returns
    -------
    TrainedModel
        The model with the best validation score (the last one without validation), on the
        CPU in evaluation mode. Its ``training`` holds ``'settings'``, a ``'summary'``, and the
        post-processing inference uses by default: ``'threshold'`` (chosen on the held-out
        part; 0.5 without one), ``'min_size'`` (pixels, chosen there among sizes learnt from
        the annotated cells); 3D: ``'seed_split'`` and ``'gap_axes'`` (:func:`.gap_axes`).

    Raises
    ------
    ValueError
        Before any training, for bad settings or inputs (mismatched shapes, NaN/inf, labels
        without any cell, images of another channel count than ``model``, ...).
    RuntimeError
        If the loss becomes NaN or infinite (lower the learning rate).

    Examples
    --------
    >>> from napari_unet.sample_data import make_touching_cells
    >>> image, labels = make_touching_cells((64, 64), n_cells=6, seed=0)
    >>> settings = TrainSettings(iterations=2, patch_size=32, batch_size=2, device="cpu")
    >>> run = train(image, labels, settings=settings)
    >>> [event.iteration for event in run]
    [1, 2]
    """
    start = time.perf_counter()
    plan = _resolve_plan(settings, model)
    data = _prepare_run_data(images, labels, regions, plan, model)
    run = _TrainingRun(plan, data, model, start, class_names, checkpoint)
    while not run.finished(stop):
        yield run.step()
    return run.result(model, stopped=run.stopped)


class _TrainingRun:
    """The loop of :func:`train`: steps, validation, best-state tracking and the summary.

    Parameters
    ----------
    plan : _RunPlan
        The resolved settings.
    data : _RunData
        The prepared data.
    model : TrainedModel, optional
        The model fine-tuned.
    start : float
        ``time.perf_counter()`` when the run began (data preparation included).
    class_names : sequence of str, optional
        Classes mode: the names of the classes.
    checkpoint : Checkpointing, optional
        Checkpoints to write after steps and at the end, and one to resume from.
    """

    def __init__(
        self,
        plan: _RunPlan,
        data: _RunData,
        model: TrainedModel | None,
        start: float,
        class_names: Sequence[str] | None = None,
        checkpoint: Checkpointing | None = None,
    ) -> None:
        self.plan, self.data, self.start = plan, data, start
        self.names = tuple(class_names or ())
        self.settings = plan.settings
        self.aug = self.settings.augment_settings()
        self.generator = torch.Generator(device=plan.device)
        self.generator.manual_seed(plan.dist.rank_seed(plan.seed))
        self.opt = _Optimisation(data.config, plan, model)
        self.validate_every = _validation_interval(self.settings)
        self.classes = self.settings.mode == "classes"
        metric = run_metric(self.settings)
        # a handful of held-out cells cannot tell checkpoints apart (AP ties at 1.0 pick an
        # early, undertrained one): keep the last model then; the IoU ablation always chooses
        select = data.tiles is not None and (metric != "ap" or enough_cells(data.tiles))
        self.best = _BestState(metric=metric, select=select)
        self.min_sizes = min_size_candidates(data.min_size, DEFAULT_MIN_SIZE)
        self.iteration = 0
        self.clock = 0.0  # seconds of training, rank 0's clock in a data-parallel run
        self.stopped = False  # a stop request (on any rank)
        self.loss = float("nan")
        self.window: deque[tuple[float, int]] = deque(maxlen=20)
        logger.info(
            "training on %s: %d sample(s), input %d px (output %d), batch %d, validation %s",
            plan.device_text,
            len(data.samples),
            data.in_size,
            data.out_size,
            self.settings.batch_size,
            f"on {len(data.blocks)} block(s) of {data.block} px" if data.blocks else "off",
        )
        self.train_start = time.perf_counter()
        self.keeper = CheckpointKeeper(checkpoint, model)
        self.keeper.restore(self)
        if model is not None and self.iteration == 0 and data.tiles is not None:
            # the starting weights compete for the best checkpoint: a fine-tuning run that
            # never beats them on the held-out part returns them unchanged
            self.best.offer(self.score(), self.opt.evaluated, 0)

    def finished(self, stop: threading.Event | None) -> bool:
        """Whether the run ends before its next step (stop request, iterations, minutes)."""
        elapsed = time.perf_counter() - self.start
        settings = self.settings
        asked = stop is not None and stop.is_set()
        done = (settings.iterations is not None and self.iteration >= settings.iterations) or (
            settings.minutes is not None and elapsed >= 60.0 * settings.minutes
        )
        clock = time.perf_counter() - self.train_start
        self.stopped, done, self.clock = self.plan.dist.agree(asked, done, clock, self.plan.device)
        return self.stopped or done

    def step(self) -> TrainEvent:
        """Draw and augment a batch, take one optimisation step, validate when due."""
        t0 = time.perf_counter()
        settings, data = self.settings, self.data
        lr = _learning_rate(settings, self.iteration, self.clock)
        x, y, w = data.sampler.sample(settings.batch_size)
        x, y, w = augment_batch(
            x,
            y,
            w,
            self.aug,
            out_size=data.in_shape,
            target_size=data.out_shape,
            generator=self.generator,
            sampling=self.plan.voxel_size,
        )
        self.loss = self.plan.dist.mean(self.opt.step(x, y, w, lr), self.plan.device)
        if not math.isfinite(self.loss):
            raise RuntimeError(
                f"training diverged at iteration {self.iteration + 1} (loss {self.loss}); "
                f"lower the learning rate (now {settings.learning_rate:g})"
            )
        self.iteration += 1
        self.window.append(
            (time.perf_counter() - t0, settings.batch_size * self.plan.dist.world_size)
        )
        done = settings.iterations is not None and self.iteration >= settings.iterations
        score = None
        if data.tiles is not None and (self.iteration % self.validate_every == 0 or done):
            score = self.score()
            self.best.offer(score, self.opt.evaluated, self.iteration)
        self.keeper.after_step(self)
        return self.event(lr, score)

    def score(self) -> ValidationScore:
        """The validation score of the network now (AP with the best post-processing)."""
        plan, tiles = self.plan, self.data.tiles
        assert tiles is not None
        if self.classes:
            return score_classes(
                self.opt.evaluated,
                tiles,
                plan.device,
                amp=plan.amp,
                channels_last=plan.channels_last,
            )
        tune = self.settings.validation_metric == "ap"
        return score_network(
            self.opt.evaluated,
            tiles,
            plan.device,
            gap=plan.gap,
            min_sizes=self.min_sizes if tune else self.min_sizes[:1],
            thresholds=THRESHOLDS if tune else (0.5,),
            amp=plan.amp,
            channels_last=plan.channels_last,
        )

    def event(self, lr: float, score: ValidationScore | None) -> TrainEvent:
        """The progress event after a step."""
        seconds = sum(t for t, _ in self.window)
        return TrainEvent(
            iteration=self.iteration,
            iterations=self.settings.iterations,
            loss=self.loss,
            learning_rate=lr,
            elapsed=time.perf_counter() - self.start,
            samples_per_second=sum(n for _, n in self.window) / seconds if seconds > 0 else 0.0,
            validation=self.best.value(score),
            device=self.plan.device_text,
            best_validation=self.best.value(self.best.score),
            minutes=self.settings.minutes,
            validation_ap=None if score is None else score.ap,
            validation_iou=None if score is None else score.iou,
        )

    def result(self, model: TrainedModel | None, stopped: bool) -> TrainedModel:
        """The best model, with the settings and a summary of the run."""
        self.keeper.at_end(self, stopped)  # before the final validation changes the best state
        if self.data.tiles is not None and self.iteration > 0:
            if self.best.last_validated != self.iteration:
                self.best.offer(self.score(), self.opt.evaluated, self.iteration, keep=False)
        net = self.best.result(self.opt.evaluated, self.data.config, self.iteration)
        best = self.best
        # post-processing chosen on the held-out part, else what the annotation says
        threshold, min_size, confidence = 0.5, self.min_sizes[0], DEFAULT_MIN_CONFIDENCE
        if best.score is not None and best.score.ap is not None:
            threshold, min_size = best.score.threshold, best.score.min_size
            confidence = best.score.min_confidence
        record = {
            "settings": replace(self.settings, seed=self.plan.seed).to_dict(),
            "summary": self.summary(stopped),
        }
        if not self.classes:
            record.update(threshold=threshold, min_size=min_size, min_confidence=confidence)
            if self.data.config.spatial_dims == 3:
                record.update(seed_split=VOLUME_SEED_SPLIT, gap_axes=gap_axes(self.data.samples))
        if model is not None:
            record["fine_tuned_from"] = dict(model.training)
        value = best.value(best.score)
        logger.info(
            "training ended after %d iterations (%s); validation %s; threshold %g, min size %s, "
            "min confidence %g",
            self.iteration,
            "stopped" if stopped else "done",
            "n/a" if value is None else f"{value:.3f} at iteration {best.iteration}",
            threshold,
            min_size,
            confidence,
        )
        return TrainedModel(
            net=net,
            normalization=self.plan.normalization,
            gap=self.plan.gap,
            training=record,
            mode=self.settings.mode,
            class_names=self.class_names(model),
        )

    def class_names(self, model: TrainedModel | None) -> tuple[str, ...]:
        """Classes mode: the caller's names, else the fine-tuned model's, else 'class k'."""
        if not self.classes:
            return ()
        given = self.names or (model.class_names if model is not None else ())
        return default_class_names(self.data.config.n_classes, given)

    def summary(self, stopped: bool) -> dict[str, Any]:
        """A summary of the run (plain values, stored with the model)."""
        data, best = self.data, self.best.score
        return {
            "iterations_done": self.iteration,
            "stopped": stopped,
            "elapsed_seconds": round(time.perf_counter() - self.start, 3),
            "final_loss": self.loss if math.isfinite(self.loss) else None,
            "validation_metric": METRICS[self.best.metric],
            "validation": self.best.value(best),
            "validation_last": self.best.value(self.best.last_score),
            "validation_ap": None if best is None else best.ap,
            "validation_iou": None if best is None else best.iou,
            "validation_class_iou": None if best is None else _plain_list(best.class_iou),
            "mode": self.settings.mode,
            "n_classes": data.config.n_classes,
            "best_iteration": self.best.iteration,
            "checkpoint": "best" if self.best.select else "last",
            "validation_cells": 0 if data.tiles is None or self.classes else data.tiles.n_cells,
            "validation_blocks": len(data.blocks),
            "input_size": data.in_size,
            "output_size": data.out_size,
            "context": (data.in_size - data.out_size) // 2 if data.config.padding == "same" else 0,
            "seed": self.plan.seed,
            "device": self.plan.device_text,
            "n_images": len(data.samples),
            "annotated_pixels": int(sum(s.n_annotated for s in data.samples)),
            "annotated_cells": int(annotated_cell_areas(data.samples).size),
            "min_size_annotation": data.min_size,
            "split_cells": int(sum(s.split_cells for s in data.samples)),
            "package_version": __version__,
            "torch_version": torch.__version__.split("+")[0],
        }


def run_training(
    images: Any,
    labels: Any,
    regions: Any = None,
    *,
    settings: TrainSettings | None = None,
    stop: threading.Event | None = None,
    callback: Callable[[TrainEvent], Any] | None = None,
    **options: Any,
) -> TrainedModel:
    """Run :func:`train` to the end and return its model.

    Parameters
    ----------
    images, labels, regions, settings, stop
        As for :func:`train`.
    callback : callable, optional
        Called with every :class:`TrainEvent`.
    **options
        The other keyword arguments of :func:`train` (``model``, ``class_names``,
        ``checkpoint``), passed on as they are.

    Returns
    -------
    TrainedModel
        The trained model.

    Raises
    ------
    ValueError
        As :func:`train`, and when the run has neither an iteration nor a time limit nor a
        ``stop`` event (it would never end).
    """
    settings = settings or TrainSettings()
    if settings.iterations is None and settings.minutes is None and stop is None:
        raise ValueError(
            "settings.iterations and settings.minutes are both None and no stop event was "
            "given: training would never end"
        )
    run = train(images, labels, regions, settings=settings, stop=stop, **options)
    return run_to_end(run, callback)


def _plain_list(values: Sequence[float] | None) -> list[float | None] | None:
    """Per-class scores as plain values for the model file (NaN: ``None``)."""
    if values is None:
        return None
    return [float(v) if math.isfinite(v) else None for v in values]


def describe_run(model: TrainedModel) -> str:
    """One line about how a model was trained, for logs and the command line.

    Parameters
    ----------
    model : TrainedModel
        A model returned by :func:`train`.

    Returns
    -------
    str
        E.g. ``'400 iterations in 95 s on CPU, 2 threads; validation AP@0.5 0.86, IoU 0.91'``.
    """
    summary = model.training.get("summary", {})
    text = (
        f"{summary.get('iterations_done', '?')} iterations in "
        f"{summary.get('elapsed_seconds', 0):.0f} s on {summary.get('device', '?')}"
    )
    scores = [
        f"{name} {summary[key]:.3f}"
        for name, key in (
            ("AP@0.5", "validation_ap"),
            ("mean class IoU" if model.mode == "classes" else "IoU", "validation_iou"),
        )
        if summary.get(key) is not None
    ]
    if scores:
        text += "; validation " + ", ".join(scores)
    if summary.get("stopped"):
        text += " (stopped)"
    return text


def preload_training_modules() -> None:
    """Import now what the first training step would import (torch's optimiser machinery).

    Creating the first torch optimiser of a process imports ``torch._dynamo`` (1-2 s on a
    laptop CPU, much of it holding the GIL). A GUI calls this from a background thread when it
    opens, so that its event loop does not stall for hundreds of milliseconds when training
    starts; a second call costs nothing.
    """
    torch.optim.Adam(torch.nn.Linear(1, 1).parameters())
