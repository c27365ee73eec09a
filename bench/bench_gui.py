"""The GUI while training: the longest gap in napari's Qt event loop.

Opens napari (under a virtual display when there is no screen), loads the sample, docks the
Train widget from the plugin manifest and trains the fast preset with the widget's default
settings, while a 10 ms QTimer records when the event loop gets to run. A gap is the time
between two ticks; the design's target is no gap over 200 ms.

Usage: ``python bench/bench_gui.py [--quick]``
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np


def run(quick: bool = False) -> str:
    """Train in the widget while timing the event loop; return the markdown section."""
    display = None
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        from pyvirtualdisplay import Display

        display = Display(visible=False, size=(1600, 1000))
        display.start()
    try:
        return _measure(iterations=10 if quick else 60)
    finally:
        if display is not None:
            display.stop()


def _measure(iterations: int) -> str:
    import napari
    from qtpy.QtCore import QEventLoop, QTimer

    viewer = napari.Viewer(show=True)
    try:
        viewer.open_sample("napari-unet", "touching_cells")
        _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Train")
        widget.image.value = viewer.layers["touching cells"]
        widget.annotation_layer.value = viewer.layers["ground truth"]
        widget.iterations.value = iterations
        widget.minutes.value = 0.0
        widget.device.value = "cpu"
        ticks: list[float] = []
        loop = QEventLoop()
        timer = QTimer()
        timer.setInterval(10)
        timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
        poll = QTimer()
        poll.setInterval(50)
        poll.timeout.connect(lambda: None if widget.busy else loop.quit())
        timer.start()
        t0 = time.perf_counter()
        if not widget.train():
            raise RuntimeError("the Train widget refused to start")
        poll.start()
        loop.exec()
        elapsed = time.perf_counter() - t0
        timer.stop()
        poll.stop()
        gaps = np.diff(ticks) * 1000
        settings = widget.settings()
    finally:
        viewer.close()
    return "\n".join(
        [
            "## GUI while training",
            "",
            f"Command: `python bench/bench_gui.py`. napari {napari.__version__}, Train widget "
            f"with its defaults (preset {settings.preset}, patch {settings.patch_size}, batch "
            f"{settings.batch_size}), {iterations} iterations on the sample, CPU, under Xvfb; a "
            "10 ms QTimer records when the Qt event loop runs.",
            "",
            "| training time | timer ticks | median gap | 99th percentile | longest gap |",
            "| --- | --- | --- | --- | --- |",
            f"| {elapsed:.1f} s | {len(ticks)} | {np.median(gaps):.0f} ms | "
            f"{np.percentile(gaps, 99):.0f} ms | {gaps.max():.0f} ms |",
        ]
    )


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
