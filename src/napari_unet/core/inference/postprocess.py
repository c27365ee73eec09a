"""From foreground probabilities to instance labels.

Threshold, instances, instances grown back across the gap that training cut between
touching cells (:func:`napari_unet.core.targets.grow_instances`, the one definition of that
growth), small objects dropped, consecutive int32 labels. One 2D slice at a time, with a start
label so that the slices of a stack get labels unique across the stack (:class:`StackLabeller`
keeps that count for a stack); or one 3D volume at a time for a 3D model (3D components, the
gap grown back in 3D with the voxel size as ``sampling``).

For a model of the classes mode: :func:`class_ids` (the most probable class of each pixel) and
:func:`class_objects` (the connected components of chosen classes, as objects).

Instances do not depend on a perfectly predicted gap: the seeds are the connected cores where the
network is confident (``prob > seed_threshold``), which a thin or broken gap still separates, and
a watershed on the probability grows each seed over the foreground (``prob > threshold``).
Foreground without a confident core stays an object of its own. Objects whose most confident
pixel is under ``min_confidence`` are dropped: a network trained on a few painted cells answers
about 0.5 over structures it never saw (haze between dense nuclei, debris), and the fragments of
that haze pass the foreground threshold one by one, while a real object has a core the network
is sure of. With ``seed_split`` (3D models record it) a seed whose probability holds two or
more substantial cores at higher levels (:func:`seed_levels`) is split into them, so that
objects joined by a confident bridge (nuclei touching across slices) come apart without a seed
threshold so high that it breaks weaker objects into fragments. Labels are a function of the
stitched probabilities alone, so tiled inference stays exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from ..targets import grow_instances

if TYPE_CHECKING:
    from ..model import TrainedModel

__all__ = [
    "DEFAULT_MIN_CONFIDENCE",
    "DEFAULT_MIN_SIZE",
    "DEFAULT_THRESHOLD",
    "PostProcessing",
    "StackLabeller",
    "class_ids",
    "class_objects",
    "drop_unsure",
    "model_labeller",
    "postprocessing_defaults",
    "probabilities_to_labels",
    "seed_levels",
    "seeded_instances",
    "split_seeds",
]

#: Objects of fewer pixels than this are dropped unless the caller or the model says otherwise.
DEFAULT_MIN_SIZE = 16
#: Foreground threshold for models that did not choose one on validation.
DEFAULT_THRESHOLD = 0.5
#: Objects whose highest foreground probability is lower are dropped unless the caller or the
#: model says otherwise. Chosen on train images only (docs/benchmarks.md): 0.95-0.995 within 0.005
#: on sparse boxes and 0.03 on the full protocol, 0 (no filter) 0.1 lower on the boxes, 0.999
#: far lower on the full protocol.
DEFAULT_MIN_CONFIDENCE = 0.98
#: The highest level :func:`seed_levels` goes to: ``1 - p`` no smaller than this.
FINEST_SEED_LEVEL = 1e-3


class PostProcessing(NamedTuple):
    """The post-processing options of a model's labels (see :func:`probabilities_to_labels`).

    Attributes
    ----------
    threshold : float
        Foreground threshold.
    min_size : int
        Smallest object kept, in pixels.
    min_confidence : float
        Smallest peak foreground probability of an object kept.
    """

    threshold: float
    min_size: int
    min_confidence: float


def postprocessing_defaults(
    training: dict,
    threshold: float | None = None,
    min_size: int | None = None,
    min_confidence: float | None = None,
) -> PostProcessing:
    """The post-processing to use: the caller's, else the model's, else the defaults.

    Training chooses the threshold and minimum size on the held-out part of the annotations by
    instance AP and stores them in the model (``model.training['threshold']``, ``['min_size']``),
    with the confidence it used (``['min_confidence']``).

    Parameters
    ----------
    training : dict
        The model's training record (``TrainedModel.training``).
    threshold : float, optional
        The caller's threshold, if any.
    min_size : int, optional
        The caller's minimum size, if any.
    min_confidence : float, optional
        The caller's smallest peak probability of an object, if any.

    Returns
    -------
    PostProcessing
        Threshold, minimum size and minimum confidence.

    Examples
    --------
    >>> tuple(postprocessing_defaults({"threshold": 0.4, "min_size": 30}))
    (0.4, 30, 0.98)
    >>> tuple(postprocessing_defaults({"threshold": 0.4}, threshold=0.6, min_size=5))
    (0.6, 5, 0.98)
    >>> tuple(postprocessing_defaults({"min_confidence": 0.5}, min_confidence=0.0))
    (0.5, 16, 0.0)
    """
    if threshold is None:
        threshold = float(training.get("threshold", DEFAULT_THRESHOLD))
    if min_size is None:
        min_size = int(training.get("min_size", DEFAULT_MIN_SIZE))
    if min_confidence is None:
        min_confidence = float(training.get("min_confidence", DEFAULT_MIN_CONFIDENCE))
    return PostProcessing(float(threshold), int(min_size), float(min_confidence))


def probabilities_to_labels(
    prob: np.ndarray,
    *,
    threshold: float = 0.5,
    gap: int = 1,
    min_size: int = DEFAULT_MIN_SIZE,
    start_label: int = 1,
    connectivity: int = 1,
    seed_threshold: float | None = None,
    sampling: tuple[float, ...] | None = None,
    seed_split: float | None = None,
    grow_axes: tuple[int, ...] | None = None,
    min_confidence: float = 0.0,
) -> np.ndarray:
    """Instance labels of one 2D (or 3D) foreground-probability map.

    Steps: foreground where ``prob > threshold``; seeds are the connected components of
    ``prob > seed_threshold``, grown over the foreground by a watershed on the probability
    (foreground components without a seed become objects of their own); instances whose
    highest probability is under ``min_confidence`` dropped; each grown back by ``gap`` pixels
    into the gaps between instances (chessboard distance, never over another instance);
    components of fewer than ``min_size`` pixels dropped; the rest numbered ``start_label,
    start_label + 1, ...`` in raster order of their first pixel.

    Parameters
    ----------
    prob : numpy.ndarray
        2D or 3D foreground probability in ``[0, 1]``.
    threshold : float
        Probability above which a pixel is foreground, in ``[0, 1)``.
    gap : int
        Gap (pixels per side) training cut between touching instances (``model.gap``); 0: none.
    min_size : int
        Smallest object kept, in pixels (0 or 1 keeps all).
    start_label : int
        First label (for a stack, one more than the largest label so far).
    connectivity : {1, 2}
        Pixels connected through edges only (1: cells split by a diagonal line stay apart) or
        through corners too (2; in 3D, through edges as well, not corners).
    seed_threshold : float, optional
        Probability above which a pixel belongs to a seed, in ``[threshold, 1)``. ``None``:
        halfway between ``threshold`` and 1. Equal to ``threshold``: plain connected components.
    sampling : tuple of float, optional
        Voxel size of a 3D map (the gap is grown back in physical units); None: isotropic.
    seed_split : float, optional
        Share in (0, 1] of :func:`split_seeds` (3D models record it); ``None``: no splitting.
    grow_axes : tuple of int, optional
        The axes the gap is grown back along (``grow_instances(axes=)``); ``None``: all.
    min_confidence : float
        Smallest peak probability of an instance kept, in ``[0, 1)``; 0 (the default here)
        keeps all. A model's labels use its own (:func:`postprocessing_defaults`).

    Returns
    -------
    numpy.ndarray
        int32 labels, 0 for background.

    Raises
    ------
    ValueError
        On a probability map that is not 2D or 3D or holds NaN, or an argument out of range.

    Examples
    --------
    >>> prob = np.zeros((5, 9))
    >>> prob[1:4, 1:4] = prob[1:4, 5:8] = 0.9
    >>> probabilities_to_labels(prob, gap=0, min_size=1, start_label=5)[2]
    array([0, 5, 5, 5, 0, 6, 6, 6, 0], dtype=int32)
    """
    prob = np.asarray(prob)
    seed_threshold = (1.0 + float(threshold)) / 2 if seed_threshold is None else seed_threshold
    _check_arguments(prob, threshold, gap, min_size, start_label, connectivity)
    _check_levels(threshold, seed_threshold, seed_split, min_confidence)
    labels, n = seeded_instances(prob, threshold, seed_threshold, connectivity, seed_split)
    if n == 0:
        return labels
    labels = drop_unsure(prob, labels, n, float(min_confidence))
    if gap:
        labels = grow_instances(labels, int(gap), sampling=sampling, axes=grow_axes)
    return _renumber(labels, n, int(min_size), int(start_label))


def drop_unsure(prob: np.ndarray, labels: np.ndarray, n: int, min_confidence: float) -> np.ndarray:
    """Instances whose highest probability is under ``min_confidence`` set to 0.

    Parameters
    ----------
    prob : numpy.ndarray
        Foreground probability.
    labels : numpy.ndarray
        int32 instances numbered 1..n, 0 for background (not modified).
    n : int
        The largest instance number.
    min_confidence : float
        Smallest peak probability kept.

    Returns
    -------
    numpy.ndarray
        The kept instances, with their numbers (``labels`` itself when ``min_confidence`` is 0).

    Examples
    --------
    >>> prob = np.array([[0.9, 0.99, 0, 0.55, 0.6]])
    >>> drop_unsure(prob, np.array([[1, 1, 0, 2, 2]], np.int32), 2, 0.98)
    array([[1, 1, 0, 0, 0]], dtype=int32)
    """
    if not min_confidence > 0:
        return labels
    peaks = np.zeros(n + 1)
    np.maximum.at(peaks, labels.ravel(), np.asarray(prob, np.float64).ravel())
    keep = peaks >= min_confidence
    keep[0] = True
    return np.where(keep[labels], labels, 0).astype(np.int32, copy=False)


def _renumber(labels: np.ndarray, n: int, min_size: int, start_label: int) -> np.ndarray:
    """Drop instances under ``min_size`` px; number the rest from ``start_label`` in the order
    of their first pixels."""
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    ids, first = np.unique(labels.ravel(), return_index=True)
    order = ids[np.argsort(first)]
    order = order[keep[order]]
    mapping = np.zeros(n + 1, np.int64)
    mapping[order] = np.arange(start_label, start_label + order.size)
    if mapping.max(initial=0) > np.iinfo(np.int32).max:
        raise ValueError(
            f"start_label {start_label} leaves no room for {int(keep.sum())} labels in int32"
        )
    return mapping.astype(np.int32)[labels]


def seeded_instances(
    prob: np.ndarray,
    threshold: float,
    seed_threshold: float,
    connectivity: int = 1,
    seed_split: float | None = None,
) -> tuple[np.ndarray, int]:
    """Instances of ``prob > threshold`` grown from the confident cores ``prob > seed_threshold``.

    Parameters
    ----------
    prob : numpy.ndarray
        2D or 3D foreground probability.
    threshold : float
        Foreground threshold.
    seed_threshold : float
        Seed threshold (``>= threshold``); equal to ``threshold`` gives connected components.
    connectivity : {1, 2}
        Pixel connectivity of seeds, components and the watershed.
    seed_split : float, optional
        Split the seeds at the levels above ``seed_threshold`` (:func:`split_seeds`) with this
        share of the median seed's size; ``None``: no splitting.

    Returns
    -------
    labels : numpy.ndarray
        int32 instances numbered 1..n (not in any particular order), 0 for background.
    n : int
        Number of instances.

    Examples
    --------
    >>> prob = np.array([[0.9, 0.9, 0.6, 0.9, 0.9]])  # a weak bridge: the tie goes to one side
    >>> seeded_instances(prob, 0.5, 0.75)[0]
    array([[1, 1, 2, 2, 2]], dtype=int32)
    >>> seeded_instances(prob, 0.5, 0.5)[0]
    array([[1, 1, 1, 1, 1]], dtype=int32)
    """
    structure = ndi.generate_binary_structure(prob.ndim, connectivity)
    foreground = prob > threshold
    if seed_threshold <= threshold:
        labels, n = ndi.label(foreground, structure=structure)
        return labels.astype(np.int32, copy=False), int(n)
    seeds, n = ndi.label(prob > seed_threshold, structure=structure)
    if seed_split is not None and n > 0:
        seeds, n = split_seeds(prob, seeds, seed_levels(seed_threshold)[1:], seed_split, structure)
    labels = watershed(
        -np.asarray(prob, np.float32), seeds, mask=foreground, connectivity=connectivity
    )
    labels = labels.astype(np.int32, copy=False)
    rest, m = ndi.label(foreground & (labels == 0), structure=structure)
    if m:
        labels[rest > 0] = rest[rest > 0] + n
    return labels, int(n + m)


def seed_levels(seed_threshold: float, finest: float = FINEST_SEED_LEVEL) -> tuple[float, ...]:
    """Probability levels from ``seed_threshold`` up, halving the distance to 1 at each step.

    Parameters
    ----------
    seed_threshold : float
        The first level, in [0, 1).
    finest : float
        The last level is the highest with ``1 - level >= finest``.

    Returns
    -------
    tuple of float
        ``seed_threshold, 1 - (1 - seed_threshold) / 2, 1 - (1 - seed_threshold) / 4, ...``

    Examples
    --------
    >>> seed_levels(0.75, finest=0.02)
    (0.75, 0.875, 0.9375, 0.96875)
    """
    if not 0.0 <= float(seed_threshold) < 1.0 or not finest > 0:
        raise ValueError(
            f"seed_threshold must be in [0, 1) and finest > 0, got {seed_threshold!r}, {finest!r}"
        )
    levels = [float(seed_threshold)]
    while (1.0 - levels[-1]) / 2 >= finest:
        levels.append(1.0 - (1.0 - levels[-1]) / 2)
    return tuple(levels)


def split_seeds(
    prob: np.ndarray,
    seeds: np.ndarray,
    levels: Sequence[float],
    share: float,
    structure: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Split seeds that hold two or more substantial cores at higher probability levels.

    Level by level, each seed is replaced by the connected components of ``prob > level``
    inside it ("cores") when at least two of them hold ``share`` times the median size of the
    given seeds or more; its small cores and the rest of it are dropped from the seeds (the
    watershed gives them to the nearest core). A split seed's cores are split again at the
    next levels by the same rule. One confident bridge between two objects (nuclei touching
    across slices, which sparse slice annotations never taught apart) joins their seeds at the
    first level but not at a higher one, while the fragments of a weak object at a high level
    are too small to count: the split needs no global seed threshold.

    Parameters
    ----------
    prob : numpy.ndarray
        Foreground probability, 2D or 3D.
    seeds : numpy.ndarray
        Integer seeds (components of ``prob > levels[0]`` or lower), 0 elsewhere; not modified.
    levels : sequence of float
        Increasing probability levels above the seeds' threshold (:func:`seed_levels`).
    share : float
        The smallest core that counts, as a share of the median seed size (pixels).
    structure : numpy.ndarray, optional
        Connectivity of the cores (``scipy.ndimage.label``); default: through faces.

    Returns
    -------
    seeds : numpy.ndarray
        int32 seeds numbered 1..n (some numbers may be unused).
    n : int
        The largest seed number.

    Examples
    --------
    >>> prob = np.array([[0.9, 0.99, 0.95, 0.99, 0.99, 0.9, 0.99]])
    >>> seeds = (prob > 0.8).astype(np.int32)  # one seed
    >>> split_seeds(prob, seeds, [0.98], share=0.2)[0]
    array([[0, 2, 0, 3, 3, 0, 4]], dtype=int32)
    >>> split_seeds(prob, seeds, [0.98], share=0.3)[0]  # cores of >= 2 pixels count: one
    array([[1, 1, 1, 1, 1, 1, 1]], dtype=int32)
    """
    seeds = np.asarray(seeds).astype(np.int32, copy=True)
    sizes = np.bincount(seeds.ravel())[1:]
    sizes = sizes[sizes > 0]
    n = int(seeds.max(initial=0))
    if sizes.size == 0:
        return seeds, n
    smallest = max(1, round(float(share) * float(np.median(sizes))))
    for level in levels:
        cores, m = ndi.label(prob > level, structure=structure)
        if m == 0:
            break
        inside = cores > 0
        parent = np.zeros(m + 1, np.int64)  # the seed each core lies in (0: none)
        parent[cores[inside]] = seeds[inside]
        big = np.flatnonzero(np.bincount(cores.ravel(), minlength=m + 1) >= smallest)
        big = big[(big > 0) & (parent[big] > 0)]
        count = np.bincount(parent[big], minlength=n + 1)
        split = np.flatnonzero(count >= 2)
        if split.size == 0:
            continue
        seeds[np.isin(seeds, split)] = 0
        kept = big[np.isin(parent[big], split)]
        number = np.zeros(m + 1, np.int32)
        number[kept] = np.arange(n + 1, n + 1 + kept.size, dtype=np.int32)
        new = number[cores]
        seeds[new > 0] = new[new > 0]
        n += int(kept.size)
    return seeds, n


