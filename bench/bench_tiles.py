"""Inference throughput against the tile size, with the halo cost it cannot beat, as a plot.

For the fast preset on a 1024² image (512² with ``--quick``), on the CPU: pixels/s of
:func:`~napari_unet.core.inference.predict_probabilities` at several forced input tile sizes and at
the automatic one, beside one whole-image pass and the bound set by the halo
(``(input tile / output tile)²`` x one pass). Writes docs/images/throughput_vs_tile.png.

Usage: ``python bench/bench_tiles.py [--quick]``
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from napari_unet.core.inference import predict_probabilities, predict_whole, prediction_plan
from napari_unet.core.model import TrainedModel, UNet, preset_config
from napari_unet.core.progress import run_to_end
from napari_unet.sample_data import make_touching_cells

PLOT = Path(__file__).resolve().parent.parent / "docs" / "images" / "throughput_vs_tile.png"


def _best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(quick: bool = False) -> str:
    """Measure throughput against tile size; return the markdown section and write the plot."""
    size = 512 if quick else 1024
    image, _ = make_touching_cells((size, size), n_cells=size * size // 2000, seed=5)
    model = TrainedModel(UNet(preset_config("fast")))
    config = model.config
    repeat = 1 if quick else 2
    t_whole = _best_of(lambda: predict_whole(model, image, device="cpu"), repeat)
    whole_in = config.admissible_size(size + 2 * config.halo) ** 2
    tiles = [t for t in (384, 512, 768, 1024, 1536) if t < size + 2 * config.halo]
    rows = [
        "| input tile | tiles | work (x one pass) | time (x one pass) | time / work | Mpixel/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    points = []
    for tile in [*tiles, None]:
        plan = prediction_plan(model, image, tile=tile, device="cpu")
        seconds = _best_of(
            lambda tile=tile: run_to_end(
                predict_probabilities(model, image, tile=tile, device="cpu")
            ),
            repeat,
        )
        ty, tx = plan.tile
        work = plan.layout.count * ty * tx / whole_in
        label = f"{ty} (automatic)" if tile is None else str(ty)
        rows.append(
            f"| {label} | {plan.layout.count} | {work:.2f} | {seconds / t_whole:.2f} | "
            f"{seconds / t_whole / work:.2f} | {size * size / seconds / 1e6:.2f} |"
        )
        points.append((ty, size * size / seconds / 1e6, work, tile is None))
    whole_rate = size * size / t_whole / 1e6
    _plot(points, whole_rate, size)
    return "\n".join(
        [
            "## Inference throughput against tile size",
            "",
            f"Command: `python bench/bench_tiles.py{' --quick' if quick else ''}`. Fast preset "
            f"(halo {config.halo} px), untrained weights, {size}² image, CPU, best of {repeat}. "
            f"One whole-image pass (the image mirror-padded by the halo): {t_whole:.2f} s "
            f"({whole_rate:.2f} Mpixel/s). *Work* is the pixels the tiles feed the network over "
            "those of the one pass: the cost the halo makes unavoidable at that tile size. "
            "*Time / work* near 1 means no overhead beyond it.",
            "",
            *rows,
            "",
            f"![throughput against tile size](images/{PLOT.name})",
        ]
    )


def _plot(points: list[tuple[int, float, float, bool]], whole_rate: float, size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    forced = [p for p in points if not p[3]]
    ax.plot([p[0] for p in forced], [p[1] for p in forced], "o-", label="measured, forced tile")
    ax.plot(
        [p[0] for p in forced],
        [whole_rate / p[2] for p in forced],
        "k--",
        label="bound: one pass / work",
    )
    auto = [p for p in points if p[3]]
    ax.plot([p[0] for p in auto], [p[1] for p in auto], "r*", ms=14, label="automatic tile")
    ax.axhline(whole_rate, color="gray", lw=0.8, label="one whole-image pass")
    ax.set_xlabel("input tile edge (pixels)")
    ax.set_ylabel("Mpixel/s")
    ax.set_title(f"Fast preset, {size}² image, CPU")
    ax.legend(fontsize=8)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT)
    plt.close(fig)


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
