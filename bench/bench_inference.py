"""Exact overlap-tile inference on the CPU: cost against one whole-image pass, against MONAI.

Measured side by side in one run, with the fast preset (untrained weights: speed and exactness
do not depend on training) on a 2048² image of the sample data (512² with ``--quick``):

1. tiled at the automatic tile size and at a forced small tile, against one whole-image pass
   (:func:`~napari_unet.core.inference.predict_whole`): time ratio, the halo cost the small tile
   cannot avoid, and the largest difference in probability;
2. MONAI's ``sliding_window_inference`` with the same network, the same normalised image and
   the same batch size (overlap 0.25, gaussian blending) with a 512-pixel window and with our
   automatic input tile as the window, beside ours at the same input tile;
3. throughput (pixels/s) of both presets, with and without test-time augmentation.

The machine's CPU may be shared with other work while this runs; the load average before and
after is printed with the tables, and the timings are only as steady as it was.

Usage: ``python bench/bench_inference.py [--quick]``
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from napari_unet.core.inference import (
    foreground_probability,
    predict_probabilities,
    predict_whole,
    prediction_plan,
)
from napari_unet.core.inference.tiling import available_memory_bytes
from napari_unet.core.model import TrainedModel, UNet, preset_config
from napari_unet.core.normalize import normalize_image
from napari_unet.core.progress import run_to_end
from napari_unet.sample_data import make_touching_cells


def _timed(fn: Callable[[], np.ndarray], repeat: int = 1) -> tuple[float, np.ndarray]:
    """Best wall time of ``repeat`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def _model(preset: str, seed: int = 0) -> TrainedModel:
    torch.manual_seed(seed)
    return TrainedModel(UNet(preset_config(preset)).eval())


def _image(size: int, seed: int = 3) -> np.ndarray:
    return make_touching_cells((size, size), n_cells=size * size // 2500, seed=seed)[0]


def _load() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def _monai(
    model: TrainedModel, image: np.ndarray, window: int, batch: int
) -> Callable[[], np.ndarray]:
    """MONAI sliding-window inference with our network, prepared as ours is on the CPU."""
    from monai.inferers import sliding_window_inference

    net = model.net.eval().to(memory_format=torch.channels_last)
    x = torch.from_numpy(normalize_image(image[None], model.normalization))[None]

    def predictor(tiles: torch.Tensor) -> torch.Tensor:
        return foreground_probability(net(tiles.contiguous(memory_format=torch.channels_last)))[
            :, None
        ]

    def run() -> np.ndarray:
        with torch.inference_mode():
            out = sliding_window_inference(
                x, (window, window), batch, predictor, overlap=0.25, mode="gaussian"
            )
        return out[0, 0].numpy()

    return run


def run(quick: bool = False) -> str:
    """Measure and return the markdown section."""
    size = 512 if quick else 2048
    small = 320 if quick else 512
    repeat = 1 if quick else 2
    load_before = _load()
    model = _model("fast")
    config = model.config
    image = _image(size)
    # warm-up (kernel choice)
    run_to_end(predict_probabilities(model, image[:256, :256], device="cpu"))

    # 1. tiled vs one whole-image pass ----------------------------------------------------------
    t_whole, whole = _timed(lambda: predict_whole(model, image, device="cpu"), repeat)
    whole_in = config.admissible_size(size + 2 * config.halo)
    auto = prediction_plan(model, image, device="cpu")
    t_auto, tiled = _timed(
        lambda: run_to_end(predict_probabilities(model, image, device="cpu")), repeat
    )
    forced = prediction_plan(model, image, tile=small, device="cpu")
    t_small, tiled_small = _timed(
        lambda: run_to_end(predict_probabilities(model, image, tile=small, device="cpu"))
    )
    rows = [
        "| run | input tile (output) | tiles x batch | time (s) | time / one pass | "
        "work / one pass | time / work | halo cost (tile/output)² | time / halo cost | "
        "max abs difference |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| one whole-image pass | {whole_in}² | 1 x 1 | {t_whole:.2f} | 1.00 | 1.00 | 1.00 | "
        "| | 0 |",
    ]
    for name, plan, seconds, result in (
        ("tiled, automatic tile", auto, t_auto, tiled),
        (f"tiled, forced tile {small}", forced, t_small, tiled_small),
    ):
        ty, tx = plan.tile
        lay = plan.layout
        sy, sx = min(lay.y.stride, lay.y.size), min(lay.x.stride, lay.x.size)
        work = lay.count * ty * tx / whole_in**2
        ratio = seconds / t_whole
        halo = (
            f"{(ty / sy) * (tx / sx):.2f} | **{ratio / ((ty / sy) * (tx / sx)):.2f}**"
            if lay.count > 1
            else "(one tile: the one pass) |"
        )
        rows.append(
            f"| {name} | {ty}x{tx} ({sy}x{sx}) | {lay.count} x {plan.batch_size} | "
            f"{seconds:.2f} | **{ratio:.2f}** | {work:.2f} | {ratio / work:.2f} | {halo} | "
            f"{float(np.abs(result - whole).max()):.1e} |"
        )

    # 2. MONAI sliding_window_inference -----------------------------------------------------------
    monai_rows = [
        "| MONAI window | MONAI time (s) | MONAI max abs difference | our input tile | "
        "our time (s) | our max abs difference | MONAI time / ours |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    try:
        import monai  # noqa: F401

        have_monai = True
    except ImportError:  # optional bench dependency
        have_monai = False
    if have_monai:
        auto_window = auto.tile[0]
        t_m512, res_m512 = _timed(_monai(model, image, small, forced.batch_size))
        t_mauto, res_mauto = _timed(_monai(model, image, auto_window, auto.batch_size))
        for window, t_m, res_m, name, t_ours, ours in (
            (small, t_m512, res_m512, f"{auto.tile[0]}x{auto.tile[1]} (automatic)", t_auto, tiled),
            (
                small,
                t_m512,
                res_m512,
                f"{forced.tile[0]}x{forced.tile[1]} (forced {small})",
                t_small,
                tiled_small,
            ),
            (
                auto_window,
                t_mauto,
                res_mauto,
                f"{auto.tile[0]}x{auto.tile[1]} (automatic)",
                t_auto,
                tiled,
            ),
        ):
            monai_rows.append(
                f"| {window} | {t_m:.2f} | {float(np.abs(res_m - whole).max()):.1e} | {name} | "
                f"{t_ours:.2f} | {float(np.abs(ours - whole).max()):.1e} | "
                f"**{t_m / t_ours:.2f}** |"
            )
    else:
        monai_rows.append("| MONAI not installed (`pip install monai`) | | | | | | |")

    # 3. throughput --------------------------------------------------------------------------------
    tp_rows = [
        "| preset | image | input tile | TTA | time (s) | Mpixel/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for preset, n in (("fast", 256 if quick else 1024), ("paper", 128 if quick else 512)):
        m = _model(preset)
        img = _image(n, seed=4)
        plan = prediction_plan(m, img, device="cpu")
        run_to_end(predict_probabilities(m, img[: n // 2, : n // 2], device="cpu"))  # warm-up
        for tta in (False, True):
            seconds, _ = _timed(
                lambda m=m, img=img, tta=tta: run_to_end(
                    predict_probabilities(m, img, device="cpu", tta=tta)
                )
            )
            tp_rows.append(
                f"| {preset} | {n}² | {plan.tile[0]}x{plan.tile[1]} | {'yes' if tta else 'no'} "
                f"| {seconds:.2f} | {n * n / seconds / 1e6:.3f} |"
            )

    command = f"python bench/bench_inference.py{' --quick' if quick else ''}"
    return "\n".join(
        [
            "## Exact overlap-tile inference (CPU)",
            "",
            f"Command: `{command}`. Fast preset (halo {config.halo} px, grid {config.grid}), "
            f"untrained weights, {size}² sample image, CPU with {torch.get_num_threads()} torch "
            f"threads, {available_memory_bytes() / 2**30:.0f} GiB memory available at the start; "
            f"best of {repeat} for the one pass and the automatic tile, one run otherwise. "
            f"Load average (1/5/15 min) before: {load_before}; after: {_load()} — the CPU was "
            "shared with other work, so timings are noisy.",
            "",
            "*Time / one pass*: target at most 1.3 at the automatic tile. *Work / one pass*: "
            "input pixels the tiles feed the network over those of the one pass (the whole "
            "image mirror-padded by the halo); *time / work* near 1 means no cost beyond the "
            "pixels computed. *Halo cost*: (input tile / output tile)², the bound of the "
            "design's target ('small forced tiles within 1.15x of the halo cost x one pass'); "
            "it is looser than *work*, since the one pass carries a halo too. Tiles are laid out "
            "with the fewest tiles the tile size allows, then shrunk to the smallest admissible "
            "size that still covers the image, so a forced tile may be smaller than asked. Max "
            "abs difference: foreground probability against the one pass.",
            "",
            *rows,
            "",
            "Against MONAI `sliding_window_inference` (same network in channels-last under "
            "inference mode, same normalised image, same batch size as ours at that tile, "
            "overlap 0.25, gaussian blending, zero padding where the window exceeds the image). "
            "Max abs difference is from our one whole-image pass. Target: ours at the automatic "
            "tile faster than MONAI with a 512 window (first row), and exact.",
            "",
            *monai_rows,
            "",
            "Throughput at the automatic tile (the fast preset on a smaller image than above, "
            "the paper preset — valid convolutions, 31 M parameters — smaller still):",
            "",
            *tp_rows,
        ]
    )


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
