"""Training: annotated images in, a :class:`~napari_unet.core.model.TrainedModel` out.

:func:`train` is a generator. It checks the inputs, prepares the samples (normalisation,
targets and border weights), holds part of the annotations out for validation when there are
enough, and then runs one optimisation step per iteration, yielding a :class:`TrainEvent` after
each. Its return value (``StopIteration.value``, or what :func:`run_training` returns) is the
best model: the one with the best validation score when part of the annotations was held out,
else the last one. A stop request (``stop.set()``) ends training before the next step and still
returns a usable model.

One step: draw a batch of patches centred on annotated pixels (:class:`~napari_unet.core.data.
PatchSampler`), augment it on the training device with one sampling grid
(:func:`~napari_unet.core.augment.augment_batch`), and minimise the weighted softmax
cross-entropy over the annotated pixels (Ronneberger et al. 2015), with Adam or the paper's SGD
(momentum 0.99). bf16 autocast and channels-last memory are used on CUDA; on the CPU they are
off by default because ``bench/bench_training.py`` measured no gain there.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ... import __version__
from ..device import describe_device, select_device
from ..model import TrainedModel, UNet, UNetConfig, preset_config
from ..normalize import normalization_spec
from ..targets import FOREGROUND, IGNORE
from .augment import augment_batch, context_margin
from .data import (
    PatchSampler,
    ValidationTiles,
    hold_out,
    patch_geometry,
    prepare_samples,
    validation_block,
    validation_tiles,
)
from .settings import TrainSettings

__all__ = [
    "TrainEvent",
    "describe_run",
    "run_training",
    "train",
    "weighted_cross_entropy",
]

logger = logging.getLogger(__name__)

#: The cosine schedule decays the learning rate to this fraction of its start value.
LR_FLOOR = 0.05
#: Linear warm-up over this many first iterations.
WARMUP = 10


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
        Foreground IoU on the held-out annotations, when it was measured at this step.
    device : str
        Where training runs, e.g. ``'CPU, 2 threads'``.
    best_validation : float, optional
        Best validation score so far.
    minutes : float, optional
        Time limit of the run in minutes, if any.
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
    logits: torch.Tensor, classes: torch.Tensor, weights: torch.Tensor
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
    count = (weights > 0).sum().clamp_min(1)
    return (ce * weights).sum() / count


def _learning_rate(settings: TrainSettings, step: int, elapsed: float) -> float:
    """Learning rate for ``step`` (0-based) at ``elapsed`` seconds: warm-up, then cosine."""
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
    """A freshly initialised network, without drawing from torch's global generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet(config)


