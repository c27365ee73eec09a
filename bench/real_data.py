"""Real annotated nuclei for bench/bench_real.py: loading, the sparse box, scoring, a baseline.

The data are the DSB2018 / BBBC038v1 nuclei in ``shared/data/nuclei-dsb2018`` (README there):
``train/`` and ``test/`` folders with ``images/*.tif`` (uint8) and ``labels/*.tif`` (uint16).

The sparse protocol (a user paints a few nuclei inside a box of the test image itself)
-------------------------------------------------------------------------------------
Box (:func:`choose_box`). With ``n`` nuclei in the image, the target count is
``t = min(20, n // 2)`` (about 20 painted nuclei, as in issue 11, but never more than half of the
image's nuclei, so that enough remain to be scored) and a box is acceptable when the number of
nuclei whose *centroid* lies inside it is in ``[min(15, t), 30]``. Candidates are scanned in a
fixed order: area fraction of the image 1/3, then (only if no acceptable box exists) 0.4, then
0.5; for each, aspect ratios height/width 1, 3/4, 4/3; for each, top-left corners on an 8-pixel
grid in raster order (the last row and column flush with the image edge). The chosen box is the
acceptable one of the first fraction that has any, with the count closest to ``t``, ties to the
first in scan order; with no acceptable box at all, the candidate closest to ``t``.

Annotation (:func:`sparse_annotation`). Every pixel inside the box carries its ground truth: the
nuclei inside it, and the parts inside the box of the nuclei cut by its edge (clipped, never
dropped: a user painting inside a region paints what they see there, and dropping a cut nucleus
would label its visible part as background). The region is the box; nothing outside it is
annotated.

Scoring (:func:`score_outside`). Ground truth and prediction are matched one-to-one on the whole
image, on whole objects (:func:`napari_unet.core.training.match_instances`, IoU threshold 0.5 or
0.75). Only the ground-truth nuclei whose centroid lies *outside* the box are scored: TP = matched
pairs whose true nucleus is outside, FN = unmatched true nuclei outside, FP = unmatched predicted
objects whose centroid is outside. A prediction matched to a nucleus inside the box is neither a
TP nor an FP, and a nucleus straddling the edge counts on the side of its centroid, matched to
its whole predicted object wherever that object's centroid lies, so that no object is counted
twice and edge objects are not penalised by a cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.segmentation import watershed

from napari_unet.core.training import match_instances

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nuclei-dsb2018"
FRACTIONS = (1 / 3, 0.4, 0.5)
ASPECTS = (1.0, 0.75, 4 / 3)
STRIDE = 8


@dataclass(frozen=True)
class Sample:
    """One annotated image: its file stem, the image and the ground-truth instance labels."""

    name: str
    image: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Box:
    """A rectangle ``[y0, y1) x [x0, x1)`` and the number of nuclei centred inside it."""

    y0: int
    x0: int
    y1: int
    x1: int
    count: int

    def mask(self, shape: tuple[int, ...]) -> np.ndarray:
        """Boolean mask of the box in an image of ``shape``."""
        mask = np.zeros(shape, bool)
        mask[self.y0 : self.y1, self.x0 : self.x1] = True
        return mask

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Whether each ``(y, x)`` row of ``points`` lies inside the box."""
        y, x = points[:, 0], points[:, 1]
        return (y >= self.y0) & (y < self.y1) & (x >= self.x0) & (x < self.x1)

    def __str__(self) -> str:
        return f"y {self.y0}:{self.y1}, x {self.x0}:{self.x1} ({self.count} nuclei)"


def load_split(root: Path, split: str) -> list[Sample]:
    """Images and labels of ``root/split`` (``'train'`` or ``'test'``), sorted by file name."""
    folder = Path(root) / split
    files = sorted((folder / "images").glob("*.tif"))
    if not files:
        raise FileNotFoundError(f"no images in {folder / 'images'} (see --data)")
    return [
        Sample(f.stem, tifffile.imread(f), tifffile.imread(folder / "labels" / f.name))
        for f in files
    ]


def centroids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label ids (without 0) and their centroids as an ``(n, 2)`` float array."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        return ids, np.zeros((0, 2))
    return ids, np.asarray(ndi.center_of_mass(np.ones(labels.shape), labels, ids)).reshape(-1, 2)


