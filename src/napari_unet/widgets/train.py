"""The Train widget: train a U-Net on the cells painted in a Labels layer, and keep the model.

Training runs in a napari thread worker; every iteration comes back to the main thread as a
:class:`~napari_unet.core.training.TrainEvent`, which moves the progress bar in napari's activity
dock and the live loss plot. The annotation layer is only read (a copy is taken when Train is
pressed, so painting on during training changes nothing in flight).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, PushButton, SpinBox
from napari.layers import Image, Labels, Shapes
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal

from napari_unet.widgets.controls import (
    ViewerWidget,
    button_row,
    device_picker,
    form,
    layer_picker,
    message,
    same_value,
)
from napari_unet.widgets.docs import set_tooltips
from napari_unet.widgets.layers import image_layout, labels_array, region_mask
from napari_unet.widgets.plot import LossPlot
from napari_unet.widgets.session import session_for
from napari_unet.widgets.workers import Failure, Job, notify_error

if TYPE_CHECKING:
    import napari.viewer

__all__ = ["TrainWidget"]

logger = logging.getLogger(__name__)

CHANNEL_CHOICES = [("none", None), ("axis 0", 0), ("axis 1", 1)]
#: steps of the progress bar of a run limited by time only
PROGRESS_STEPS = 1000


def _train_job(
    image: Any,
    labels: np.ndarray,
    region: np.ndarray | None,
    settings: Any,
    model: Any,
    *,
    stop: Any,
):  # type: ignore[no-untyped-def]
    """Worker thread: read the image, train, return the model (a generator of TrainEvents)."""
    from napari_unet.core.training import train

    image = np.asarray(image)  # a dask or zarr image is read here, off the GUI thread
    return (yield from train(image, labels, region, settings=settings, model=model, stop=stop))


class TrainWidget(ViewerWidget):
    """Train a U-Net on annotated cells and keep the model for this napari session.

    Paint each cell of a few examples with its own label in a Labels layer, optionally mark the
    annotated area with a Shapes or Labels layer, and press **Train**. The loss plot shows the
    training loss (and, with enough annotations, a validation score). **Stop** ends training at
    the next step and keeps the model reached so far. After correcting a segmentation, **Train
    again** fine-tunes the session's model instead of starting afresh. The model is shared with
    the Segment widget; **Save model…** writes it to a ``.pt`` file, **Load model…** reads one.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose layers are offered.

    Attributes
    ----------
    image : napari.layers.Image
        The image to learn from: 2D, multichannel, RGB, or a stack of 2D images (only the slices
        holding labels are used).
    channels : int or None
        Axis of the image that holds channels (none for grey images, stacks and RGB layers).
    annotation_layer : napari.layers.Labels
        The painted cells: 0 = background, each cell its own label. It is never changed.
    region : napari.layers.Shapes or napari.layers.Labels, optional
        The annotated area (rectangles or polygons, or labels > 0). Nothing outside it is
        learnt from. Without one the whole image counts as annotated.
    status : str
        What training is doing now.
    """

    #: emitted on the main thread when training ends: the model, or None if it failed
    training_done = Signal(object)

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        from napari_unet.core.training import TrainSettings

        self._settings_class = TrainSettings
        defaults = TrainSettings()
        self.extra_settings: dict[str, Any] = {}
        self._session = session_for(viewer)
        self._job: Job | None = None
        self._pbar: Any = None
        self._fine_tune = False
        self._stopped_by_user = False
        self._last_event: Any = None
        self._result: Any = None
        self._preset = ""

        self.image = layer_picker(viewer, "image", (Image,))
        self.channels = ComboBox(name="channels", choices=CHANNEL_CHOICES, value=None)
        self.annotation_layer = layer_picker(
            viewer, "annotation_layer", (Labels,), label="annotation"
        )
        self.region = layer_picker(
            viewer, "region", (Shapes, Labels), label="annotated region", nullable=True
        )
        self.preset = ComboBox(name="preset", choices=["fast", "paper"], value=defaults.preset)
        self.iterations = SpinBox(
            name="iterations",
            label="iterations (0: no limit)",
            min=0,
            max=10_000_000,
            value=defaults.iterations or 0,
        )
        self.minutes = FloatSpinBox(
            name="minutes",
            label="minutes (0: no limit)",
            min=0.0,
            max=7 * 24 * 60.0,
            step=1.0,
            value=float(defaults.minutes or 0.0),
        )
        self.patch_size = SpinBox(
            name="patch_size", label="patch size", min=16, max=4096, step=16,
            value=defaults.patch_size,
        )  # fmt: skip
        self.batch_size = SpinBox(
            name="batch_size", label="batch size", min=1, max=1024, value=defaults.batch_size
        )
        self.elastic = CheckBox(name="elastic", text="elastic", value=defaults.elastic)
        self.flips = CheckBox(name="flips", text="flips", value=defaults.flips)
        self.affine = CheckBox(name="affine", text="rotate/scale", value=defaults.affine)
        self.intensity = CheckBox(name="intensity", text="intensity", value=defaults.intensity)
        augment = Container(
            name="augment",
            label="augment",
            layout="horizontal",
            labels=False,
            widgets=[self.elastic, self.flips, self.affine, self.intensity],
        )
        augment.margins = (0, 0, 0, 0)
        self.w0 = FloatSpinBox(name="w0", min=0.0, max=1000.0, step=1.0, value=defaults.w0)
        self.sigma = FloatSpinBox(name="sigma", min=0.1, max=200.0, step=0.5, value=defaults.sigma)
        self.class_balance = CheckBox(
            name="class_balance", text="balance classes", value=defaults.class_balance
        )
        self.device, self.device_readout = device_picker()
        if defaults.device in self.device.choices:
            self.device.value = defaults.device

        self.train_button = PushButton(name="train_button", text="Train")
        self.again_button = PushButton(name="again_button", text="Train again")
        self.stop_button = PushButton(name="stop_button", text="Stop")
        self.status = message("status", "Paint cells in a Labels layer, then Train.")
        self.plot = LossPlot()
        plot_box = Container(name="plot", labels=False)
        plot_box.margins = (0, 0, 0, 0)
        plot_box.native.layout().addWidget(self.plot)
        self.model_info = message("model_info", "")
        self.save_button = PushButton(name="save_button", text="Save model…")
        self.load_button = PushButton(name="load_button", text="Load model…")

        self.extend(
            [
                form(
                    self.image,
                    self.channels,
                    self.annotation_layer,
                    self.region,
                    self.preset,
                    self.iterations,
                    self.minutes,
                    self.patch_size,
                    self.batch_size,
                    augment,
                    self.w0,
                    self.sigma,
                    self.class_balance,
                    self.device,
                ),
                self.device_readout,
                button_row(self.train_button, self.again_button, self.stop_button),
                self.status,
                plot_box,
                self.model_info,
                button_row(self.save_button, self.load_button, name="model_buttons"),
            ]
        )
        self.again_button.tooltip = (
            "Fine-tune the session's model on the current annotations (after correcting a "
            "segmentation) instead of training a new one."
        )
        self.stop_button.tooltip = "End training after the current step; the model so far is kept."
        self.save_button.tooltip = "Save the session's model to a .pt file."
        self.load_button.tooltip = "Load a napari-unet model file into this session."
        set_tooltips(self, type(self), TrainSettings)

        self.train_button.changed.connect(self._on_train_clicked)
        self.again_button.changed.connect(self._on_again_clicked)
        self.stop_button.changed.connect(self.stop)
        self.save_button.changed.connect(self._on_save_clicked)
        self.load_button.changed.connect(self._on_load_clicked)
        self._session.connect(self._on_session_model)
        self._on_session_model()
        self._set_busy(False)

    # -- public API ----------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Whether training is running."""
        return self._job is not None and self._job.running

    @property
    def model(self) -> Any:
        """The session's model (shared with Segment), or None."""
        return self._session.model

    def settings(self) -> Any:
        """The :class:`~napari_unet.core.training.TrainSettings` the controls describe.

        ``extra_settings`` (a dict of TrainSettings fields) is applied last, for scripts and
        tests that need settings the widget does not show.
        """
        minutes = float(self.minutes.value)
        values = {
            "preset": self.preset.value,
            "iterations": int(self.iterations.value) or None,
            "minutes": minutes if minutes > 0 else None,
            "patch_size": int(self.patch_size.value),
            "batch_size": int(self.batch_size.value),
            "elastic": bool(self.elastic.value),
            "flips": bool(self.flips.value),
            "affine": bool(self.affine.value),
            "intensity": bool(self.intensity.value),
            "w0": float(self.w0.value),
            "sigma": float(self.sigma.value),
            "class_balance": bool(self.class_balance.value),
            "device": self.device.value,
        }
        values.update(self.extra_settings)
        return self._settings_class(**values)

    def train(self, fine_tune: bool = False) -> bool:
        """Start training, as the Train (or Train again) button does.

        Parameters
        ----------
        fine_tune : bool
            Continue from the session's model instead of a new network.

        Returns
        -------
        bool
            True if training started; otherwise a notification said why not.
        """
        if self.busy:
            show_info("Training is already running; press Stop to end it first.")
            return False
        try:
            image, labels, region, settings, model = self._inputs(fine_tune)
        except ValueError as exc:
            show_error(str(exc))
            return False
        self._fine_tune = fine_tune
        self._preset = settings.preset
        self._stopped_by_user = False
        self._last_event = None
        self.plot.clear()
        total = settings.iterations or (PROGRESS_STEPS if settings.minutes else 0)
        self._pbar = progress(total=total, desc="Training U-Net")
        self._job = Job(
            _train_job,
            image,
            labels,
            region,
            settings,
            model,
            on_yield=self._on_event,
            on_return=self._on_return,
            on_finish=self._on_finish,
        )
        self._started = time.monotonic()
        self.status.value = "Starting…"
        self._set_busy(True)
        self._job.start()
        return True

    def stop(self, *_args: Any) -> None:
        """Ask training to end after the current step (the Stop button)."""
        if not self.busy or self._job is None:
            show_info("Nothing to stop: no training is running.")
            return
        if not self._job.stop():
            show_info("Training is already stopping; it ends after the current step.")
            return
        self._stopped_by_user = True
        self.status.value = "Stopping after this step…"

    def save_model(self, path: str | Path) -> bool:
        """Save the session's model to ``path``; errors become notifications.

        Returns
        -------
        bool
            True if the file was written.
        """
        from napari_unet.core.model_files import save_model

        model = self._session.model
        if model is None:
            show_warning("There is no model to save yet: train one or load a model file.")
            return False
        try:
            written = save_model(model, path)
        except (OSError, ValueError) as exc:
            notify_error(f"Could not save the model to '{path}'", exc)
            return False
        self._session.set_path(str(written))
        show_info(f"Model saved to {written}")
        return True

    def load_model(self, path: str | Path) -> bool:
        """Load a model file into the session; errors become notifications.

        Returns
        -------
        bool
            True if the model was loaded.
        """
        from napari_unet.core.model_files import ModelFileError, load_model

        if self.busy:
            show_warning("Wait for training to end (or Stop it) before loading another model.")
            return False
        try:
            model = load_model(path)
        except ModelFileError as exc:
            show_error(f"'{Path(path).name}' is not a napari-unet model file we can read: {exc}")
            return False
        except (OSError, ValueError) as exc:
            notify_error(f"Could not load '{path}'", exc)
            return False
        self._session.set_model(model, "file", f"loaded from {Path(path).name}", str(path))
        show_info(f"Model loaded from {path}")
        return True

    # -- inputs --------------------------------------------------------------------------------
    def _inputs(self, fine_tune: bool) -> tuple[Any, np.ndarray, Any, Any, Any]:
        image_layer = self.image.value
        if image_layer is None:
            raise ValueError("Choose the image to train on: open an image first.")
        labels_layer = self.annotation_layer.value
        if labels_layer is None:
            raise ValueError(
                "Choose the annotation: add a Labels layer (Layers > New Labels layer) and paint "
                "each cell with its own label."
            )
        layout = image_layout(image_layer, self.channels.value)
        labels = labels_array(labels_layer, layout)
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"The annotation '{labels_layer.name}' holds {labels.dtype} values; expected "
                "integer labels."
            )
        if not labels.any():
            raise ValueError(
                f"The annotation '{labels_layer.name}' is empty: paint a few cells (each with "
                "its own label) before training."
            )
        region = None
        if self.region.value is not None:
            if same_value(self.region.value, labels_layer):
                raise ValueError(
                    "The annotated region cannot be the annotation itself; leave it at 'none' to "
                    "use the whole image, or mark the area in a separate layer."
                )
            region = region_mask(self.region.value, layout.spatial_shape)
            if not (labels.astype(bool) & region).any():
                raise ValueError(
                    f"No painted cell lies inside the region '{self.region.value.name}'; draw the "
                    "region around the cells you annotated."
                )
        settings = self.settings()
        settings = dataclasses.replace(settings, channel_axis=layout.channel_axis, rgb=layout.rgb)
        model = None
        if fine_tune:
            model = self._session.model
            if model is None:
                raise ValueError(
                    "There is no model to train again yet: press Train first, or load a model."
                )
            if model.config.in_channels != layout.n_channels:
                raise ValueError(
                    f"The session's model reads {model.config.in_channels} channel(s) but the "
                    f"image '{layout.name}' is {layout.describe()}; press Train for a new model."
                )
            model = model.copy()
        return layout.data, labels, region, settings, model

    # -- worker callbacks (main thread) --------------------------------------------------------
    def _on_event(self, event: Any) -> None:
        self._last_event = event
        if not self.alive:
            return
        self.plot.add_loss(event.iteration, event.loss)
        if event.validation is not None:
            self.plot.add_validation(event.iteration, event.validation)
        of = f"/{event.iterations}" if event.iterations else ""
        text = (
            f"Iteration {event.iteration}{of} · loss {event.loss:.4f} · "
            f"{event.samples_per_second:.1f} samples/s · {event.elapsed:.0f} s"
        )
        if event.validation is not None:
            text += f" · validation {event.validation:.3f}"
        if self._job is not None and self._job.stopping:
            text = "Stopping after this step… " + text
        self.status.value = text
        if event.device:
            self.device_readout.value = f"Running on: {event.device}"
        pbar = self._pbar
        if pbar is not None and pbar.total:  # last: the bar may process events right here
            if event.iterations:
                done = event.iteration
            else:
                done = int(PROGRESS_STEPS * (event.progress or 0.0))
            pbar.update(max(min(done, pbar.total) - pbar.n, 0))

    def _on_return(self, result: Any) -> None:
        if isinstance(result, Failure):
            self._result = None
            notify_error("Training failed", result.error)
            if self.alive:
                self.status.value = "Training failed; see the notification."
            return
        if result is None:
            self._result = None
            return
        if not self.alive:
            self._result = None
            show_warning(
                "Training stopped because its napari window closed; the model was not kept."
            )
            return
        model = result
        ev = self._last_event
        n = ev.iteration if ev is not None else 0
        loss = f", loss {ev.loss:.4f}" if ev is not None else ""
        summary = model.training.get("summary", {}) if isinstance(model.training, dict) else {}
        score = summary.get("validation")
        validation = f", validation IoU {score:.3f}" if isinstance(score, float) else ""
        source = "fine-tuned" if self._fine_tune else "trained"
        what = "" if self._fine_tune else f" ({self._preset} preset)"
        description = f"{source} here{what}: {n} iterations{loss}{validation}"
        self._session.set_model(model, source, description)
        self._result = model
        if n == 0:
            show_warning(
                "Training ended before its first step (stopped, or the time limit was shorter "
                "than preparing the data); the model has not learnt anything yet."
            )
        elif self._stopped_by_user:
            show_info(f"Training stopped at iteration {n}; the model so far is kept{loss}.")
        else:
            show_info(f"Training finished: {n} iterations{loss}{validation}.")
        self.status.value = f"Done: {description}."

    def _on_finish(self) -> None:
        job, self._job = self._job, None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        result = getattr(self, "_result", None)
        self._result = None
        if job is not None and job.aborted:
            show_warning(
                "Training stopped because its napari window closed; the model was not kept."
            )
        if self.alive:
            self._set_busy(False)
        self.training_done.emit(result)

    # -- buttons -------------------------------------------------------------------------------
    def _on_train_clicked(self, *_args: Any) -> None:
        self.train(fine_tune=False)

    def _on_again_clicked(self, *_args: Any) -> None:
        self.train(fine_tune=True)

    def _on_save_clicked(self, *_args: Any) -> None:
        if self._session.model is None:
            show_warning("There is no model to save yet: train one or load a model file.")
            return
        path = self._ask_path(save=True)
        if path:
            self.save_model(path)

    def _on_load_clicked(self, *_args: Any) -> None:
        path = self._ask_path(save=False)
        if path:
            self.load_model(path)

    def _ask_path(self, save: bool) -> str | None:
        """Ask the user for a model file (a Qt file dialog); None if cancelled."""
        from qtpy.QtWidgets import QFileDialog

        current = self._session.current
        start = current.path if current is not None and current.path else "unet.pt"
        filters = "napari-unet model (*.pt);;All files (*)"
        if save:
            path, _ = QFileDialog.getSaveFileName(self.native, "Save model", start, filters)
            if path and not Path(path).suffix:
                path += ".pt"
        else:
            path, _ = QFileDialog.getOpenFileName(self.native, "Load model", start, filters)
        return path or None

    # -- state ---------------------------------------------------------------------------------
    def _set_busy(self, busy: bool) -> None:
        has_model = self._session.model is not None
        self.train_button.enabled = not busy
        self.again_button.enabled = not busy and has_model
        self.stop_button.enabled = busy
        self.load_button.enabled = not busy

    def _on_session_model(self) -> None:
        if not self.alive:
            return
        current = self._session.current
        if current is None:
            self.model_info.value = "Model: none yet"
        else:
            where = f" ({current.path})" if current.path else ""
            self.model_info.value = f"Model: {current.description}{where}"
        self._set_busy(self.busy)

    def on_close(self) -> None:
        """The window is closing: stop training (the model of a closed window is not kept)."""
        if self._job is not None and self._job.running:
            self._job.stop()
