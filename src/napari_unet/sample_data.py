"""Synthetic touching cells with ground truth, for File -> Open Sample, tests and benchmarks.

:func:`make_touching_cells` (2D) and :func:`make_touching_nuclei_3d` (a volume with anisotropic
z) are plain numpy + scipy; :func:`touching_cells_sample` and :func:`touching_nuclei_3d_sample`
wrap them as napari layer data for the npe2 ``sample_data`` contribution (napari itself is not
imported). :func:`make_cell_classes` (:func:`cell_classes_sample`) is the sample of the classes
mode: two kinds of cells on a structured background, scribbles and the full ground truth.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "CELL_CLASS_NAMES",
    "cell_classes_sample",
    "make_cell_classes",
    "make_touching_cells",
    "make_touching_nuclei_3d",
    "touching_cells_sample",
    "touching_nuclei_3d_sample",
]


def make_touching_cells(
    shape: tuple[int, int] = (256, 256),
    n_cells: int = 40,
    *,
    radius: tuple[float, float] = (7.0, 14.0),
    touching: float = 0.7,
    cluster: float = 0.6,
    noise: float = 0.04,
    blur: float = 1.0,
    illumination: float = 0.4,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Make an image of cells, many of them touching, and its instance labels.

    Cells are ellipses of varied size, orientation and brightness. Where two ellipses overlap,
    each pixel goes to the cell whose (scaled) centre is nearest, so touching cells share a
    straight border with no background between them, which is the hard case border weights are
    for. The image is then blurred, lit unevenly and made noisy.

    Parameters
    ----------
    shape : tuple of int
        ``(Y, X)`` size of the image.
    n_cells : int
        Number of cells to place (fewer if they do not fit).
    radius : tuple of float
        Range of the cells' semi-axes in pixels.
    touching : float
        Centres are placed at least ``touching * (r_i + r_j)`` apart; below 1 neighbours overlap
        and so touch. Must be in (0.3, 2].
    cluster : float
        Probability that a new cell is placed against an existing one (in [0, 1]).
    noise : float
        Standard deviation of the Gaussian noise relative to the mean cell brightness.
    blur : float
        Sigma of the Gaussian blur (the microscope's point-spread), in pixels.
    illumination : float
        Strength of a smooth illumination gradient across the field (0 = even).
    seed : int
        Random seed; the same seed gives the same image and labels.

    Returns
    -------
    image : numpy.ndarray
        uint16 ``(Y, X)`` image.
    labels : numpy.ndarray
        int32 ``(Y, X)`` instance labels, 0 = background, cells numbered 1..n.

    Examples
    --------
    >>> image, labels = make_touching_cells((64, 64), n_cells=5, seed=1)
    >>> image.shape, labels.dtype.name, int(labels.max()) <= 5
    ((64, 64), 'int32', True)
    """
    if len(shape) != 2 or min(shape) < 16:
        raise ValueError(f"shape must be (Y, X) with both sides >= 16, got {shape}")
    if n_cells < 0:
        raise ValueError(f"n_cells must be >= 0, got {n_cells}")
    if not 0.3 < touching <= 2.0:
        raise ValueError(f"touching must be in (0.3, 2], got {touching}")
    rng = np.random.default_rng(seed)  # one generator, drawn from in this order:
    centres, radii = _place_cells(rng, tuple(map(float, shape)), n_cells, radius, touching, cluster)
    labels, brightness = _draw_cells(rng, shape, centres, radii)
    image = _render(rng, labels, brightness, blur=blur, illumination=illumination, noise=noise)
    return image, labels


def _place_cells(
    rng: np.random.Generator,
    extent: tuple[float, ...],
    n_cells: int,
    radius: tuple[float, float],
    touching: float,
    cluster: float,
) -> tuple[list[np.ndarray], list[float]]:
    """Centres and radii of up to ``n_cells`` cells, many placed against an earlier one.

    ``extent`` is the size of the field in the units of ``radius`` (pixels in 2D, physical
    units for a volume); the centres are in the same units.
    """
    ndim = len(extent)
    low, high = np.zeros(ndim), np.asarray(extent, np.float64)
    centres: list[np.ndarray] = []
    radii: list[float] = []
    attempts = 0
    while len(centres) < n_cells and attempts < 200 * max(n_cells, 1):
        attempts += 1
        r = float(rng.uniform(*radius))
        if centres and rng.random() < cluster:
            # Next to an existing cell, close enough for the two to touch.
            j = int(rng.integers(len(centres)))
            direction = _random_direction(rng, ndim)
            dist = rng.uniform(touching, 0.95) * (radii[j] + r)
            c = centres[j] + dist * direction
            if not (np.all(c >= low) and np.all(c < high)):
                continue
        else:
            c = rng.uniform([r * 0.3] * ndim, [e - r * 0.3 for e in extent])
        if centres:
            d = np.linalg.norm(np.asarray(centres) - c, axis=1)
            if np.any(d < touching * (np.asarray(radii) + r)):
                continue
        centres.append(c)
        radii.append(r)
    return centres, radii


