"""The Train widget: train a U-Net on the cells painted in a Labels layer, and keep the model.

Training runs in a napari thread worker; every iteration comes back to the main thread as a
:class:`~napari_unet.core.training.TrainEvent`. The events are recorded as they come, and the
status line, the live loss plot and the widget's progress bar are redrawn twice a second: every
redraw of a napari window is composited with OpenGL, which on a machine without a GPU (software
rendering, e.g. under Xvfb or remote desktops) costs tens of milliseconds of CPU that training
then lacks. For the same reason training shows its progress in the widget rather than in
napari's activity dock, whose animated "in progress" indicator redraws the window continuously
(measured: 0.6 of a CPU core under Xvfb). The annotation layer is only read (a copy is taken
when Train is pressed, so painting on during training changes nothing in flight).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal

from napari_unet.widgets.controls import (
    SettingsForm,
    ViewerWidget,
    button_row,
    collapsible,
    device_picker,
    form,
    layer_picker,
    message,
    push_button,
    qt_box,
    same_value,
)
from napari_unet.widgets.docs import set_tooltips
from napari_unet.widgets.layers import (
    DIMS_CHOICES,
    LayerLayout,
    class_names_from_layer,
    default_dims,
    image_layout,
    labels_array,
    region_mask,
)
from napari_unet.widgets.plot import LossPlot
from napari_unet.widgets.session import bundled_model, session_for
from napari_unet.widgets.workers import Job, JobProgress, notify_error, request_stop

if TYPE_CHECKING:
    import napari.viewer

__all__ = ["TrainWidget"]

logger = logging.getLogger(__name__)

CHANNEL_CHOICES = [("none", None), ("axis 0", 0), ("axis 1", 1)]
#: ``start_from`` value of a new network (else the name of a bundled model)
NEW = ""
#: steps of the progress bar of a run limited by time only
PROGRESS_STEPS = 1000
TRAIN_TIP = "Train a new network on the annotation with the settings above."
AGAIN_TIP = (
    "Fine-tune the session's model on the current annotations (after correcting a "
    "segmentation) instead of training a new one."
)
STOP_TIP = "End training after the current step; the model so far is kept."
SAVE_TIP = "Save the session's model to a .pt file."
LOAD_TIP = "Load a napari-unet model file into this session."
EXPORT_TIP = (
    "Write the session's model as a bioimage.io model package (.zip) for Fiji (deepImageJ), "
    "ilastik, QuPath and bioimageio.core; test tensors are cut from the chosen image."
)


def _train_job(
    image: Any,
    labels: np.ndarray,
    region: np.ndarray | None,
    settings: Any,
    model: Any,
    class_names: list[str] | None = None,
    *,
    stop: Any,
):  # type: ignore[no-untyped-def]
    """Worker thread: read the image, train, return the model (a generator of TrainEvents)."""
    from napari_unet.core.training import train

    image = np.asarray(image)  # a dask or zarr image is read here, off the GUI thread
    work = train(
        image,
        labels,
        region,
        settings=settings,
        model=model,
        stop=stop,
        class_names=class_names,
    )
    return (yield from work)


def _export_job(model: Any, path: str, test_image: Any, layout: dict[str, Any], *, stop: Any):  # type: ignore[no-untyped-def]
    """Worker thread: write the bioimage.io package (a generator without progress events)."""
    from napari_unet.bioimageio import export_package

    written = export_package(model, path, test_image=test_image, **layout)
    yield from ()
    return written


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
        The viewer to train in: its Image, Labels and Shapes layers are offered.

    Attributes
    ----------
    image : napari.layers.Image
        The image to learn from: 2D, multichannel, RGB, or a stack of 2D images (only the slices
        holding labels are used).
    channels : int or None
        Axis of the image that holds channels (none for grey images, stacks and RGB layers).
    dims : str
        How a stack (Z, Y, X) is learnt from: '2D slices' (a 2D network on each labelled
        slice) or '3D' (a 3D network on the volume, from its labelled slices or the region,
        with the layer's scale as voxel size, stored with the model). Default: 3D when the
        layer's z scale differs from its in-plane scale.
    annotation_layer : napari.layers.Labels
        The painted cells: 0 = background, each cell its own label. It is never changed. In
        the classes mode: scribbles, 0 = not painted, label k = class k (the names of the
        classes come from the layer's ``features``, a 'name' or 'class' column).
    region : napari.layers.Shapes or napari.layers.Labels, optional
        The annotated area (rectangles or polygons, or labels > 0). Nothing outside it is
        learnt from. Without one the whole image counts as annotated.
    start_from : str
        What Train starts from: a new network (``''``), or a model shipped with the plugin (nuclei:
        trained on 2D fluorescence nuclei) that it fine-tunes on your annotation, which learns
        much more in the same minutes when your cells look alike. The bundled model keeps its
        own architecture (the preset is not used). Fine-tuning (this, and Train again) takes
        the fine-tuning defaults where there are any, which the controls then show; the model
        as it was competes for the best checkpoint on the held-out part.
    status : str
        What training is doing now.
    """

    #: emitted on the main thread when training ends: the model, or None if it failed
    training_done = Signal(object)
    #: emitted on the main thread when an export ends: the package's path, or None
    export_done = Signal(object)

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        from napari_unet.core.bundled_models import BUNDLED_MODELS
        from napari_unet.core.training import TrainSettings, preload_training_modules
        from napari_unet.core.training.settings import ADVANCED, MAIN

        self.extra_settings: dict[str, Any] = {}
        self._session = session_for(viewer)
        self._task = JobProgress(self._refresh, lambda: self.alive)
        self._fine_tune = self._stopped_by_user = False
        self._last_event: Any = None
        self._result: Any = None
        # the preset, mode, fine-tuning and dimensions whose defaults the controls show
        self._preset = (TrainSettings().preset, TrainSettings().mode, False, 2)
        self._run_settings: Any = None
        self._annotation_name = ""
        self._export: Job | None = None
        self._export_result: Any = None

        self.image = layer_picker(viewer, "image", (Image,))
        self.channels = ComboBox(name="channels", choices=CHANNEL_CHOICES, value=None)
        self.dims = ComboBox(name="dims", label="train as", choices=list(DIMS_CHOICES))
        self.dims.value = default_dims(self.image.value)
        self.annotation_layer = layer_picker(
            viewer, "annotation_layer", (Labels,), label="annotation"
        )
        self.region = layer_picker(
            viewer, "region", (Shapes, Labels), label="annotated region", nullable=True
        )
        # '' rather than None for a new network: magicgui emits no change to a None value
        starts = [("a new network", NEW)] + [(f"bundled model: {n}", n) for n in BUNDLED_MODELS]
        self.start_from = ComboBox(name="start_from", label="start from", choices=starts, value=NEW)
        self.device, self.device_readout = device_picker()
        self.main_form = SettingsForm(TrainSettings, MAIN, replace={"device": self.device})
        self.advanced_form = SettingsForm(TrainSettings, ADVANCED)
        for name, control in {**self.main_form.controls, **self.advanced_form.controls}.items():
            setattr(self, name, control)
        self.train_button = push_button("train_button", "Train", TRAIN_TIP, self._on_train)
        self.again_button = push_button("again_button", "Train again", AGAIN_TIP, self._on_again)
        self.stop_button = push_button("stop_button", "Stop", STOP_TIP, self.stop)
        self.status = message("status", "Paint cells in a Labels layer, then Train.")
        self.progress_bar = self._task.bar
        self.plot = LossPlot()
        self.model_info = message("model_info", "")
        self.save_button = push_button("save_button", "Save model…", SAVE_TIP, self._on_save)
        self.load_button = push_button("load_button", "Load model…", LOAD_TIP, self._on_load)
        self.export_button = push_button(
            "export_button", "Export for bioimage.io…", EXPORT_TIP, self._on_export
        )
        self.extend(
            [
                form(
                    self.image,
                    self.channels,
                    self.dims,
                    self.annotation_layer,
                    self.region,
                    self.start_from,
                    *self.main_form.rows,
                ),
                self.device_readout,
                collapsible("advanced", "Advanced settings", self.advanced_form.rows),
                button_row(self.train_button, self.again_button, self.stop_button),
                self.status,
                self.progress_bar,
                qt_box("plot", self.plot),
                self.model_info,
                button_row(self.save_button, self.load_button, name="model_buttons"),
                self.export_button,
            ]
        )
        set_tooltips(self, type(self))
        self._connect()
        # the first optimiser imports torch._dynamo: do it now, not while the live plot runs
        preload = threading.Thread(target=preload_training_modules, name="preload", daemon=True)
        preload.start()

    def _connect(self) -> None:
        self.preset.changed.connect(self._on_preset)
        self.mode.changed.connect(self._on_preset)
        self.start_from.changed.connect(self._on_preset)
        self.dims.changed.connect(self._on_preset)
        self.image.changed.connect(lambda layer: setattr(self.dims, "value", default_dims(layer)))
        self._on_preset()  # a volume shown at the start: the 3D defaults
        self._session.connect(self._on_session_model)
        self._on_session_model()

    # -- public API ----------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Whether training is running."""
        return self._task.running

    @property
    def model(self) -> Any:
        """The session's model (shared with Segment), or None."""
        return self._session.model

    def settings(self) -> Any:
        """The :class:`~napari_unet.core.training.TrainSettings` the controls describe.

        ``extra_settings`` (a dict of TrainSettings fields) is applied last, for scripts and
        tests that need settings the widget does not show.
        """
        from napari_unet.core.training import TrainSettings

        values = {**self.main_form.values(), **self.advanced_form.values()}
        return TrainSettings(**{**values, **self.extra_settings})

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
        # the controls show the values this run uses: fine-tuning has its own defaults
        self._show_defaults(fine_tune or self.start_from.value != NEW)
        try:
            inputs = self._inputs(fine_tune)
        except ValueError as exc:
            show_error(str(exc))
            return False
        settings = inputs[3]
        self._fine_tune, self._run_settings = fine_tune, settings
        self._stopped_by_user = False
        self._last_event = None
        self._annotation_name = self.annotation_layer.value.name
        self.plot.clear()
        self.plot.set_validation_label(f"validation {self._metric_label()}")
        total = settings.iterations or (PROGRESS_STEPS if settings.minutes else 0)
        callbacks = {
            "on_return": self._on_return,
            "on_error": self._on_error,
            "on_warning": self._on_warning,
            "on_finish": self._on_finish,
        }
        job = Job(_train_job, *inputs, on_yield=self._on_event, **callbacks)
        self.status.value = "Starting…"
        self._set_busy(True)
        self._task.start(job, total, bar=bool(total))
        return True

    def stop(self, *_args: Any) -> None:
        """Ask training to end after the current step (the Stop button)."""
        if request_stop(
            self._task.job,
            "Nothing to stop: no training is running.",
            "Training is already stopping; it ends after the current step.",
        ):
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
        from napari_unet.bioimageio import load_model_or_package
        from napari_unet.core.model_files import ModelFileError

        if self.busy:
            show_warning("Wait for training to end (or Stop it) before loading another model.")
            return False
        try:
            model = load_model_or_package(path)
        except ModelFileError as exc:
            show_error(f"'{Path(path).name}' is not a napari-unet model file we can read: {exc}")
            return False
        except (OSError, ValueError) as exc:
            notify_error(f"Could not load '{path}'", exc)
            return False
        self._session.set_model(model, "file", f"loaded from {Path(path).name}", str(path))
        show_info(f"Model loaded from {path}")
        return True

    def export_model(self, path: str | Path) -> bool:
        """Write the session's model as a bioimage.io package (a ``.zip``), in a worker.

        Test tensors are cut from the chosen image when it has the model's channels (else from
        the synthetic sample). A notification says when the package is written, or why not.

        Parameters
        ----------
        path : str or path-like
            The package to write; ``.zip`` is added when it has no suffix.

        Returns
        -------
        bool
            True if the export started; :attr:`export_done` is emitted when it ends.
        """
        model = self._session.model
        if model is None:
            show_warning("There is no model to export yet: train one or load a model file.")
            return False
        if self._export is not None and self._export.running:
            show_info("An export is already running; wait for it to finish.")
            return False
        path = str(path) if Path(path).suffix else f"{path}.zip"
        test_image, layout = self._export_test_image(model)
        self._export = Job(
            _export_job,
            model,
            path,
            test_image,
            layout,
            on_return=self._on_exported,
            on_error=lambda exc: self._on_export_failed(path, exc),
            on_finish=self._on_export_finish,
        )
        self.status.value = f"Exporting the model to {path}…"
        self._set_busy(self.busy)
        self._export.start()
        return True

    def _export_test_image(self, model: Any) -> tuple[Any, dict[str, Any]]:
        """The chosen image and its layout, when it suits the model; else the sample's."""
        layer = self.image.value
        if layer is None:
            return None, {}
        try:
            layout = image_layout(layer, self.channels.value)
        except ValueError:
            return None, {}
        if layout.n_channels != model.config.in_channels:
            return None, {}
        return layout.data, {"channel_axis": layout.channel_axis, "rgb": layout.rgb}

    # -- inputs --------------------------------------------------------------------------------
    def _inputs(self, fine_tune: bool) -> tuple[Any, np.ndarray, Any, Any, Any, Any]:
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
        from napari_unet.core.model import check_mode
        from napari_unet.core.targets import MAX_CLASSES

        settings = self.settings()
        settings = dataclasses.replace(
            settings, channel_axis=layout.channel_axis, rgb=layout.rgb, **self._dimensions(layout)
        )
        model = self._start_model(fine_tune)
        if model is not None:
            what = "Train again" if fine_tune else "Starting from the bundled model"
            check_mode(model, settings.mode, f"{what} with mode '{settings.mode}'")
        if model is not None and model.config.in_channels != layout.n_channels:
            raise ValueError(
                f"The {'session' if fine_tune else 'bundled'} model reads "
                f"{model.config.in_channels} channel(s) but the image '{layout.name}' is "
                f"{layout.describe()}; start from a new network instead."
            )
        names = None
        if settings.mode == "classes":
            names = class_names_from_layer(labels_layer, min(int(labels.max()), MAX_CLASSES))
        return layout.data, labels, region, settings, model, names

    def _dimensions(self, layout: LayerLayout) -> dict[str, Any]:
        """``spatial_dims`` and ``voxel_size`` of the run: 3D (with the layer's scale) when
        '3D' is chosen for a stack."""
        if self.dims.value != DIMS_CHOICES[1]:
            return {"spatial_dims": 2, "voxel_size": None}
        if not layout.is_stack:
            raise ValueError(
                f"'3D' trains a 3D network on a volume (Z, Y, X); the image '{layout.name}' is "
                f"{layout.describe()}: choose '2D slices'."
            )
        scale = [s for a, s in enumerate(self.image.value.scale) if a != layout.channel_axis]
        return {"spatial_dims": 3, "voxel_size": tuple(float(v) for v in scale[-3:])}

    def _start_model(self, fine_tune: bool) -> Any:
        """The model training continues from: the session's, a bundled one, or None."""
        if fine_tune:
            if self._session.model is None:
                raise ValueError(
                    "There is no model to train again yet: press Train first, or load a model."
                )
            return self._session.model.copy()
        if self.start_from.value == NEW:
            return None
        return bundled_model(self.start_from.value)

    # -- worker callbacks (main thread) --------------------------------------------------------
    def _on_event(self, event: Any) -> None:
        """Record an event; the next :meth:`_refresh` shows it (a redraw per step is costly)."""
        self._last_event = event
        if not self.alive:
            return
        self.plot.add_loss(event.iteration, event.loss, redraw=False)
        if event.validation is not None:
            self.plot.add_validation(event.iteration, event.validation, redraw=False)
        self._task.changed()

    def _refresh(self) -> None:
        """Show the latest event: status line, plot, progress bar and device."""
        event = self._last_event
        if event is None:
            return
        of = f"/{event.iterations}" if event.iterations else ""
        text = (
            f"Iteration {event.iteration}{of} · loss {event.loss:.4f} · "
            f"{event.samples_per_second:.1f} samples/s · {event.elapsed:.0f} s"
        )
        if event.best_validation is not None:
            text += f" · best validation {self._metric_label()} {event.best_validation:.3f}"
        if self._task.stopping:
            text = "Stopping after this step… " + text
        self.status.value = text
        if event.device:
            self.device_readout.value = f"Running on: {event.device}"
        self.plot.update()
        if self.progress_bar.visible:
            done = event.iteration if event.iterations else PROGRESS_STEPS * (event.progress or 0)
            self.progress_bar.value = min(int(done), self.progress_bar.max)

    def _on_error(self, exc: BaseException) -> None:
        self._task.flush()  # the last step before the failure
        self._result = None
        notify_error("Training failed", exc)
        if self.alive:
            self.status.value = "Training failed; see the notification."

    def _on_warning(self, warning: Warning) -> bool:
        """Say what core warned about in the annotation (split labels, no validation part)."""
        from napari_unet.core.targets import SplitLabelsWarning
        from napari_unet.core.training import NoValidationWarning

        if isinstance(warning, SplitLabelsWarning):
            show_warning(f"Annotation '{self._annotation_name}': {warning}")
            return True
        if isinstance(warning, NoValidationWarning):
            text = str(warning)
            show_warning(f"Annotation '{self._annotation_name}': {text[0].upper()}{text[1:]}")
            return True
        return False

    def _on_return(self, result: Any) -> None:
        self._task.flush()  # the last step, before the summary replaces it
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
        metric = self._metric_label()
        validation = f", validation {metric} {score:.3f}" if isinstance(score, float) else ""
        if model.mode == "classes" and self.annotation_layer.value is not None:
            # the Segment widget shows class ids in the colours of this annotation
            model.training["annotation_layer"] = self.annotation_layer.value.name
        source = "fine-tuned" if self._fine_tune else "trained"
        what = "" if self._fine_tune else f" ({self._run_settings.preset} preset)"
        seed = f", seed {summary['seed']}" if "seed" in summary else ""
        description = f"{source} here{what}: {n} iterations{loss}{validation}{seed}"
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
        job = self._task.finish()
        result = getattr(self, "_result", None)
        self._result = None
        if job is not None and job.aborted:
            show_warning(
                "Training stopped because its napari window closed; the model was not kept."
            )
        if self.alive:
            self._set_busy(False)
        self.training_done.emit(result)

    def _on_exported(self, path: Any) -> None:
        self._export_result = path
        show_info(f"bioimage.io package written to {path}")
        if self.alive:
            self.status.value = f"Exported the model to {path}."

    def _on_export_failed(self, path: str, exc: BaseException) -> None:
        notify_error(f"Could not export the model to '{path}'", exc)
        if self.alive:
            self.status.value = "Export failed; see the notification."

    def _on_export_finish(self) -> None:
        self._export = None
        result, self._export_result = self._export_result, None
        if self.alive:
            self._set_busy(self.busy)
        self.export_done.emit(result)

    def _metric_label(self) -> str:
        """The short name of the validation metric of this run (or of the controls)."""
        from napari_unet.core.training.loop import metric_label

        return metric_label(self._run_settings or self.settings())

    # -- controls ------------------------------------------------------------------------------
    def _on_preset(self, *_args: Any) -> None:
        """Preset, mode, start or dimensions changed: show their defaults
        (:meth:`_show_defaults`)."""
        self._show_defaults(self.start_from.value != NEW)

    def _show_defaults(self, fine_tune: bool) -> None:
        """Show the training settings of the chosen preset, mode and dimensions (of fine-tuning
        a model when ``fine_tune``: ``FINE_TUNE_DEFAULTS``; of a 3D network: smaller patches)
        where they differ from the ones shown before and the user has not changed them."""
        from napari_unet.core.training import TrainSettings

        (preset, mode, tuned, dims) = self._preset
        ndim = 3 if self.dims.value == DIMS_CHOICES[1] else 2
        now = (self.preset.value, self.mode.value, bool(fine_tune), ndim)
        before = TrainSettings.for_preset(
            preset, mode=mode, fine_tune=tuned, spatial_dims=dims
        ).to_dict()
        after = TrainSettings.for_preset(
            now[0], mode=now[1], fine_tune=now[2], spatial_dims=now[3]
        ).to_dict()
        self._preset = now
        for form_ in (self.main_form, self.advanced_form):
            shown = form_.values()
            form_.set_values(
                {
                    k: after[k]
                    for k in shown
                    if k not in ("preset", "mode") and shown[k] == before[k] != after[k]
                }
            )

    def _on_train(self, *_args: Any) -> None:
        self.train(fine_tune=False)

    def _on_again(self, *_args: Any) -> None:
        self.train(fine_tune=True)

    def _on_save(self, *_args: Any) -> None:
        if self._session.model is None:
            show_warning("There is no model to save yet: train one or load a model file.")
            return
        path = self._ask_path(save=True)
        if path:
            self.save_model(path)

    def _on_export(self, *_args: Any) -> None:
        if self._session.model is None:
            show_warning("There is no model to export yet: train one or load a model file.")
            return
        path = self._ask_export_path()
        if path:
            self.export_model(path)

    def _ask_export_path(self) -> str | None:
        """Ask where to write the package (a Qt file dialog); None if cancelled."""
        from qtpy.QtWidgets import QFileDialog

        current = self._session.current
        start = Path(current.path).with_suffix(".zip") if current and current.path else "unet.zip"
        path, _ = QFileDialog.getSaveFileName(
            self.native, "Export for bioimage.io", str(start), "bioimage.io package (*.zip)"
        )
        return path or None

    def _on_load(self, *_args: Any) -> None:
        path = self._ask_path(save=False)
        if path:
            self.load_model(path)

    def _ask_path(self, save: bool) -> str | None:
        """Ask the user for a model file (a Qt file dialog); None if cancelled."""
        from qtpy.QtWidgets import QFileDialog

        current = self._session.current
        start = current.path if current is not None and current.path else "unet.pt"
        kinds = "*.pt" if save else "*.pt *.zip"  # a bioimage.io package this project exported
        filters = f"napari-unet model ({kinds});;All files (*)"
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
        exporting = self._export is not None and self._export.running
        self.export_button.enabled = has_model and not exporting

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
        self._task.close()
