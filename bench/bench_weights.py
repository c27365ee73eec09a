"""Border-weight map speed: ours vs one scipy distance transform vs the naive per-cell method.

Usage::

    python bench/bench_weights.py            # 1024 x 1024, 500 cells; naive method on every cell
    python bench/bench_weights.py --quick    # naive method timed on 10 cells and scaled
    python bench/bench_weights.py --3d       # only the 3D map: 128 x 256 x 256, 300 nuclei

The naive method is eq. 2 done the obvious way: one full-image Euclidean distance transform per
cell, folded into running nearest / second-nearest distance arrays. Everything is measured side
by side in one run, on the same image.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi

from napari_unet.core.targets import (
    BorderWeightMap,
    border_weight_map,
    border_weight_stack,
    cut_gap,
    training_targets,
)
from napari_unet.sample_data import make_touching_cells, make_touching_nuclei_3d

SHAPE = (1024, 1024)
N_CELLS = 500
SHAPE_3D = (128, 256, 256)
N_NUCLEI = 300
SPACING_3D = (2.0, 1.0, 1.0)


def _best(fn: Callable[[], object], repeats: int) -> float:
    """Best wall-clock time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def naive_weight_map(
    labels: np.ndarray,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    cells: list[int] | None = None,
    sampling: tuple[float, ...] | None = None,
) -> np.ndarray:
    """Eq. 2 with one full-image distance transform per cell (float64, class balance on);
    with ``sampling`` the distances are in pixels of the finest axis."""
    ids = [int(k) for k in np.unique(labels) if k] if cells is None else cells
    spacing = None if sampling is None else np.asarray(sampling) / min(sampling)
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    for k in ids:
        dk = ndi.distance_transform_edt(labels != k, sampling=spacing)
        np.minimum(d2, np.maximum(d1, dk), out=d2)
        np.minimum(d1, dk, out=d1)
    fg = labels > 0
    n, n_fg = labels.size, int(fg.sum())
    wc = np.where(fg, n / (2 * n_fg), n / (2 * (n - n_fg)))
    border = np.where(fg, 0.0, w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2)))
    return wc + border


def run(quick: bool = False) -> str:
    """Measure the 2D and the 3D maps and return two markdown sections."""
    return run_2d(quick) + "\n\n" + run_3d(quick)


