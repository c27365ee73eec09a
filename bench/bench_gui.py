"""Training in the Train widget vs on the command line, and the GUI's event loop meanwhile.

Opens napari (under a virtual display when there is no screen), loads the sample, docks the
Train widget from the plugin manifest and trains with the widget's default settings (seed 0, CPU)
while a 10 ms QTimer records when the Qt event loop gets to run; then runs
``napari-unet train`` in a fresh process on the same image and labels (written to TIFF) with the
same settings. Runs alternate (widget, CLI, then CLI, widget with ``--repeats 2``), so that a
busy machine slows both sides alike.

Reported per run: wall time (the widget: from pressing Train to the model; the CLI: the whole
process, start-up included) and the training time both record in the model (``train()`` from its
start to the returned model), the final loss and validation score, and whether the two models are
identical (same seed, same settings: they must be). The ratio is widget / CLI training time. The
design's targets: ratio <= 1.15 and no event-loop gap over 200 ms.

Usage: ``python bench/bench_gui.py [--quick] [--iterations N] [--repeats R]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

#: settings both sides use besides their shared defaults
SEED = 0


#: the load average when the benchmark started
_LOAD: list[str] = []


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def run(quick: bool = False, iterations: int | None = None, repeats: int = 1) -> str:
    """Train in the widget and on the CLI, alternately; return the markdown section."""
    _LOAD[:] = [_load()]
    display = None
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        from pyvirtualdisplay import Display

        display = Display(visible=False, size=(1600, 1000))
        display.start()
    try:
        return _measure(iterations or (20 if quick else 300), repeats)
    finally:
        if display is not None:
            display.stop()


def _measure(iterations: int, repeats: int) -> str:
    import napari
    import tifffile

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    rows: list[dict[str, Any]] = []
    try:
        viewer.open_sample("napari-unet-trainer", "touching_cells")
        _, widget = viewer.window.add_plugin_dock_widget("napari-unet-trainer", "Train")
        widget.image.value = viewer.layers["touching cells"]
        widget.annotation_layer.value = viewer.layers["ground truth"]
        widget.iterations.value = iterations
        widget.minutes.value = 0.0
        widget.device.value = "cpu"
        widget.seed.value = SEED
        settings = widget.settings()
        _settle(widget)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            tifffile.imwrite(folder / "image.tif", viewer.layers["touching cells"].data)
            tifffile.imwrite(folder / "labels.tif", viewer.layers["ground truth"].data)
            for rep in range(repeats):
                order = ("widget", "cli") if rep % 2 == 0 else ("cli", "widget")
                for side in order:
                    if side == "widget":
                        rows.append(_widget_run(widget))
                    else:
                        rows.append(_cli_run(folder, iterations))
    finally:
        viewer.close()
    return _report(napari.__version__, settings, iterations, rows)


def _settle(widget: Any, seconds: float = 2.0) -> None:
    """Let the window paint itself and the widget finish its start-up, as before a user's
    first press of Train (the first paint uploads the layers' textures: a few hundred ms)."""
    import threading

    from qtpy.QtCore import QEventLoop, QTimer

    for thread in threading.enumerate():
        if thread.name == "preload":
            thread.join()
    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()


def _widget_run(widget: Any) -> dict[str, Any]:
    """Press Train, record the event loop's ticks until the model is there."""
    from qtpy.QtCore import QEventLoop, QTimer

    ticks: list[float] = []
    loop = QEventLoop()
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    poll = QTimer()
    poll.setInterval(50)
    poll.timeout.connect(lambda: None if widget.busy else loop.quit())
    timer.start()
    gui0 = _gui_cpu()
    t0 = time.perf_counter()
    if not widget.train():
        raise RuntimeError("the Train widget refused to start")
    poll.start()
    loop.exec()
    wall = time.perf_counter() - t0
    gui = _gui_cpu() - gui0
    timer.stop()
    poll.stop()
    model = widget.model
    gaps = np.diff(ticks) * 1000
    return {"side": "widget", "wall": wall, "gaps": gaps, "gui": gui, **_summary(model)}


def _cpu_seconds(stat: str) -> float:
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _gui_cpu() -> float:
    """CPU seconds so far of the GUI: this process's threads but the training worker's (Qt
    pool threads and the torch threads they start), plus the X server; NaN off Linux."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return float("nan")
    total = 0.0
    for task in tasks.iterdir():
        try:
            if (task / "comm").read_text().strip() != "Thread (pooled)":
                total += _cpu_seconds((task / "stat").read_text())
        except OSError:
            continue
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "comm").read_text().strip() == "Xvfb":
                total += _cpu_seconds((proc / "stat").read_text())
        except OSError:
            continue
    return total


def _cli_run(folder: Path, iterations: int) -> dict[str, Any]:
    """``napari-unet train`` in a fresh process with the widget's defaults."""
    from napari_unet.core.model_files import load_model

    out = folder / "cli.pt"
    command = [sys.executable, "-m", "napari_unet.cli", "train", str(folder / "image.tif")]
    command += ["--labels", str(folder / "labels.tif"), "--out", str(out), "--quiet"]
    command += ["--iterations", str(iterations), "--device", "cpu", "--seed", str(SEED)]
    t0 = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    return {"side": "CLI", "wall": wall, "gaps": None, "gui": None, **_summary(load_model(out))}


def _summary(model: Any) -> dict[str, Any]:
    summary = model.training["summary"]
    return {
        "train": float(summary["elapsed_seconds"]),
        "loss": summary.get("final_loss"),
        "validation": summary.get("validation"),
        "state": {k: v.clone() for k, v in model.net.state_dict().items()},
    }


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _report(version: str, settings: Any, iterations: int, rows: list[dict[str, Any]]) -> str:
    widget = [r for r in rows if r["side"] == "widget"]
    cli = [r for r in rows if r["side"] == "CLI"]
    ratio = np.median([r["train"] for r in widget]) / np.median([r["train"] for r in cli])
    pairs = [
        f"{w['train'] / c['train']:.2f}" for w, c in zip(widget, cli, strict=True)
    ]  # run k of the widget against run k of the CLI, measured back to back
    gaps = np.concatenate([r["gaps"] for r in widget])
    same = all(_same(r["state"], cli[0]["state"]) for r in rows)
    lines = [
        "## Training in the widget vs the command line",
        "",
        f"Command: `python bench/bench_gui.py`. napari {version}; the Train widget with its "
        f"defaults (preset {settings.preset}, patch {settings.patch_size}, batch "
        f"{settings.batch_size}) and `napari-unet train` with the same settings, {iterations} "
        f"iterations on the sample, seed {SEED}, CPU, under Xvfb; runs alternate. Training "
        "time: `train()` from its start to the model, as recorded in the model; wall: from "
        "pressing Train (widget) or the whole process, start-up included (CLI). GUI CPU: CPU "
        "time of napari's threads (Qt main thread, software OpenGL) and the X server while the "
        f"widget trained. Load average before: {_LOAD[0]}, after: {_load()}.",
        "",
        "| run | where | wall | training time | final loss | best validation | GUI CPU |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k, r in enumerate(rows, start=1):
        score = "-" if r["validation"] is None else f"{r['validation']:.3f}"
        loss = "-" if r["loss"] is None else f"{r['loss']:.4f}"
        gui = "-" if r["gui"] is None else f"{r['gui']:.1f} s"
        lines.append(
            f"| {k} | {r['side']} | {r['wall']:.1f} s | {r['train']:.1f} s | {loss} | {score} "
            f"| {gui} |"
        )
    lines += [
        "",
        f"Widget / CLI training time: **{ratio:.2f}** (median of each side; per pair: "
        f"{', '.join(pairs)}; target <= 1.15). Same model from both: "
        f"{'yes' if same else 'NO'}. Event loop while the widget trained: "
        f"{len(gaps) + 1} timer ticks, median gap {np.median(gaps):.0f} ms, 99th percentile "
        f"{np.percentile(gaps, 99):.0f} ms, longest **{gaps.max():.0f} ms** (target <= 200 ms).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 iterations")
    parser.add_argument("--iterations", type=int, help="iterations per run (default: 300)")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs (default: 1)")
    args = parser.parse_args(argv)
    print(run(quick=args.quick, iterations=args.iterations, repeats=args.repeats))


if __name__ == "__main__":
    main()