def _check_arguments(
    prob: np.ndarray,
    threshold: float,
    gap: int,
    min_size: int,
    start_label: int,
    connectivity: int,
) -> None:
    """Raise ValueError on a probability map or an argument of the wrong kind or range."""
    if prob.ndim not in (2, 3):
        raise ValueError(f"prob must be a 2D or 3D probability map, got shape {prob.shape}")
    if not np.issubdtype(prob.dtype, np.floating) and not np.issubdtype(prob.dtype, np.integer):
        raise ValueError(f"prob must hold real numbers, got dtype {prob.dtype}")
    if np.issubdtype(prob.dtype, np.floating) and np.isnan(prob).any():
        raise ValueError("prob contains NaN; expected probabilities in [0, 1]")
    if not 0.0 <= float(threshold) < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    for name, value, low in (
        ("gap", gap, 0),
        ("min_size", min_size, 0),
        ("start_label", start_label, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 or 2, got {connectivity!r}")


def _check_levels(
    threshold: float, seed_threshold: float, seed_split: float | None, min_confidence: float
) -> None:
    """Raise ValueError on a seed threshold, seed split or minimum confidence out of range."""
    if not 0.0 <= float(min_confidence) < 1.0:
        raise ValueError(f"min_confidence must be in [0, 1), got {min_confidence!r}")
    if not float(threshold) <= float(seed_threshold) < 1.0:
        raise ValueError(
            f"seed_threshold must be in [threshold, 1) = [{threshold}, 1), got {seed_threshold!r}"
        )
    if seed_split is not None and not 0.0 < float(seed_split) <= 1.0:
        raise ValueError(f"seed_split must be in (0, 1] or None, got {seed_split!r}")


@dataclass(kw_only=True, eq=False)
class StackLabeller:
    """Labels the 2D probability maps of a stack (or 3D volumes) one by one, unique across them.

    Each slice is labelled by :func:`probabilities_to_labels` starting one above the largest
    label so far, so the labels of a stack are unique and consecutive in slice order. The
    arguments are checked when the labeller is made, before any work is done.

    Parameters
    ----------
    threshold, gap, min_size, sampling, seed_threshold, seed_split, grow_axes, min_confidence
        As for :func:`probabilities_to_labels`.

    Attributes
    ----------
    next_label : int
        The first label of the next slice.

    Examples
    --------
    >>> prob = np.zeros((5, 9))
    >>> prob[1:4, 1:4] = prob[1:4, 5:8] = 0.9
    >>> labeller = StackLabeller(gap=0, min_size=1)
    >>> [int(labeller(prob).max()), int(labeller(prob).max()), labeller.n_objects]
    [2, 4, 4]
    """

    threshold: float = DEFAULT_THRESHOLD
    gap: int = 1
    min_size: int = DEFAULT_MIN_SIZE
    sampling: tuple[float, ...] | None = None
    seed_threshold: float | None = None
    seed_split: float | None = None
    grow_axes: tuple[int, ...] | None = None
    min_confidence: float = 0.0
    next_label: int = field(default=1, init=False)

    def __post_init__(self) -> None:
        # an empty map is labelled at once: the options are checked, nothing is grown
        probabilities_to_labels(np.zeros((1, 1), np.float32), **self.options)

    @property
    def options(self) -> dict[str, Any]:
        """The keywords of :func:`probabilities_to_labels` that the labeller passes each slice
        (all but ``start_label``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    def __call__(self, prob: np.ndarray) -> np.ndarray:
        """Labels of the next slice.

        Parameters
        ----------
        prob : numpy.ndarray
            2D foreground probability of the slice (3D of a volume).

        Returns
        -------
        numpy.ndarray
            int32 labels, 0 for background, all at least :attr:`next_label` before the call.
        """
        labels = probabilities_to_labels(prob, start_label=self.next_label, **self.options)
        if labels.size and labels.max() >= self.next_label:
            self.next_label = int(labels.max()) + 1
        return labels

    @property
    def n_objects(self) -> int:
        """Objects labelled so far, over all slices."""
        return self.next_label - 1


def class_ids(probabilities: np.ndarray) -> np.ndarray:
    """The most probable class of every pixel, numbered ``1..K`` as the scribbles were painted.

    Parameters
    ----------
    probabilities : numpy.ndarray
        ``(K, ...)`` class probabilities (class 1 first).

    Returns
    -------
    numpy.ndarray
        uint8 class ids of shape ``probabilities.shape[1:]``; a tie goes to the lower class.

    Examples
    --------
    >>> class_ids(np.array([[0.7, 0.2], [0.3, 0.8]])).tolist()
    [1, 2]
    """
    prob = np.asarray(probabilities)
    if prob.ndim < 2 or not 1 <= prob.shape[0] <= 255:
        raise ValueError(
            f"probabilities must be (K, ...) with 1 <= K <= 255 classes, got shape {prob.shape}"
        )
    return (prob.argmax(axis=0) + 1).astype(np.uint8)


def class_objects(
    ids: np.ndarray,
    classes: Sequence[int] | None = None,
    *,
    min_size: int = 0,
    connectivity: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Objects of the chosen classes: the connected components of each class, numbered apart.

    Parameters
    ----------
    ids : numpy.ndarray
        Class ids ``(Y, X)``, or ``(Z, Y, X)`` for a stack of 2D slices (components are found
        in each slice; labels stay unique across the stack).
    classes : sequence of int, optional
        The class ids whose objects are wanted (default: every class present but 0).
    min_size : int
        Components of fewer pixels are dropped.
    connectivity : int
        1: 4-connected, 2: 8-connected components.

    Returns
    -------
    labels : numpy.ndarray
        int32 objects, ``1..n`` (0 = none).
    object_class : numpy.ndarray
        uint8 ``(n + 1,)``: the class of each object (``object_class[0] == 0``).

    Examples
    --------
    >>> ids = np.array([[2, 2, 1, 2], [1, 1, 1, 2]])
    >>> labels, object_class = class_objects(ids, [2])
    >>> labels.tolist(), object_class.tolist()
    ([[1, 1, 0, 2], [0, 0, 0, 2]], [0, 2, 2])
    """
    ids = np.asarray(ids)
    if ids.ndim not in (2, 3) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"ids must be integer class ids (Y, X) or (Z, Y, X), got {ids.dtype} {ids.shape}"
        )
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 or 2, got {connectivity!r}")
    wanted = [int(c) for c in (np.unique(ids[ids > 0]) if classes is None else classes)]
    structure = ndi.generate_binary_structure(2, connectivity)
    labels = np.zeros(ids.shape, np.int32)
    owners = [0]
    for z in range(ids.shape[0]) if ids.ndim == 3 else [None]:
        plane = ids if z is None else ids[z]
        out = labels if z is None else labels[z]
        for c in wanted:
            comp, n = ndi.label(plane == c, structure=structure)
            if n == 0:
                continue
            sizes = np.bincount(comp.ravel(), minlength=n + 1)
            keep = np.flatnonzero(sizes >= max(int(min_size), 1))
            keep = keep[keep > 0]
            table = np.zeros(n + 1, np.int32)
            table[keep] = np.arange(len(owners), len(owners) + keep.size, dtype=np.int32)
            out[comp > 0] = table[comp[comp > 0]]
            owners.extend([c] * keep.size)
    return labels, np.asarray(owners, np.uint8)


def model_labeller(
    model: TrainedModel,
    threshold: float | None = None,
    min_size: int | None = None,
    min_confidence: float | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """What makes a finished slice's probabilities into the model's labels.

    A model of the classes mode gets :func:`class_ids`; any other a :class:`StackLabeller` with
    the model's post-processing: the caller's threshold, minimum size and minimum confidence,
    else the model's
    (:func:`postprocessing_defaults`), its training gap, and for a 3D model its voxel size; the
    model's seed threshold (``model.training['seed_threshold']``, which earlier 3D models
    recorded) where it is at least the threshold, else the default halfway between threshold
    and 1; the model's ``seed_split`` (``model.training['seed_split']``, which 3D training
    records; see :func:`split_seeds`) and ``gap_axes`` (the axes training cut the gap along,
    which 3D training records; the gap is grown back along those only).

    Parameters
    ----------
    model : TrainedModel
        The model whose probabilities are labelled.
    threshold : float, optional
        The caller's threshold, if any.
    min_size : int, optional
        The caller's minimum object size, if any.
    min_confidence : float, optional
        The caller's smallest peak probability of an object, if any.

    Returns
    -------
    callable
        Probabilities of one slice (or volume) -> its labels; a :class:`StackLabeller` numbers
        the slices of a stack on from each other and counts the objects (``n_objects``).
    """
    if model.mode == "classes":
        return class_ids
    post = postprocessing_defaults(model.training, threshold, min_size, min_confidence)
    threshold = post.threshold
    sampling = model.config.voxel_size if model.config.spatial_dims == 3 else None
    seed = model.training.get("seed_threshold")
    seed = float(seed) if seed is not None and float(seed) >= threshold else None
    split, axes = model.training.get("seed_split"), model.training.get("gap_axes")
    return StackLabeller(
        threshold=threshold,
        gap=model.gap,
        min_size=post.min_size,
        min_confidence=post.min_confidence,
        sampling=sampling,
        seed_threshold=seed,
        seed_split=None if split is None else float(split),
        grow_axes=None if axes is None else tuple(int(a) for a in axes),
    )
