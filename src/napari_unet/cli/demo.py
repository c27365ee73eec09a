"""``napari-unet demo``: open napari with the sample data and the three U-Net widgets docked.

``--run`` trains a small network briefly on the sample's ground truth and segments the image
with it, as a user would by pressing Train and then Run; ``--screenshot PATH`` saves the whole
window once everything shown has finished, and quits. napari is imported only when the command
runs, so ``napari-unet --help`` stays quick.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari_unet.cli import UsageError
from napari_unet.cli.options import add_device, check_output_path

__all__ = ["DESCRIPTION", "HELP", "PLUGIN", "WIDGETS", "Demo", "add_arguments", "run"]

logger = logging.getLogger(__name__)

#: the plugin's name in napari
PLUGIN = "napari-unet-trainer"
#: the docked widgets, in order
WIDGETS = ("Train", "Border weights", "Segment")
#: screenshot formats napari can write
_FORMATS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


#: the line in ``napari-unet --help``
HELP = "open napari with the sample data and the Train, Border weights and Segment widgets"
DESCRIPTION = (
    "Open napari with the synthetic touching-cells sample and the three U-Net widgets "
    "docked. With --run, train a small network briefly on the sample's ground truth and "
    "segment the image; with --screenshot, save the whole window and quit."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` options: ``--run``, ``--screenshot``, ``--iterations``, ``--device``."""
    parser.add_argument(
        "--run",
        action="store_true",
        help="train briefly on the sample's ground truth, then segment the image",
    )
    parser.add_argument(
        "--screenshot",
        metavar="PATH",
        type=Path,
        help="save a screenshot of the whole window (PNG, JPEG or TIFF) when done, then quit",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=300,
        metavar="N",
        help="training iterations for --run (default: 300)",
    )
    add_device(parser, what="for --run")


def _check_args(args: argparse.Namespace) -> None:
    if args.iterations < 1:
        raise UsageError(f"--iterations must be at least 1, got {args.iterations}")
    shot = args.screenshot
    if shot is not None:
        if shot.suffix.lower() not in _FORMATS:
            raise UsageError(
                f"--screenshot: expected a file name ending in {', '.join(_FORMATS)}, got '{shot}'"
            )
        check_output_path(shot, "--screenshot")


class Demo:
    """Set a viewer up as the demo, optionally train, segment and take a screenshot.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        An open viewer (the command line makes one; tests pass theirs).
    run : bool
        Train briefly and segment, as ``--run``.
    screenshot : path, optional
        Where to save the whole window when done.
    iterations : int
        Training iterations for ``run``.
    device : str
        Device for training and inference.
    settings : dict, optional
        Further :class:`~napari_unet.core.training.TrainSettings` fields for ``run`` (tests use
        tiny patches).
    on_done : callable, optional
        Called with the exit code (0 on success) once everything asked for is done.
    """

    def __init__(
        self,
        viewer: Any,
        *,
        run: bool = False,
        screenshot: str | Path | None = None,
        iterations: int = 300,
        device: str = "auto",
        settings: dict[str, Any] | None = None,
        on_done: Callable[[int], Any] | None = None,
    ) -> None:
        self.viewer = viewer
        self.run = run
        self.screenshot = None if screenshot is None else Path(screenshot)
        self.iterations = iterations
        self.device = device
        self.settings = dict(settings or {})
        self.on_done = on_done
        self.exit_code = 0
        self.widgets: dict[str, Any] = {}
        self._log_timer: Any = None

    def start(self) -> None:
        """Open the sample, dock the widgets, and start what was asked for."""
        from qtpy.QtCore import QTimer

        self.viewer.open_sample(PLUGIN, "touching_cells")
        docks = {}
        for name in WIDGETS:
            docks[name], self.widgets[name] = self.viewer.window.add_plugin_dock_widget(
                PLUGIN, name, tabify=name == "Border weights"
            )
        QTimer.singleShot(0, docks["Train"].raise_)  # Train shares a tab with Border weights
        train = self.widgets["Train"]
        train.image.value = self.viewer.layers["touching cells"]
        train.annotation_layer.value = self.viewer.layers["ground truth"]
        train.iterations.value = self.iterations
        train.extra_settings = dict(self.settings)
        train.device.value = self.device if self.device in train.device.choices else "auto"
        weights = self.widgets["Border weights"]
        weights.labels_layer.value = self.viewer.layers["ground truth"]
        segment = self.widgets["Segment"]
        segment.image.value = self.viewer.layers["touching cells"]
        segment.device.value = train.device.value
        if self.run:
            weights.show_weights()
            weights_layer = weights.weights_layer
            if weights_layer is not None:
                weights_layer.visible = False
            train.training_done.connect(self._trained)
            self._log_timer = QTimer()
            self._log_timer.setInterval(15_000)
            self._log_timer.timeout.connect(lambda: logger.info("demo: %s", train.status.value))
            self._log_timer.start()
            train.train()
        else:
            self._finish_later()

    def _trained(self, model: Any) -> None:
        if self._log_timer is not None:
            self._log_timer.stop()
        if model is None:
            logger.error("demo: training did not produce a model")
            self._done(1)
            return
        segment = self.widgets["Segment"]
        segment.segmentation_done.connect(self._segmented)
        segment.model_source.value = "session"
        segment.run()

    def _segmented(self, layer: Any) -> None:
        if layer is None:
            logger.error("demo: segmentation did not finish")
            self._done(1)
            return
        self.viewer.layers["ground truth"].visible = False
        self.viewer.layers.selection.active = layer
        self._finish_later()

    def _finish_later(self) -> None:
        if self.screenshot is None:
            if self.on_done is not None:
                self.on_done(0)
            return
        from qtpy.QtCore import QTimer

        # Let the window lay itself out (the docks narrow the canvas), fit the image to the
        # canvas, and draw before the screenshot.
        QTimer.singleShot(1000, self.viewer.reset_view)
        QTimer.singleShot(2000, self._take_screenshot)

    def _take_screenshot(self) -> None:
        assert self.screenshot is not None
        try:
            self.viewer.screenshot(path=str(self.screenshot), canvas_only=False, flash=False)
        except Exception:
            logger.exception("demo: could not save the screenshot to %s", self.screenshot)
            self._done(1)
            return
        logger.info("demo: screenshot saved to %s", self.screenshot)
        self._done(0)

    def _done(self, code: int) -> None:
        self.exit_code = code
        if self.on_done is not None:
            self.on_done(code)


def run(args: argparse.Namespace) -> int:
    """Open napari with the demo; with ``--screenshot``, quit once it is saved.

    Parameters
    ----------
    args : argparse.Namespace
        ``--run``, ``--screenshot``, ``--iterations`` and ``--device``.

    Returns
    -------
    int
        0 on success, 1 if training, segmentation or the screenshot failed.
    """
    _check_args(args)
    import napari
    from qtpy.QtCore import QTimer

    viewer = napari.Viewer(title="napari-unet demo")
    viewer.window.resize(1600, 1000)

    def quit_when_done(code: int) -> None:
        if args.screenshot is not None:
            viewer.close()
            app = _qt_app()
            if app is not None:
                app.quit()

    demo = Demo(
        viewer,
        run=args.run,
        screenshot=args.screenshot,
        iterations=args.iterations,
        device=args.device,
        on_done=quit_when_done,
    )
    QTimer.singleShot(0, demo.start)
    napari.run()
    return demo.exit_code


def _qt_app() -> Any:
    from qtpy.QtWidgets import QApplication

    return QApplication.instance()