def _random_direction(rng: np.random.Generator, ndim: int) -> np.ndarray:
    """A unit vector: an angle in 2D (as the 2D sample always drew it), Gaussian otherwise."""
    if ndim == 2:
        angle = rng.uniform(0, 2 * np.pi)
        return np.array([np.sin(angle), np.cos(angle)])
    v = rng.standard_normal(ndim)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _draw_cells(
    rng: np.random.Generator,
    shape: tuple[int, int],
    centres: list[np.ndarray],
    radii: list[float],
) -> tuple[np.ndarray, np.ndarray]:
    """Ellipse labels (an overlap goes to the nearest scaled centre) and each cell's brightness."""
    height, width = shape
    labels = np.zeros(shape, dtype=np.int32)
    best = np.full(shape, np.inf, dtype=np.float32)
    brightness = np.zeros(len(centres) + 1, dtype=np.float32)
    for k, (c, r) in enumerate(zip(centres, radii, strict=True), start=1):
        ratio = rng.uniform(0.7, 1.0)
        angle = rng.uniform(0, np.pi)
        a, b = r, r * ratio
        y0, y1 = max(int(c[0] - a) - 1, 0), min(int(c[0] + a) + 2, height)
        x0, x1 = max(int(c[1] - a) - 1, 0), min(int(c[1] + a) + 2, width)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = yy - c[0], xx - c[1]
        u = dy * np.cos(angle) + dx * np.sin(angle)
        v = -dy * np.sin(angle) + dx * np.cos(angle)
        d = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        _claim(labels, best, (slice(y0, y1), slice(x0, x1)), d, r, k)
        brightness[k] = rng.uniform(0.5, 1.0)
    return _relabel_connected(labels), brightness


def _claim(
    labels: np.ndarray, best: np.ndarray, box: tuple[slice, ...], d: np.ndarray, r: float, k: int
) -> None:
    """Give cell ``k`` the pixels of ``box`` inside it (``d < 1``, ``d`` its scaled distance
    from the centre) where ``d * r`` beats every cell so far: an overlap goes to the nearest
    scaled centre."""
    score = np.where(d < 1.0, d * r, np.inf).astype(np.float32)
    win = score < best[box]
    best[box][win] = score[win]
    labels[box][win] = k


