"""Where the network runs on the CPU: torch against ONNX Runtime and OpenVINO.

Measured side by side in one process, with the fast preset (untrained weights: speed and
exactness do not depend on training):

1. one forward pass (foreground probability) of one input of 512², 1248² and 2272² pixels in
   torch (channels-last, ``torch.inference_mode``, as the tile engine runs it) and in each
   exported graph (:mod:`napari_unet.core.inference.runtimes`): the whole network, and its
   interior without the halo (:mod:`napari_unet.core.inference.interior`, what the tile engine
   runs); every size and runtime is warmed up once, then the runs go round by round,
   interleaved, and each figure is the best of the rounds; the largest difference in
   probability to torch (on the interior for the interior graph) beside;
2. what the export costs on a model's first use: export to ONNX, loading into each runtime and
   the check against torch (paid once per model and session), for both presets (the interior
   for the fast preset, as the tile engine exports it; the paper preset has valid padding);
3. the whole tiled prediction (:func:`~napari_unet.core.inference.predict_probabilities`,
   automatic tile) of a 1024² and a 2048² image in each runtime, against one raw torch
   channels-last forward of the same padded input (the target is <= 0.5x); one runtime after the
   other (its rounds in a row, then its memory released), so that a runtime's delayed release
   of its working memory does not fall inside another's timing; the raw forward before and
   after them.

The machine's CPU may be shared with other work while this runs; the load average before and
after is printed with the tables, and the timings are only as steady as it was.

Usage: ``python bench/bench_runtimes.py [--quick]`` (``--quick``: 512² and 1248², one round).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from functools import partial

import torch

from napari_unet.core.inference import predict_probabilities, prediction_plan
from napari_unet.core.inference import runtimes as rt
from napari_unet.core.inference.interior import interior_trim
from napari_unet.core.inference.runner import NetworkRunner, make_runner
from napari_unet.core.model import TrainedModel, UNet, preset_config
from napari_unet.core.progress import run_to_end
from napari_unet.sample_data import make_touching_cells

CPU = torch.device("cpu")


def _model(preset: str, seed: int = 0) -> TrainedModel:
    torch.manual_seed(seed)
    return TrainedModel(UNet(preset_config(preset)).eval())


def _load() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _best(job: Callable[[], object], rounds: int) -> float:
    with torch.inference_mode():
        return min(_seconds(job) for _ in range(rounds))


def _runners(model: TrainedModel) -> dict[str, NetworkRunner]:
    """torch, then each installed graph runtime: its whole network and its interior."""
    runners = {"torch": make_runner(model, CPU, False, "float32", "torch")}
    for name in rt.GRAPH_RUNTIMES:
        if name in rt.available_runtimes():
            for trim, label in ((None, name), (interior_trim(model.config), f"{name} interior")):
                net = rt.exported_network(model, name, trim=trim)
                runners[label] = NetworkRunner(net, CPU, None, False, False)
    return runners


def _label(name: str) -> str:
    """``'OpenVINO interior'`` for ``'openvino interior'``."""
    runtime, _, rest = name.partition(" ")
    return " ".join([rt.RUNTIME_NAMES[runtime], *([rest] if rest else [])])


def _crop(prob: torch.Tensor, trim: tuple[int, ...] | None) -> torch.Tensor:
    """``prob`` ``(N, H, W)`` without ``trim`` pixels per side (None: all of it)."""
    if not trim:
        return prob
    return prob[(..., *(slice(t, n - t) for t, n in zip(trim, prob.shape[1:], strict=True)))]


def _forward_table(model: TrainedModel, sizes: list[int], rounds: int) -> list[str]:
    runners = _runners(model)
    inputs = {s: torch.randn(1, 1, s, s, generator=torch.Generator().manual_seed(s)) for s in sizes}
    best = {(s, r): float("inf") for s in sizes for r in runners}
    diff = {}
    with torch.inference_mode():
        for s in sizes:  # warm-up: kernel choice, memory plans; and the differences
            ref = runners["torch"](inputs[s])
            for name, run in runners.items():
                diff[s, name] = float((run(inputs[s]) - _crop(ref, run.trim)).abs().max())
        for _ in range(rounds):
            for s in sizes:
                for name, run in runners.items():
                    t = _seconds(lambda run=run, s=s: run(inputs[s]))
                    best[s, name] = min(best[s, name], t)
    names = [r for r in runners if r != "torch"]
    head = "| input | torch (s) | " + " | ".join(
        f"{_label(r)} (s) | torch / {_label(r)} | max abs diff" for r in names
    )
    rows = [head + " |", "| --- " * (2 + 3 * len(names)) + "|"]
    for s in sizes:
        cells = [f"{s}² | {best[s, 'torch']:.3f}"]
        for r in names:
            ratio = best[s, "torch"] / best[s, r]
            cells.append(f"{best[s, r]:.3f} | {ratio:.2f}x | {diff[s, r]:.1e}")
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _export_table() -> list[str]:
    rows = [
        "| preset | graph size (MB) | content hash (s) | export (s) | "
        + " | ".join(f"{rt.RUNTIME_NAMES[r]}: load + check (s)" for r in rt.GRAPH_RUNTIMES)
        + " | second use, cached (s) |",
        "| --- " * (5 + len(rt.GRAPH_RUNTIMES)) + "|",
    ]
    for preset in ("fast", "paper"):
        model = _model(preset)
        trim = interior_trim(model.config)  # what the tile engine exports (None: valid padding)
        rt.clear_runtime_cache()
        t_hash = _seconds(lambda model=model: rt.model_fingerprint(model))
        t0 = time.perf_counter()
        graph = rt.export_onnx(model, trim) if trim else rt.export_onnx(model)
        t_export = time.perf_counter() - t0
        cells = [preset, f"{len(graph) / 1e6:.1f}", f"{t_hash:.2f}", f"{t_export:.2f}"]
        for name in rt.GRAPH_RUNTIMES:
            if name not in rt.available_runtimes():
                cells.append("not installed")
                continue
            load = partial(rt.exported_network, model, name, trim=trim)
            cells.append(f"{max(_seconds(load) - t_export, 0.0):.2f}")
        t_cached = _seconds(partial(rt.exported_network, model, rt.CPU_DEFAULT_RUNTIME, trim=trim))
        cells.append(f"{t_cached:.2f}")
        rows.append("| " + " | ".join(cells) + " |")
    rt.clear_runtime_cache()
    return rows


def _predict_table(model: TrainedModel, sizes: list[int], rounds: int) -> list[str]:
    """predict_probabilities per runtime against one raw torch forward of the same input."""
    torch_runner = make_runner(model, CPU, False, "float32", "torch")
    names = ["torch", *(r for r in rt.GRAPH_RUNTIMES if r in rt.available_runtimes())]
    rows = [
        "| image | tiles x input tile | raw torch forward of the padded image (s) | "
        + " | ".join(f"{rt.RUNTIME_NAMES[r]}: predict (s) / ratio" for r in names)
        + " |",
        "| --- " * (3 + len(names)) + "|",
    ]
    for size in sizes:
        image = make_touching_cells((size, size), n_cells=size * size // 2500, seed=3)[0]
        plan = prediction_plan(model, image, device="cpu")
        padded = model.config.admissible_size(size + 2 * model.config.halo)
        x = torch.randn(1, 1, padded, padded)
        jobs = {"raw": lambda x=x: torch_runner(x)}
        for r in names:
            jobs[r] = lambda r=r, image=image: run_to_end(
                predict_probabilities(model, image, device="cpu", runtime=r)
            )
        with torch.inference_mode():
            torch_runner(x)
        best = {"raw": _best(jobs["raw"], rounds)}
        for r in names:  # one runtime at a time: its delayed memory release must not fall
            jobs[r]()  # inside another's timing; warm-up first, export included
            best[r] = _best(jobs[r], rounds)
            if r in rt.GRAPH_RUNTIMES:
                trim = interior_trim(model.config)
                rt.exported_network(model, r, trim=trim).release_memory(delay=0)
        best["raw"] = min(best["raw"], _best(jobs["raw"], rounds))
        cells = [f"{size}²", f"{plan.n_tiles} x {plan.tile[0]}x{plan.tile[1]}"]
        cells.append(f"{best['raw']:.2f} ({padded}²)")
        cells += [f"{best[r]:.2f} / {best[r] / best['raw']:.2f}x" for r in names]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def run(quick: bool = False) -> str:
    """Measure and return the markdown section."""
    sizes = [512, 1248] if quick else [512, 1248, 2272]
    rounds = 1 if quick else 3
    load_before = _load()
    model = _model("fast")
    forward = _forward_table(model, sizes, rounds)
    export = _export_table()
    predict = _predict_table(model, [512] if quick else [1024, 2048], rounds)
    return "\n".join(
        [
            "## CPU runtimes: torch, ONNX Runtime, OpenVINO (bench/bench_runtimes.py)",
            "",
            f"Command: `python bench/bench_runtimes.py{' --quick' if quick else ''}`. "
            f"{rt.describe_runtime('cpu', 'torch')}; load average before {load_before}, "
            f"after {_load()}. Fast preset, untrained weights, batch 1. Each figure is the best "
            f"of {rounds} round(s) after one warm-up run (interleaved for the forward pass).",
            "",
            "One forward pass (foreground probability), torch channels-last under "
            "`inference_mode` against each exported graph, whole and its interior (without "
            "the halo the tile engine crops, computed without the border; what it runs):",
            "",
            *forward,
            "",
            "First use of a model in a session (paid once per model, runtime and thread count; "
            "the export serves every tile shape):",
            "",
            *export,
            "",
            "Whole `predict_probabilities` (automatic tile) against one raw torch forward of "
            "its padded input (target: <= 0.5x on the CPU):",
            "",
            *predict,
        ]
    )


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