def run_2d(quick: bool = False) -> str:
    """Measure the 2D map and return a markdown section."""
    _, labels = make_touching_cells(SHAPE, N_CELLS, radius=(8, 16), seed=0)
    n_cells = len(np.unique(labels)) - 1
    repeats = 3 if quick else 5

    t_edt = _best(lambda: ndi.distance_transform_edt(labels == 0), repeats)
    t_ours = _best(lambda: border_weight_map(labels), repeats)
    t_targets = _best(lambda: training_targets(labels), repeats)

    # Naive method: on every cell (and its values compared), or on a subset, scaled.
    if quick:
        subset = [int(k) for k in np.unique(labels) if k][:10]
        t0 = time.perf_counter()
        naive_weight_map(labels, cells=subset)
        t_naive = (time.perf_counter() - t0) * n_cells / len(subset)
        naive_how = f"timed on {len(subset)} cells, scaled linearly to {n_cells}"
        small = make_touching_cells((256, 256), 60, radius=(8, 16), seed=0)[1]
        diff = float(np.abs(border_weight_map(small) - naive_weight_map(small)).max())
        diff_on = "256 x 256, 60 cells (quick run)"
    else:
        t0 = time.perf_counter()
        reference = naive_weight_map(labels)
        t_naive = time.perf_counter() - t0
        naive_how = f"all {n_cells} cells"
        diff = float(np.abs(border_weight_map(labels) - reference).max())
        diff_on = f"{SHAPE[0]} x {SHAPE[1]}, {n_cells} cells"

    # Live update: paint one new cell (radius 10) and erase another, as a user would.
    live = BorderWeightMap(labels, gap=1)
    painted = labels.copy()
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    painted[(yy - 500) ** 2 + (xx - 500) ** 2 <= 100] = int(labels.max()) + 1
    erased = painted.copy()
    erased[erased == int(labels[labels > 0][0])] = 0
    t_live = []
    for new in (painted, erased, labels):  # paint, erase, back to the start
        t0 = time.perf_counter()
        live.update(new)
        _ = live.weights
        t_live.append(time.perf_counter() - t0)
    t_live_full = _best(lambda: border_weight_map(cut_gap(labels)), repeats)
    live_equal = np.array_equal(live.weights, training_targets(labels).weights)

    command = "python bench/bench_weights.py" + (" --quick" if quick else "")
    rows = [
        ("one `scipy.ndimage.distance_transform_edt` of the image", t_edt, "1.0x"),
        ("`border_weight_map` (ours)", t_ours, f"{t_ours / t_edt:.2f}x"),
        (f"naive per-cell full-image method ({naive_how})", t_naive, f"{t_naive / t_edt:.0f}x"),
        ("`training_targets` (cut gap + map)", t_targets, f"{t_targets / t_edt:.2f}x"),
    ]
    lines = [
        "## Border-weight maps",
        "",
        f"`make_touching_cells({SHAPE}, {N_CELLS}, radius=(8, 16), seed=0)`: "
        f"{SHAPE[0]} x {SHAPE[1]} px, {n_cells} cells, w0 = 10, sigma = 5, class balance on. "
        f"Best of {repeats} runs (the naive method: one run).",
        "",
        "| method | time | vs one EDT |",
        "| --- | ---: | ---: |",
        *(f"| {name} | {t * 1000:.1f} ms | {ratio} |" for name, t, ratio in rows),
        "",
        f"- ours / one EDT: **{t_ours / t_edt:.2f}x** (target <= 3x)",
        f"- naive / ours: **{t_naive / t_ours:.0f}x faster** (target >= 100x)",
        f"- largest difference from the naive method: {diff:.2e} on {diff_on} (target <= 1e-3)",
        "",
        "Live updates (`BorderWeightMap(labels, gap=1).update`, what the weight-map widget "
        "runs while the user paints), each followed by reading the whole map:",
        "",
        "| edit | time | vs full recompute |",
        "| --- | ---: | ---: |",
        f"| full recompute (`border_weight_map(cut_gap(labels))`) | {t_live_full * 1000:.1f} ms "
        "| 1.0x |",
        *(
            f"| {name} | {t * 1000:.1f} ms | {t / t_live_full:.2f}x |"
            for name, t in zip(
                ("paint a new cell (radius 10)", "erase a cell", "undo both"), t_live, strict=True
            )
        ),
        "",
        f"After the three edits the live map equals a full recompute: {live_equal}.",
        "",
        f"Command: `{command}`",
    ]
    return "\n".join(lines)


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def run_3d(quick: bool = False) -> str:
    """Measure the 3D (anisotropic) map and return a markdown section."""
    load_before = _load()
    _, labels = make_touching_nuclei_3d(
        SHAPE_3D, N_NUCLEI, spacing=SPACING_3D, radius=(10.0, 18.0), seed=0
    )
    n_nuclei = int(labels.max())
    repeats = 1 if quick else 3
    t_edt = _best(lambda: ndi.distance_transform_edt(labels == 0, sampling=SPACING_3D), repeats)
    t_edt_iso = _best(lambda: ndi.distance_transform_edt(labels == 0), repeats)
    t_ours = _best(lambda: border_weight_map(labels, sampling=SPACING_3D), repeats)
    t_targets = _best(lambda: training_targets(labels, sampling=SPACING_3D), repeats)
    t_stack = _best(lambda: border_weight_stack(labels), repeats)
    # exactness against the naive method (one full-volume transform per nucleus), on a crop
    _, small = make_touching_nuclei_3d(
        (24, 96, 96), 25, spacing=SPACING_3D, radius=(10.0, 18.0), seed=1
    )
    diff = float(
        np.abs(
            border_weight_map(small, sampling=SPACING_3D)
            - naive_weight_map(small, sampling=SPACING_3D)
        ).max()
    )
    size = " x ".join(map(str, SHAPE_3D))
    rows = [
        ("one `distance_transform_edt` of the volume, `sampling=(2, 1, 1)`", t_edt),
        ("one `distance_transform_edt` of the volume, isotropic", t_edt_iso),
        ("`border_weight_map(labels, sampling=(2, 1, 1))` (ours, 3D)", t_ours),
        ("`training_targets(labels, sampling=(2, 1, 1))` (3D cut gap + map)", t_targets),
        ("`border_weight_stack` (the 2D map of each of the 128 slices)", t_stack),
    ]
    command = "python bench/bench_weights.py --3d" + (" --quick" if quick else "")
    return "\n".join(
        [
            "## 3D weight map (issue #12)",
            "",
            f"`make_touching_nuclei_3d({SHAPE_3D}, {N_NUCLEI}, spacing={SPACING_3D}, "
            f"radius=(10, 18), seed=0)`: {size} voxels, {n_nuclei} nuclei, "
            f"{np.mean(labels > 0):.0%} foreground, z spacing twice the in-plane spacing; "
            f"w0 = 10, sigma = 5 (in-plane pixels), class balance on. Best of {repeats}.",
            "",
            "| method | time | vs one anisotropic EDT | vs one isotropic EDT |",
            "| --- | ---: | ---: | ---: |",
            *(
                f"| {name} | {t:.2f} s | {t / t_edt:.2f}x | {t / t_edt_iso:.2f}x |"
                for name, t in rows
            ),
            "",
            f"- ours / one EDT of the volume: **{t_ours / t_edt:.2f}x** with the same voxel size, "
            f"{t_ours / t_edt_iso:.2f}x against the (faster) isotropic one (target <= 3x)",
            f"- largest difference from the naive method (one anisotropic full-volume EDT per "
            f"nucleus) on 24 x 96 x 96 with {int(small.max())} nuclei: {diff:.2e}",
            f"- load average (1/5/15 min) before: {load_before}; after: {_load()} (2 shared cores)",
            "",
            f"Command: `{command}`",
        ]
    )


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    print(run_3d(quick=quick) if "--3d" in sys.argv else run(quick=quick))