def _candidates(shape: tuple[int, int], fraction: float):
    """Boxes of about ``fraction`` of the image, in the fixed scan order (no counts yet)."""
    height, width = shape
    for aspect in ASPECTS:
        h = min(height, round(np.sqrt(fraction * height * width * aspect)))
        w = min(width, round(fraction * height * width / h))
        ys = sorted({*range(0, height - h + 1, STRIDE), height - h})
        xs = sorted({*range(0, width - w + 1, STRIDE), width - w})
        for y in ys:
            for x in xs:
                yield y, x, y + h, x + w


def choose_box(labels: np.ndarray) -> Box:
    """The sparse-protocol box of an image (the rule is in the module docstring)."""
    _, points = centroids(labels)
    target = min(20, len(points) // 2)
    low, high = min(15, target), 30
    fallback: Box | None = None
    for fraction in FRACTIONS:
        best: Box | None = None
        for y0, x0, y1, x1 in _candidates(labels.shape, fraction):
            box = Box(y0, x0, y1, x1, 0)
            box = Box(y0, x0, y1, x1, int(box.contains(points).sum()))
            if fallback is None or abs(box.count - target) < abs(fallback.count - target):
                fallback = box
            if low <= box.count <= high and (
                best is None or abs(box.count - target) < abs(best.count - target)
            ):
                best = box
        if best is not None:
            return best
    assert fallback is not None
    return fallback


def sparse_annotation(labels: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """The painted labels (ground truth clipped to the box) and the region (the box)."""
    region = box.mask(labels.shape)
    return np.where(region, labels, 0).astype(labels.dtype), region


def score_outside(
    true: np.ndarray, pred: np.ndarray, box: Box, thresholds: Sequence[float]
) -> np.ndarray:
    """``(len(thresholds), 3)`` counts TP, FP, FN of the objects outside the box (rule above)."""
    true_ids, true_points = centroids(true)
    pred_ids, pred_points = centroids(pred)
    true_out = set(true_ids[~box.contains(true_points)].tolist())
    pred_out = set(pred_ids[~box.contains(pred_points)].tolist())
    counts = np.zeros((len(thresholds), 3), np.int64)
    for i, threshold in enumerate(thresholds):
        pairs = match_instances(true, pred, threshold).pairs
        matched_true = {t for t, _ in pairs}
        matched_pred = {p for _, p in pairs}
        tp = sum(t in true_out for t, _ in pairs)
        counts[i] = (tp, len(pred_out - matched_pred), len(true_out - matched_true))
    return counts


def score_whole(true: np.ndarray, pred: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """``(len(thresholds), 3)`` counts TP, FP, FN over the whole image."""
    counts = np.zeros((len(thresholds), 3), np.int64)
    for i, threshold in enumerate(thresholds):
        m = match_instances(true, pred, threshold)
        counts[i] = (m.tp, m.fp, m.fn)
    return counts


def ap_from_counts(counts: np.ndarray) -> np.ndarray:
    """``TP / (TP + FP + FN)`` per row of TP, FP, FN counts (1.0 for an empty row)."""
    counts = np.asarray(counts)
    total = counts.sum(axis=-1)
    return np.where(total > 0, counts[..., 0] / np.maximum(total, 1), 1.0)


def otsu_watershed(image: np.ndarray) -> np.ndarray:
    """Otsu threshold + distance-transform watershed, the same on every image (no labels used).

    Gaussian smoothing (sigma 1 px), Otsu's threshold, holes filled, objects under 16 px removed;
    seeds are the maxima of the smoothed distance transform at least ``d`` px apart, with ``d``
    half the typical nucleus radius ``sqrt(median component area / pi)`` of this image's own
    mask (at least 3 px), so that the same rule serves small and large nuclei; watershed of the
    negative distance inside the mask. The constants were chosen on the train split only.
    """
    smooth = gaussian(image.astype(np.float32), sigma=1.0, preserve_range=True)
    mask = ndi.binary_fill_holes(smooth > threshold_otsu(smooth))
    components, n = ndi.label(mask)
    areas = np.bincount(components.ravel())[1:]
    small = np.flatnonzero(areas < 16) + 1
    mask &= ~np.isin(components, small)
    components, n = ndi.label(mask)
    areas = areas[areas >= 16]
    if n == 0:
        return np.zeros(image.shape, np.int32)
    radius = np.sqrt(np.median(areas) / np.pi)
    dist = gaussian(ndi.distance_transform_edt(mask), sigma=1.0, preserve_range=True)
    peaks = peak_local_max(
        dist, min_distance=max(3, round(radius / 2)), labels=components, exclude_border=False
    )
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=mask).astype(np.int32)