def _darker_rim(body: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The cells' outermost pixels at 80% brightness."""
    rim = ndi.morphological_gradient(labels, size=3) > 0
    return np.where(rim & (labels > 0), body * 0.8, body)


def _to_uint16(image: np.ndarray) -> np.ndarray:
    """Relative brightness to camera counts (offset 100, 20000 per unit), clipped."""
    image = np.clip(image, 0, None) * 20000 + 100
    return np.clip(image, 0, 65535).astype(np.uint16)


def _render(
    rng: np.random.Generator,
    labels: np.ndarray,
    brightness: np.ndarray,
    *,
    blur: float,
    illumination: float,
    noise: float,
) -> np.ndarray:
    """The uint16 image: textured cell bodies with a darker rim, blur, uneven light, noise."""
    shape = labels.shape
    height, width = shape
    body = brightness[labels] if len(brightness) > 1 else np.zeros(shape, np.float32)
    body = body * (1.0 + 0.08 * ndi.gaussian_filter(rng.standard_normal(shape), 2.0))
    image = 0.05 + _darker_rim(body, labels)
    if blur > 0:
        image = ndi.gaussian_filter(image, blur)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * yy + np.sin(angle) * xx
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    image = image * (1.0 - illumination * ramp)
    image = image + rng.normal(0.0, noise * 0.75, size=shape)
    return _to_uint16(image)


def _relabel_connected(labels: np.ndarray) -> np.ndarray:
    """Keep the largest fully connected piece of each label and number labels 1..n."""
    out = np.zeros_like(labels)
    n = 0
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        mask = labels[sl] == k
        parts, count = ndi.label(mask, structure=np.ones((3,) * labels.ndim))
        if count > 1:
            sizes = np.bincount(parts.ravel())[1:]
            mask = parts == (int(np.argmax(sizes)) + 1)
        if mask.sum() < 5:
            continue
        n += 1
        out[sl][mask] = n
    return out


def touching_cells_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """napari sample: a synthetic image of touching cells and its ground-truth labels.

    Returns
    -------
    list of LayerData tuples
        An image layer ``'touching cells'`` and a labels layer ``'ground truth'``.
    """
    image, labels = make_touching_cells((384, 384), n_cells=80, seed=0)
    return [
        (image, {"name": "touching cells", "colormap": "gray"}, "image"),
        (labels, {"name": "ground truth", "opacity": 0.5}, "labels"),
    ]


def make_touching_nuclei_3d(
    shape: tuple[int, int, int] = (40, 160, 160),
    n_nuclei: int = 60,
    *,
    spacing: tuple[float, float, float] = (2.5, 1.0, 1.0),
    radius: tuple[float, float] = (7.0, 11.0),
    touching: float = 0.75,
    cluster: float = 0.6,
    noise: float = 0.05,
    blur: float = 1.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Make a volume of nuclei, many of them touching, with anisotropic z, and its labels.

    Nuclei are ellipsoids of varied size and orientation placed in physical space (``spacing``
    per axis), so with a z spacing of 2.5 a nucleus of radius 10 spans about 8 slices and 20
    columns. Where two ellipsoids overlap each voxel goes to the nucleus whose (scaled) centre
    is nearest, so touching nuclei share a surface with no background between them. The volume
    is blurred with a point-spread twice as long along z, dimmed with depth and made noisy.

    Parameters
    ----------
    shape : tuple of int
        ``(Z, Y, X)`` size in voxels.
    n_nuclei : int
        Number of nuclei to place (fewer if they do not fit).
    spacing : tuple of float
        Voxel size ``(z, y, x)``: pass it on as the layer's ``scale`` or ``--scale``.
    radius : tuple of float
        Range of the nuclei's largest semi-axis, in the units of ``spacing``.
    touching : float
        Centres are placed at least ``touching * (r_i + r_j)`` apart; below 1 neighbours
        overlap and so touch. Must be in (0.3, 2].
    cluster : float
        Probability that a new nucleus is placed against an existing one (in [0, 1]).
    noise : float
        Standard deviation of the Gaussian noise relative to the mean nucleus brightness.
    blur : float
        In-plane sigma of the Gaussian point-spread in the units of ``spacing`` (twice that
        along z).
    seed : int
        Random seed; the same seed gives the same volume and labels.

    Returns
    -------
    image : numpy.ndarray
        uint16 ``(Z, Y, X)`` volume.
    labels : numpy.ndarray
        int32 ``(Z, Y, X)`` instance labels, 0 = background, nuclei numbered 1..n.

    Examples
    --------
    >>> image, labels = make_touching_nuclei_3d((12, 48, 48), 6, seed=1)
    >>> image.shape, labels.dtype.name, int(labels.max()) <= 6
    ((12, 48, 48), 'int32', True)
    """
    shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
    if len(shape) != 3 or min(shape) < 4 or min(shape[1:]) < 16:
        raise ValueError(f"shape must be (Z, Y, X) with Z >= 4 and Y, X >= 16, got {shape}")
    if n_nuclei < 0:
        raise ValueError(f"n_nuclei must be >= 0, got {n_nuclei}")
    if not 0.3 < touching <= 2.0:
        raise ValueError(f"touching must be in (0.3, 2], got {touching}")
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be three finite values > 0 (z, y, x), got {spacing}")
    rng = np.random.default_rng(seed)
    extent = tuple(float(n * s) for n, s in zip(shape, spacing, strict=True))
    centres, radii = _place_cells(rng, extent, n_nuclei, radius, touching, cluster)
    labels, brightness = _draw_nuclei(rng, shape, np.asarray(spacing, float), centres, radii)
    image = _render_volume(rng, labels, brightness, np.asarray(spacing, float), blur, noise)
    return image, labels


def _draw_nuclei(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    spacing: np.ndarray,
    centres: list[np.ndarray],
    radii: list[float],
) -> tuple[np.ndarray, np.ndarray]:
    """Ellipsoid labels (an overlap goes to the nearest scaled centre) and each brightness."""
    labels = np.zeros(shape, dtype=np.int32)
    best = np.full(shape, np.inf, dtype=np.float32)
    brightness = np.zeros(len(centres) + 1, dtype=np.float32)
    size = np.asarray(shape)
    for k, (c, r) in enumerate(zip(centres, radii, strict=True), start=1):
        axes = r * np.array([1.0, *rng.uniform(0.75, 1.0, 2)])
        rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        lo = np.maximum(np.floor((c - r) / spacing).astype(int) - 1, 0)
        hi = np.minimum(np.ceil((c + r) / spacing).astype(int) + 2, size)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        grid = np.stack(np.mgrid[box], axis=-1).astype(np.float32) * spacing.astype(np.float32)
        local = (grid - c.astype(np.float32)) @ rotation.astype(np.float32)
        d = np.sqrt(np.sum((local / axes.astype(np.float32)) ** 2, axis=-1))
        _claim(labels, best, box, d, r, k)
        brightness[k] = rng.uniform(0.5, 1.0)
    return _relabel_connected(labels), brightness


def _render_volume(
    rng: np.random.Generator,
    labels: np.ndarray,
    brightness: np.ndarray,
    spacing: np.ndarray,
    blur: float,
    noise: float,
) -> np.ndarray:
    """The uint16 volume: textured nuclei with a darker rim, z-long blur, depth, noise."""
    shape = labels.shape
    texture = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 2.0 / spacing)
    body = brightness[labels] * (1.0 + 0.08 * texture)
    image = 0.05 + _darker_rim(body, labels)
    if blur > 0:
        image = ndi.gaussian_filter(image, blur * np.array([2.0, 1.0, 1.0]) / spacing)
    depth = np.linspace(1.0, 0.7, shape[0], dtype=np.float32)[:, None, None]
    image = image * depth + rng.normal(0.0, noise * 0.75, size=shape).astype(np.float32)
    return _to_uint16(image)


def touching_nuclei_3d_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """napari sample: a synthetic volume of touching nuclei (z spacing 2.5) and its labels.

    Returns
    -------
    list of LayerData tuples
        An image layer ``'touching nuclei 3D'`` and a labels layer ``'ground truth 3D'``, both
        with ``scale`` set to the voxel size ``(2.5, 1, 1)``.
    """
    spacing = (2.5, 1.0, 1.0)
    image, labels = make_touching_nuclei_3d((40, 160, 160), 60, spacing=spacing, seed=0)
    return [
        (image, {"name": "touching nuclei 3D", "colormap": "gray", "scale": spacing}, "image"),
        (labels, {"name": "ground truth 3D", "opacity": 0.5, "scale": spacing}, "labels"),
    ]


#: Class names of :func:`make_cell_classes`, class 1 first.
CELL_CLASS_NAMES = ("background", "round cells", "granular rods")


def make_cell_classes(
    shape: tuple[int, int] = (256, 256),
    n_cells: int = 40,
    *,
    noise: float = 0.08,
    scribbled_cells: int = 5,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Make an image of two kinds of cells on a structured background, scribbles and truth.

    Class 1 is the background: uneven light, soft blobs and faint fibres about as bright as
    the cells in places. Class 2, round cells: discs with a smooth interior and a bright rim.
    Class 3, granular rods: elongated ellipses of the same mean brightness, speckled inside.
    The two kinds differ in shape and texture, not in mean brightness. Scribbles are short
    strokes along a few cells of each kind and across the background (well under 5% of the
    pixels), the way a user marks classes in napari; the ground truth gives every pixel its class.

    Parameters
    ----------
    shape : tuple of int
        ``(Y, X)`` size of the image.
    n_cells : int
        Cells to place, half of each kind (fewer if they do not fit).
    noise : float
        Standard deviation of the Gaussian noise (the cells' brightness is about 0.7).
    scribbled_cells : int
        Cells of each kind with a stroke on them.
    seed : int
        Seed of the random generator.

    Returns
    -------
    image : numpy.ndarray
        uint16 ``(Y, X)``.
    scribbles : numpy.ndarray
        uint8 ``(Y, X)``: 0 = not painted, k = class k (:data:`CELL_CLASS_NAMES`).
    truth : numpy.ndarray
        uint8 ``(Y, X)`` class of every pixel, 1 to 3.

    Examples
    --------
    >>> image, scribbles, truth = make_cell_classes((128, 128), 12, seed=1)
    >>> sorted(np.unique(truth).tolist()), bool(np.count_nonzero(scribbles) < 0.05 * 128 * 128)
    ([1, 2, 3], True)
    """
    rng = np.random.default_rng(seed)
    image = _structured_background(shape, rng)
    truth = np.ones(shape, np.uint8)
    cells = _place_class_cells(shape, n_cells, rng)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    speckle = ndi.gaussian_filter(rng.normal(0, 1, shape), 0.8).astype(np.float32)
    for kind, cy, cx, a, b, angle in cells:
        c, s = np.cos(angle), np.sin(angle)
        u = ((yy - cy) * c + (xx - cx) * s) / a
        v = (-(yy - cy) * s + (xx - cx) * c) / b
        rho = np.sqrt(u**2 + v**2)
        inside = rho <= 1
        truth[inside] = kind
        if kind == 2:  # smooth interior, bright rim
            image[inside] = 0.6 + 0.3 * rho[inside] ** 6
        else:  # speckled interior of the same mean brightness
            image[inside] = 0.66 + 0.5 * speckle[inside] / speckle.std()
    image = ndi.gaussian_filter(image, 0.8) + rng.normal(0, noise, shape)
    scribbles = _class_scribbles(truth, cells, scribbled_cells, rng)
    return np.clip(image * 20000 + 500, 0, 65535).astype(np.uint16), scribbles, truth


def _structured_background(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Uneven light, soft blobs and faint oriented fibres (values about 0.2 to 0.6)."""
    light = ndi.gaussian_filter(rng.normal(0, 1, shape), min(shape) / 6)
    light = 0.3 + 0.1 * light / (np.abs(light).max() + 1e-9)
    blobs = ndi.gaussian_filter(rng.normal(0, 1, shape), 4.0)
    blobs = 0.25 * np.clip(blobs / blobs.std() - 1.0, 0, None)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    angle = rng.uniform(0, np.pi)
    fibres = 0.06 * np.sin((yy * np.cos(angle) + xx * np.sin(angle)) / 2.5) ** 8
    return (light + blobs + fibres).astype(np.float32)


def _place_class_cells(
    shape: tuple[int, int], n_cells: int, rng: np.random.Generator
) -> list[tuple[int, float, float, float, float, float]]:
    """``(kind, cy, cx, a, b, angle)`` of cells that do not touch, kinds alternating."""
    cells: list[tuple[int, float, float, float, float, float]] = []
    for _ in range(50 * n_cells):
        if len(cells) >= n_cells:
            break
        kind = 2 + len(cells) % 2
        a, b = (
            (rng.uniform(8, 11),) * 2 if kind == 2 else (rng.uniform(14, 19), rng.uniform(5, 6.5))
        )
        cy, cx = rng.uniform(a, shape[0] - a), rng.uniform(a, shape[1] - a)
        if all(np.hypot(cy - o[1], cx - o[2]) > a + o[3] + 3 for o in cells):
            cells.append((kind, cy, cx, a, b, rng.uniform(0, np.pi)))
    return cells


def _class_scribbles(
    truth: np.ndarray,
    cells: list[tuple[int, float, float, float, float, float]],
    per_kind: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Strokes along the long axis of a few cells of each kind, and across the background."""
    scribbles = np.zeros(truth.shape, np.uint8)
    for kind in (2, 3):
        for _, cy, cx, a, _, angle in [c for c in cells if c[0] == kind][:per_kind]:
            _stroke(scribbles, truth, kind, (cy, cx), angle, 0.6 * a)
    far = ndi.distance_transform_edt(truth == 1) > 4
    for _ in range(10):
        where = np.argwhere(far)
        cy, cx = where[rng.integers(len(where))]
        _stroke(scribbles, truth, 1, (cy, cx), rng.uniform(0, np.pi), 14.0, far)
    return scribbles


def _stroke(
    scribbles: np.ndarray,
    truth: np.ndarray,
    kind: int,
    centre: tuple[float, float],
    angle: float,
    half: float,
    allowed: np.ndarray | None = None,
) -> None:
    """Paint a 3 px wide stroke of ``2 * half`` px, only where the truth is ``kind``."""
    for t in np.linspace(-half, half, int(4 * half) + 1):
        y = round(float(centre[0] + t * np.cos(angle)))
        x = round(float(centre[1] + t * np.sin(angle)))
        ys = slice(max(y - 1, 0), y + 2)
        xs = slice(max(x - 1, 0), x + 2)
        ok = truth[ys, xs] == kind
        if allowed is not None:
            ok &= allowed[ys, xs]
        scribbles[ys, xs][ok] = kind


def cell_classes_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """napari sample for the classes mode: two kinds of cells, scribbles and the ground truth.

    Returns
    -------
    list of LayerData tuples
        An image layer ``'cell classes'``, a labels layer ``'scribbles'`` whose ``features``
        name the classes (one row per label value, row 0 = not painted), and a hidden labels
        layer ``'ground truth classes'``.
    """
    image, scribbles, truth = make_cell_classes((384, 384), n_cells=70, seed=0)
    features = {"index": [0, 1, 2, 3], "name": ["not painted", *CELL_CLASS_NAMES]}
    return [
        (image, {"name": "cell classes", "colormap": "gray"}, "image"),
        (scribbles, {"name": "scribbles", "features": features}, "labels"),
        (truth, {"name": "ground truth classes", "visible": False, "opacity": 0.5}, "labels"),
    ]