def _state_cpu(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


@torch.inference_mode()
def _validate(
    net: torch.nn.Module,
    tiles: ValidationTiles,
    device: torch.device,
    amp: bool,
    channels_last: bool,
    batch: int = 4,
) -> float:
    """Foreground IoU of the prediction on the held-out blocks (annotated pixels only)."""
    was_training = net.training
    net.eval()
    tp = fp = fn = 0
    block = tiles.classes.shape[-1]
    o = tiles.offset
    try:
        for i in range(0, tiles.images.shape[0], batch):
            x = tiles.images[i : i + batch].to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(x)
            pred = logits.argmax(1)[:, o : o + block, o : o + block].cpu() == FOREGROUND
            truth = tiles.classes[i : i + batch]
            annotated = truth != IGNORE
            fg = truth == FOREGROUND
            tp += int((pred & fg & annotated).sum())
            fp += int((pred & ~fg & annotated).sum())
            fn += int((~pred & fg & annotated).sum())
    finally:
        net.train(was_training)
    total = tp + fp + fn
    return 1.0 if total == 0 else tp / total


def train(
    images: Any,
    labels: Any,
    regions: Any = None,
    *,
    settings: TrainSettings | None = None,
    model: TrainedModel | None = None,
    stop: threading.Event | None = None,
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
        In a stack, slices without any label are ignored (unless a region marks them).
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

    Yields
    ------
    TrainEvent
        After every optimisation step.

    Returns
    -------
    TrainedModel
        The model with the best validation score (the last one without validation), on the
        CPU in evaluation mode, ``training`` holding the settings and a summary of the run.

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
    settings = settings or TrainSettings()
    if not isinstance(settings, TrainSettings):
        raise ValueError(f"settings must be a TrainSettings, got {type(settings).__name__}")
    settings.validate()
    if model is not None and not isinstance(model, TrainedModel):
        raise ValueError(f"model must be a TrainedModel or None, got {type(model).__name__}")
    start = time.perf_counter()
    device = select_device(settings.device)
    device_text = describe_device(device)
    seed = settings.seed
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**31))
    cuda = device.type == "cuda"
    amp = cuda if settings.amp is None else bool(settings.amp)
    channels_last = cuda if settings.channels_last is None else bool(settings.channels_last)

    # -- data (all input checks happen here, before anything heavy) ----------------------------
    if model is not None:
        normalization = dict(model.normalization)
        gap = int(model.gap)
        in_channels: int | None = model.config.in_channels
        if gap != settings.gap:
            logger.info(
                "fine-tuning keeps the model's gap of %d px (settings say %d)", gap, settings.gap
            )
    else:
        normalization = normalization_spec()
        gap = settings.gap
        in_channels = None
    samples = prepare_samples(
        images,
        labels,
        regions,
        channel_axis=settings.channel_axis,
        rgb=settings.rgb,
        normalization=normalization,
        in_channels=in_channels,
        gap=gap,
        w0=settings.w0,
        sigma=settings.sigma,
        class_balance=settings.class_balance,
        border_weights=settings.border_weights,
    )
    channels = samples[0].image.shape[0]
    if model is not None:
        config = model.config
    else:
        config = preset_config(settings.preset, in_channels=channels)
    largest = max(max(s.classes.shape) for s in samples)
    patch = min(int(settings.patch_size), config.admissible_size(largest))
    in_size, out_size = patch_geometry(config, patch)
    deepest = (in_size - 2 * config.halo if config.padding == "valid" else in_size) // config.grid
    if config.batch_norm and settings.batch_size * max(deepest, 1) ** 2 < 2:
        raise ValueError(
            f"batch_size={settings.batch_size} with a {in_size} px input leaves one value per "
            "channel at the deepest level of the network, which batch normalisation cannot "
            "train on; use batch_size >= 2 or a larger patch_size"
        )
    aug = settings.augment_settings()
    crop = in_size + 2 * context_margin(in_size, aug)

    rng = np.random.default_rng(seed)
    block = validation_block(out_size, config.grid)
    train_samples, blocks = hold_out(samples, settings.validation_fraction, block, rng)
    tiles = validation_tiles(samples, blocks, block, config) if blocks else None
    sampler = PatchSampler(train_samples, crop, device, rng)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)

    # -- network and optimiser ----------------------------------------------------------------
    net = _new_net(config, seed)
    if model is not None:
        net.load_state_dict(_state_cpu(model.net))
    net.to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    net.train()
    forward: Callable[[torch.Tensor], torch.Tensor] = net
    if settings.compile:
        forward = torch.compile(net)
    if settings.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            net.parameters(),
            lr=settings.learning_rate,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
        )
    else:
        optimizer = torch.optim.Adam(
            net.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
    # Dropout draws from torch's global generator: keep a private CPU state so that a seeded run
    # is reproducible and other users of the global generator are left alone.
    private_rng = config.dropout > 0 and device.type == "cpu"
    if private_rng:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            rng_state = torch.get_rng_state()

    if settings.validate_every is not None:
        validate_every = settings.validate_every
    elif settings.iterations:
        validate_every = max(10, min(100, settings.iterations // 10))
    else:
        validate_every = 50
    logger.info(
        "training on %s: %d sample(s), input %d px (output %d), batch %d, validation %s",
        device_text,
        len(samples),
        in_size,
        out_size,
        settings.batch_size,
        f"on {len(blocks)} block(s) of {block} px" if blocks else "off",
    )

    # -- the loop -----------------------------------------------------------------------------
    best_score: float | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_iteration = 0
    last_score: float | None = None
    last_validated = 0
    iteration = 0
    loss_value = float("nan")
    window: deque[tuple[float, int]] = deque(maxlen=20)
    train_start = time.perf_counter()
    stopped = False
    while True:
        elapsed = time.perf_counter() - start
        if stop is not None and stop.is_set():
            stopped = True
            break
        if settings.iterations is not None and iteration >= settings.iterations:
            break
        if settings.minutes is not None and elapsed >= 60.0 * settings.minutes:
            break
        t0 = time.perf_counter()
        lr = _learning_rate(settings, iteration, time.perf_counter() - train_start)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y, w = sampler.sample(settings.batch_size)
        x, y, w = augment_batch(
            x, y, w, aug, out_size=in_size, target_size=out_size, generator=generator
        )
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if private_rng:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(rng_state)
                loss = _step(forward, optimizer, x, y, w, device, amp)
                rng_state = torch.get_rng_state()
        else:
            loss = _step(forward, optimizer, x, y, w, device, amp)
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            raise RuntimeError(
                f"training diverged at iteration {iteration + 1} (loss {loss_value}); "
                f"lower the learning rate (now {settings.learning_rate:g})"
            )
        iteration += 1
        window.append((time.perf_counter() - t0, settings.batch_size))
        score = None
        done = settings.iterations is not None and iteration >= settings.iterations
        if tiles is not None and (iteration % validate_every == 0 or done):
            score = _validate(net, tiles, device, amp, channels_last)
            last_score, last_validated = score, iteration
            if best_score is None or score > best_score:
                best_score, best_state, best_iteration = score, _state_cpu(net), iteration
        seconds = sum(t for t, _ in window)
        yield TrainEvent(
            iteration=iteration,
            iterations=settings.iterations,
            loss=loss_value,
            learning_rate=lr,
            elapsed=time.perf_counter() - start,
            samples_per_second=sum(n for _, n in window) / seconds if seconds > 0 else 0.0,
            validation=score,
            device=device_text,
            best_validation=best_score,
            minutes=settings.minutes,
        )

    # -- the result ---------------------------------------------------------------------------
    if tiles is not None and iteration > 0 and last_validated != iteration:
        last_score = _validate(net, tiles, device, amp, channels_last)
        if best_score is None or last_score > best_score:
            best_score, best_state, best_iteration = last_score, None, iteration
    result = _new_net(config)
    if best_state is not None and best_iteration != iteration:
        result.load_state_dict(best_state)
    else:
        result.load_state_dict(_state_cpu(net))
        best_iteration = iteration
    result.eval()
    summary = {
        "iterations_done": iteration,
        "stopped": stopped,
        "elapsed_seconds": round(time.perf_counter() - start, 3),
        "final_loss": loss_value if math.isfinite(loss_value) else None,
        "validation_metric": "foreground IoU on held-out annotations",
        "validation": best_score,
        "validation_last": last_score,
        "best_iteration": best_iteration,
        "validation_blocks": len(blocks),
        "input_size": in_size,
        "output_size": out_size,
        "seed": seed,
        "device": device_text,
        "n_images": len(samples),
        "annotated_pixels": int(sum(s.n_annotated for s in samples)),
        "package_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
    }
    record = {"settings": replace(settings, seed=seed).to_dict(), "summary": summary}
    if model is not None:
        record["fine_tuned_from"] = dict(model.training)
    logger.info(
        "training ended after %d iterations (%s); validation %s",
        iteration,
        "stopped" if stopped else "done",
        "n/a" if best_score is None else f"{best_score:.3f} at iteration {best_iteration}",
    )
    return TrainedModel(net=result, normalization=normalization, gap=gap, training=record)


def _step(
    forward: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    device: torch.device,
    amp: bool,
) -> torch.Tensor:
    """One optimisation step; returns the loss (detached)."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        logits = forward(x)
    loss = weighted_cross_entropy(logits, y, w)
    loss.backward()
    optimizer.step()
    return loss.detach()


def run_training(
    images: Any,
    labels: Any,
    regions: Any = None,
    *,
    settings: TrainSettings | None = None,
    model: TrainedModel | None = None,
    stop: threading.Event | None = None,
    callback: Callable[[TrainEvent], Any] | None = None,
) -> TrainedModel:
    """Run :func:`train` to the end and return its model.

    Parameters
    ----------
    images, labels, regions, settings, model, stop
        As for :func:`train`.
    callback : callable, optional
        Called with every :class:`TrainEvent`.

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
    run = train(images, labels, regions, settings=settings, model=model, stop=stop)
    while True:
        try:
            event = next(run)
        except StopIteration as finished:
            return finished.value
        if callback is not None:
            callback(event)


def describe_run(model: TrainedModel) -> str:
    """One line about how a model was trained, for logs and the command line.

    Parameters
    ----------
    model : TrainedModel
        A model returned by :func:`train`.

    Returns
    -------
    str
        E.g. ``'400 iterations in 95 s on CPU, 2 threads; validation IoU 0.91'``.
    """
    summary = model.training.get("summary", {})
    text = (
        f"{summary.get('iterations_done', '?')} iterations in "
        f"{summary.get('elapsed_seconds', 0):.0f} s on {summary.get('device', '?')}"
    )
    if summary.get("validation") is not None:
        text += f"; validation IoU {summary['validation']:.3f}"
    if summary.get("stopped"):
        text += " (stopped)"
    return text
