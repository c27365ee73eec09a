"""Validation: a held-out part of the annotations, and the network scored on it as the user sees it.

:func:`hold_out` sets aside square blocks of the annotations before the training targets are made,
so that held-out cells shape neither the class balance nor anything else of the training loss
(the held-out blocks are treated as unannotated). :func:`validation_tiles` cuts the network's
inputs for those blocks, with the context the network needs, and keeps their instance labels.
:func:`score_network` then scores the network on them by what the user sees, instances: the
foreground probability goes through the post-processing of inference
(:func:`napari_unet.core.inference.postprocess.probabilities_to_labels`) and the instances are
matched one-to-one with the held-out cells (AP at IoU 0.5, :func:`.metrics.window_counts`). The
probability threshold and the minimum object size that score best are chosen there too, and
stored with the model.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import product
from typing import Any

import numpy as np
import torch

from ..inference.postprocess import DEFAULT_MIN_CONFIDENCE, probabilities_to_labels
from ..model import UNetConfig
from ..targets import FOREGROUND, IGNORE
from .data import AnnotatedImage, TargetSpec, pad2d
from .metrics import class_iou, window_counts

__all__ = [
    "CONFIDENCES",
    "MIN_TUNING_CELLS",
    "THRESHOLDS",
    "VIEW_MARGIN",
    "NoValidationWarning",
    "ValidationScore",
    "ValidationTiles",
    "enough_cells",
    "hold_out",
    "min_size_candidates",
    "predict_tiles",
    "score_classes",
    "score_network",
    "validation_block",
    "validation_tiles",
    "warn_without_validation",
]

#: Probability thresholds tried on the held-out part, in order of preference on a tie.
THRESHOLDS = (0.5, 0.4, 0.6, 0.3, 0.7)
#: Smallest peak object probabilities tried on the held-out part, in order of preference (a later
#: one must beat an earlier one by more than one held-out cell's share of AP, :func:`score_network`;
#: 0 for a network too unsure to pass the default: its threshold is chosen low as well). Each
#: value is a full pass of post-processing and matching per threshold and minimum size.
CONFIDENCES = (DEFAULT_MIN_CONFIDENCE, 0.0)
#: Pixels of network output kept around a held-out block for its instances (cells cut by the
#: block's edge are matched whole).
VIEW_MARGIN = 32
#: Fewer held-out cells than this are too few to choose on: the preferred threshold and minimum
#: size are kept, and training keeps its last model rather than an earlier checkpoint.
MIN_TUNING_CELLS = 10


class NoValidationWarning(UserWarning):
    """Validation was asked for, but the annotation is too small to hold a part of it out.

    Training goes on without a validation score: its last state is kept, with the default
    threshold and the minimum size learnt from the annotation.

    Parameters
    ----------
    fraction : float
        The share of the annotation that was to be held out.
    block : int
        Edge of the held-out blocks in pixels.
    mode : {'cells', 'classes'}
        The training mode (the message says what to annotate).
    """

    def __init__(self, fraction: float, block: int, mode: str = "cells") -> None:
        self.fraction, self.block = float(fraction), int(block)
        if mode == "classes":
            rule, more = "touched by scribbles, every class left for training", "paint more strokes"
        else:
            rule = "at least half annotated, with cells left on both sides"
            more = "annotate more cells or a larger region"
        super().__init__(
            f"the annotation is too small to hold out {self.fraction:.0%} of it for validation "
            f"(blocks of {self.block} x {self.block} pixels, {rule}); training goes on without "
            f"a validation score: {more} to get one"
        )


def warn_without_validation(
    fraction: float, blocks: Sequence[object], block: int, mode: str = "cells"
) -> None:
    """Warn (:class:`NoValidationWarning`) when validation was asked for but none is held out.

    Parameters
    ----------
    fraction : float
        ``TrainSettings.validation_fraction``.
    blocks : sequence
        The blocks :func:`hold_out` chose.
    block : int
        Edge of the blocks in pixels.
    mode : {'cells', 'classes'}
        The training mode.
    """
    if fraction > 0 and not blocks:
        warnings.warn(NoValidationWarning(fraction, block, mode), stacklevel=3)


def validation_block(out_size: int, grid: int) -> int:
    """Edge of the held-out blocks: half a training patch, on the network's grid, >= 32.

    Parameters
    ----------
    out_size : int
        Edge of the training patches' loss area.
    grid : int
        The network's grid.

    Returns
    -------
    int
        The edge in pixels.
    """
    return max(32, int(math.ceil(out_size / 2 / grid) * grid))


def hold_out(
    samples: Sequence[AnnotatedImage],
    fraction: float,
    block: int,
    rng: np.random.Generator,
    max_blocks: int = 16,
    targets: TargetSpec | None = None,
) -> tuple[list[AnnotatedImage], list[tuple[int, int, int]]]:
    """Set aside square blocks of the annotations for validation.

    Blocks of ``block`` x ``block`` pixels that are at least half annotated are drawn at random
    until they hold ``fraction`` of the annotated pixels, or ``max_blocks`` of them are drawn
    (which keeps a validation pass cheap on large annotations). Their pixels are then ignored in
    the training samples (the image stays: it is context, as at inference). Nothing is held out
    (an empty list is returned) when the blocks would take more than twice ``fraction`` of the
    annotations, or when either part would be left without foreground.

    Parameters
    ----------
    samples : sequence of AnnotatedImage
        The training data.
    fraction : float
        Share of the annotated pixels to hold out, in [0, 0.5).
    block : int
        Edge of the blocks in pixels.
    rng : numpy.random.Generator
        Source of randomness.
    max_blocks : int
        Most blocks held out.
    targets : TargetSpec, optional
        How the samples' targets were made. Given (and the samples carry their labels), the
        training copies get targets made anew with the held-out blocks outside the annotated
        region, so that held-out cells do not shape the training weights (class balance);
        otherwise the blocks are only masked out.

    Returns
    -------
    training : list of AnnotatedImage
        Copies of the samples with the held-out blocks ignored (the samples themselves when
        nothing is held out).
    blocks : list of tuple of int
        ``(sample index, y0, x0)`` of each held-out block.
    """
    if not 0.0 <= fraction < 0.5:
        raise ValueError(f"validation_fraction must be in [0, 0.5), got {fraction!r}")
    if fraction == 0 or not samples:
        return list(samples), []
    scribbles = targets is not None and targets.mode == "classes"
    chosen = _choose_blocks(samples, fraction, block, rng, max_blocks, scribbles=scribbles)
    if not chosen:
        return list(samples), []
    out = []
    for k, s in enumerate(samples):
        held = np.zeros(s.classes.shape, bool)
        for kk, y0, x0 in chosen:
            if kk == k:
                held[y0 : y0 + block, x0 : x0 + block] = True
        out.append(_without(s, held, targets) if held.any() else s)
    return out, chosen


def _candidate_blocks(
    samples: Sequence[AnnotatedImage], block: int, keep: Callable[[np.ndarray], Any]
) -> list[tuple[int, int, int]]:
    """``(sample index, y0, x0)`` of the blocks on the grid of ``block`` pixels whose
    annotated mask passes ``keep``."""
    candidates = []
    for k, s in enumerate(samples):
        ann = s.annotated
        ny, nx = ann.shape
        for y0 in range(0, ny - block + 1, block):
            for x0 in range(0, nx - block + 1, block):
                if keep(ann[y0 : y0 + block, x0 : x0 + block]):
                    candidates.append((k, y0, x0))
    return candidates


def _choose_blocks(
    samples: Sequence[AnnotatedImage],
    fraction: float,
    block: int,
    rng: np.random.Generator,
    max_blocks: int,
    *,
    scribbles: bool = False,
) -> list[tuple[int, int, int]]:
    """Random blocks holding about ``fraction`` of the annotation; none if that fails.

    Candidates are drawn in random order until they hold ``fraction`` of the annotated pixels
    or ``max_blocks`` are chosen. Cells: a candidate is at least half annotated, and the draw
    fails if it holds over twice ``fraction``, no foreground or all of it. Classes mode
    (``scribbles``, sparse): a block with any painted pixels is a candidate, one that would take
    the held-out part over twice ``fraction`` is passed over, and the draw fails if the
    training part would lose a class entirely.
    """
    if scribbles:
        candidates = _candidate_blocks(samples, block, np.any)
    else:
        candidates = _candidate_blocks(samples, block, lambda a: a.sum() >= block * block / 2)
    # annotated pixels per target class (at least background and foreground)
    n_classes = max(2, 1 + max(int(s.classes[s.annotated].max(initial=0)) for s in samples))
    total = sum(np.bincount(s.classes[s.annotated], minlength=n_classes) for s in samples)
    held = np.zeros(n_classes, np.int64)
    chosen: list[tuple[int, int, int]] = []
    for j in rng.permutation(len(candidates)) if candidates else []:
        if held.sum() >= fraction * total.sum() or len(chosen) >= max_blocks:
            break
        k, y0, x0 = candidates[j]
        box = (slice(y0, y0 + block), slice(x0, x0 + block))
        counts = np.bincount(
            samples[k].classes[box][samples[k].annotated[box]], minlength=n_classes
        )
        if scribbles and (held + counts).sum() > 2 * fraction * total.sum():
            continue
        held += counts
        chosen.append((k, y0, x0))
    if scribbles:
        failed = held.sum() == 0 or np.any((total > 0) & (held == total))
    else:
        fg = held[FOREGROUND]
        failed = held.sum() > 2 * fraction * total.sum() or fg == 0 or fg == total[FOREGROUND]
    return [] if failed else chosen


def _without(s: AnnotatedImage, held: np.ndarray, targets: TargetSpec | None) -> AnnotatedImage:
    """A training copy of ``s`` in which the ``held`` pixels carry no loss."""
    if targets is not None and s.labels is not None:
        region = ~held if s.region is None else s.region & ~held
        made = targets.targets(s.labels, region)
        classes, weights = made.classes, made.weights
    else:
        region = None if s.region is None else s.region & ~held
        classes, weights = s.classes.copy(), s.weights.copy()
        classes[held] = IGNORE
        weights[held] = 0
    return AnnotatedImage(s.image, classes, weights, s.source, s.labels, region, s.split_cells)


@dataclass
class ValidationTiles:
    """Network inputs and targets of the held-out blocks.

    Attributes
    ----------
    images : torch.Tensor
        float32 ``(M, C, S, S)`` inputs, each a held-out block with the context the network
        needs around it (mirrored at image borders).
    classes : torch.Tensor
        int64 ``(M, B, B)`` target classes of the blocks (IGNORE where not annotated).
    offset : int
        Where the block starts in the network's output.
    labels : numpy.ndarray, optional
        int32 ``(M, V, V)`` true instances in a view of the output around each block
        (``margin`` pixels on each side), 0 where unknown; ``None`` when the samples carry no
        labels.
    window : numpy.ndarray, optional
        bool ``(M, V, V)``: the scored pixels of each view (the block's annotated pixels).
    margin : int
        Pixels of the view on each side of the block.
    """

    images: torch.Tensor
    classes: torch.Tensor
    offset: int
    labels: np.ndarray | None = None
    window: np.ndarray | None = None
    margin: int = 0

    @cached_property
    def n_cells(self) -> int:
        """Held-out cells that are scored (at least half inside a block's annotated pixels;
        counted once: the blocks do not change during a run)."""
        if self.labels is None or self.window is None:
            return 0
        return sum(window_counts(t, t, w)[0] for t, w in zip(self.labels, self.window, strict=True))

    def crop(self, output: np.ndarray, margin: int = 0) -> np.ndarray:
        """The held-out blocks (and ``margin`` pixels around each) cut from a network output.

        Parameters
        ----------
        output : numpy.ndarray
            ``(M, ..., O, O)``: one output per tile, as :func:`predict_tiles` returns it.
        margin : int
            Pixels kept on each side of the block (``self.margin`` for the scored views).

        Returns
        -------
        numpy.ndarray
            A view ``(M, ..., B + 2 margin, B + 2 margin)``.
        """
        start = self.offset - margin
        stop = self.offset + self.classes.shape[-1] + margin
        return output[..., start:stop, start:stop]


def validation_tiles(
    samples: Sequence[AnnotatedImage],
    blocks: Sequence[tuple[int, int, int]],
    block: int,
    config: UNetConfig,
    instances: bool = True,
) -> ValidationTiles:
    """Cut the network inputs for the held-out blocks.

    Parameters
    ----------
    samples : sequence of AnnotatedImage
        The *original* samples (with the held-out targets).
    blocks : sequence of tuple of int
        From :func:`hold_out`.
    block : int
        Block edge in pixels.
    config : UNetConfig
        The network, for its geometry.
    instances : bool
        Keep the instances to score (``False`` in the classes mode, whose labels are
        scribbles).

    Returns
    -------
    ValidationTiles
        Inputs, targets and, when the samples carry labels, the instances to score.
    """
    if config.padding == "same":
        n_in = config.admissible_size(block + 2 * config.halo)
    else:
        n_in = config.input_size_for_output(block)
    loss = (n_in - config.output_size(n_in)) // 2  # pixels lost per side (valid padding)
    start = (n_in - block) // 2  # block start within the input
    offset = start - loss
    margin = min(offset, VIEW_MARGIN)
    images, classes, labels, windows = [], [], [], []
    for k, y0, x0 in blocks:
        s = samples[k]
        images.append(_crop_mirror(s.image, y0 - start, x0 - start, n_in))
        classes.append(s.classes[y0 : y0 + block, x0 : x0 + block])
        if instances and s.labels is not None:
            known = s.labels if s.region is None else np.where(s.region, s.labels, 0)
            labels.append(_crop_zero(known, y0 - margin, x0 - margin, block + 2 * margin))
            window = np.zeros((block + 2 * margin,) * 2, bool)
            window[margin : margin + block, margin : margin + block] = (
                True if s.region is None else s.region[y0 : y0 + block, x0 : x0 + block]
            )
            windows.append(window)
    complete = len(labels) == len(blocks)
    return ValidationTiles(
        images=torch.from_numpy(np.stack(images)),
        classes=torch.from_numpy(np.stack(classes).astype(np.int64)),
        offset=offset,
        labels=np.stack(labels).astype(np.int32) if complete else None,
        window=np.stack(windows) if complete else None,
        margin=margin,
    )


def _crop_mirror(image: np.ndarray, y0: int, x0: int, size: int) -> np.ndarray:
    """``image[:, y0:y0+size, x0:x0+size]``, mirrored where it leaves the image."""
    _, ny, nx = image.shape
    pad = (
        (0, 0),
        (max(-y0, 0), max(y0 + size - ny, 0)),
        (max(-x0, 0), max(x0 + size - nx, 0)),
    )
    crop = image[:, max(y0, 0) : y0 + size, max(x0, 0) : x0 + size]
    if any(p != (0, 0) for p in pad):
        crop = pad2d(crop, pad, "reflect")
    return np.ascontiguousarray(crop, dtype=np.float32)


def _crop_zero(array: np.ndarray, y0: int, x0: int, size: int) -> np.ndarray:
    """``array[y0:y0+size, x0:x0+size]``, 0 where it leaves the array."""
    out = np.zeros((size, size), array.dtype)
    ny, nx = array.shape
    ys, xs = slice(max(y0, 0), min(y0 + size, ny)), slice(max(x0, 0), min(x0 + size, nx))
    out[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = array[ys, xs]
    return out


@torch.inference_mode()
def predict_tiles(
    net: torch.nn.Module,
    images: torch.Tensor,
    device: torch.device,
    amp: bool = False,
    channels_last: bool = False,
    batch: int = 4,
    classes: bool = False,
) -> np.ndarray:
    """Foreground (or class) probability of the network on the validation tiles' inputs.

    Parameters
    ----------
    net : torch.nn.Module
        The network (put in evaluation mode for the pass, then each layer back in the mode it
        was in: a fine-tuned network's frozen batch norm stays in evaluation mode).
    images : torch.Tensor
        float32 ``(M, C, S, S)`` inputs (:attr:`ValidationTiles.images`).
    device : torch.device
        Where the network is.
    amp, channels_last : bool
        bf16 autocast; channels-last memory.
    batch : int
        Tiles per forward pass.
    classes : bool
        Return the probability of every class, ``(M, K, O, O)``.

    Returns
    -------
    numpy.ndarray
        float32 ``(M, O, O)``, the whole output of each tile.
    """
    modes = [(module, module.training) for module in net.modules()]
    net.eval()
    out = []
    try:
        for i in range(0, images.shape[0], batch):
            x = images[i : i + batch].to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(x)
            prob = torch.softmax(logits.float(), dim=1)
            out.append((prob if classes else prob[:, FOREGROUND]).cpu().numpy())
    finally:
        for module, mode in modes:
            module.training = mode
    return np.concatenate(out)


@dataclass(frozen=True)
class ValidationScore:
    """How the network does on the held-out part.

    Attributes
    ----------
    iou : float
        Foreground IoU (probability > 0.5) over the annotated held-out pixels.
    ap : float, optional
        Instance AP at IoU 0.5 with the best ``threshold`` and ``min_size`` (``None`` without
        instance labels).
    threshold : float
        The probability threshold that scored ``ap``.
    min_size : int, optional
        The minimum object size that scored ``ap``.
    class_iou : tuple of float, optional
        Classes mode: the IoU of each class on the held-out scribbles (NaN for a class found
        neither there nor in the prediction); ``iou`` is then their mean.
    min_confidence : float
        The smallest peak object probability that scored ``ap``.
    """

    iou: float
    ap: float | None
    threshold: float = 0.5
    min_size: int | None = None
    class_iou: tuple[float, ...] | None = None
    min_confidence: float = DEFAULT_MIN_CONFIDENCE

    def key(self, metric: str) -> tuple[float, float]:
        """What checkpoints are ranked by: ``(AP, IoU)`` for ``'ap'``, ``(IoU, AP)`` else."""
        ap = -1.0 if self.ap is None else self.ap
        return (ap, self.iou) if metric == "ap" and self.ap is not None else (self.iou, ap)


def enough_cells(tiles: ValidationTiles) -> bool:
    """Whether the held-out part holds enough cells (:data:`MIN_TUNING_CELLS`) to choose on.

    Parameters
    ----------
    tiles : ValidationTiles
        The held-out blocks.

    Returns
    -------
    bool
        ``tiles.n_cells >= MIN_TUNING_CELLS``.
    """
    return tiles.n_cells >= MIN_TUNING_CELLS


def min_size_candidates(base: int | None, default: int) -> tuple[int, ...]:
    """Minimum object sizes tried on the held-out part, in order of preference on a tie.

    Never more than the size learnt from the annotation: the held-out part is small, and a
    larger minimum chosen there to drop one fragment drops the small cells elsewhere.

    Parameters
    ----------
    base : int, optional
        The size learnt from the annotation (:func:`~.data.annotation_min_size`).
    default : int
        The size used when nothing was learnt.

    Returns
    -------
    tuple of int
        ``(base, base // 2)`` (distinct, >= 1), or ``(default,)``.

    Examples
    --------
    >>> min_size_candidates(10, 16), min_size_candidates(1, 16), min_size_candidates(None, 16)
    ((10, 5), (1,), (16,))
    """
    if base is None:
        return (int(default),)
    return tuple(dict.fromkeys(max(1, v) for v in (base, base // 2)))


def score_network(
    net: torch.nn.Module,
    tiles: ValidationTiles,
    device: torch.device,
    *,
    gap: int,
    min_sizes: Sequence[int],
    thresholds: Sequence[float] = THRESHOLDS,
    amp: bool = False,
    channels_last: bool = False,
    confidences: Sequence[float] = CONFIDENCES,
) -> ValidationScore:
    """Score the network on the held-out blocks: foreground IoU and instance AP@0.5.

    Parameters
    ----------
    net : torch.nn.Module
        The network.
    tiles : ValidationTiles
        The held-out blocks.
    device : torch.device
        Where the network is.
    gap : int
        The model's gap (post-processing grows instances back by it).
    min_sizes : sequence of int
        Minimum object sizes to try (preferred first).
    thresholds : sequence of float
        Probability thresholds to try (preferred first).
    amp, channels_last : bool
        As for :func:`predict_tiles`.
    confidences : sequence of float
        Smallest peak object probabilities to try (preferred first).

    Returns
    -------
    ValidationScore
        IoU, and the best AP with the threshold, minimum size and confidence that reached it
        (the first in order of preference among equals). A confidence after the first is
        chosen only when it beats the best AP so far by more than one held-out cell's share
        (``1 / n_cells``): on a few held-out cells one object is noise, and the preferred
        confidence scored higher on the unseen images of ``bench/bench_real.py``. With fewer
        than :data:`MIN_TUNING_CELLS` held-out cells only the preferred (first) ones are tried.
    """
    prob = predict_tiles(net, tiles.images, device, amp, channels_last)
    pred = torch.from_numpy(tiles.crop(prob) > 0.5)
    truth = tiles.classes
    annotated, fg = truth != IGNORE, truth == FOREGROUND
    tp = int((pred & fg & annotated).sum())
    fp = int((pred & ~fg & annotated).sum())
    fn = int((~pred & fg & annotated).sum())
    iou = 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)
    if tiles.labels is None or tiles.window is None:
        return ValidationScore(iou, None, 0.5, min_sizes[0] if min_sizes else None)
    views = tiles.crop(prob, tiles.margin)
    if not enough_cells(tiles):
        thresholds, min_sizes, confidences = thresholds[:1], min_sizes[:1], confidences[:1]
    # another confidence must find more than one cell's worth of AP more than the preferred
    # (and a hair more, so that rounding never decides)
    margin = 1e-9 + 1.0 / max(tiles.n_cells, 1)
    best = None
    for confidence in confidences:
        scores = (
            ValidationScore(
                iou,
                _instance_ap(views, tiles, threshold, min_size, gap, confidence),
                float(threshold),
                int(min_size),
                min_confidence=float(confidence),
            )
            for threshold, min_size in product(thresholds, min_sizes)
        )
        score = max(scores, key=lambda v: v.ap or 0.0)  # the first among equals
        if best is None or (score.ap or 0.0) > (best.ap or 0.0) + margin:
            best = score
    assert best is not None, "no confidence to try"
    return best


def score_classes(
    net: torch.nn.Module,
    tiles: ValidationTiles,
    device: torch.device,
    *,
    amp: bool = False,
    channels_last: bool = False,
) -> ValidationScore:
    """Classes mode: the mean per-class IoU of the network on the held-out scribbles.

    Parameters
    ----------
    net, tiles, device, amp, channels_last
        As for :func:`score_network`; the network has ``K`` output classes, the tiles' target
        classes are ``k - 1`` where class ``k`` is painted.

    Returns
    -------
    ValidationScore
        ``iou``: the mean of ``class_iou`` over the classes scored (the argmax class against
        the painted class, :func:`~.metrics.class_iou`); ``ap`` is ``None``.
    """
    prob = predict_tiles(net, tiles.images, device, amp, channels_last, classes=True)
    n_classes = prob.shape[1]
    pred = tiles.crop(prob).argmax(axis=1) + 1
    truth = tiles.classes.numpy()
    truth = np.where(truth == IGNORE, 0, truth + 1)
    per_class = class_iou(truth, pred, n_classes)
    mean = float(np.nanmean(per_class)) if np.isfinite(per_class).any() else 0.0
    return ValidationScore(mean, None, class_iou=tuple(float(v) for v in per_class))


def _instance_ap(
    views: np.ndarray,
    tiles: ValidationTiles,
    threshold: float,
    min_size: int,
    gap: int,
    min_confidence: float,
) -> float:
    """AP@0.5 over the held-out blocks for one threshold, minimum size and confidence."""
    assert tiles.labels is not None and tiles.window is not None
    counts = np.zeros(3, np.int64)
    for prob, truth, window in zip(views, tiles.labels, tiles.window, strict=True):
        pred = probabilities_to_labels(
            prob,
            threshold=threshold,
            gap=gap,
            min_size=min_size,
            min_confidence=min_confidence,
        )
        counts += window_counts(truth, pred, window, 0.5)
    total = int(counts.sum())
    return 1.0 if total == 0 else float(counts[0]) / total
