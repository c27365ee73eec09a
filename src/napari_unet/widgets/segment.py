"""The Segment widget: run a U-Net over an image or a stack and write instance labels.

A model of the classes mode writes class ids instead, into ``'<image> classes'`` in the colours
of the annotation it was trained on, optionally with the class probabilities (one Image layer,
classes on its first axis) and the objects of one class (connected components,
:func:`napari_unet.core.inference.class_objects`) in ``'<image> objects'``.

The core's :func:`~napari_unet.core.inference.segment` generator runs in a napari thread worker
(:class:`~napari_unet.widgets.workers.Job`); its progress events come back to the main thread
one by one: each labelled slice is written into the Labels layer ``'<image> segmentation'`` (and,
if asked, the probability layer) at once, so results appear while the rest of a stack is still
being computed; tiles done are recorded and shown by the widget's own progress bar and status
line, redrawn twice a second (as in the Train widget: napari's activity dock redraws the window
continuously, which costs the CPU time inference needs). Labels are unique across a stack.
A multiscale layer (napari's OME-Zarr reader makes them) is segmented at level 0, lazily.

"Segment folder…" runs the same model over every image of a folder
(:func:`napari_unet.cli.batch.segment_files`, the code behind ``napari-unet predict INPUT...
--out DIR``) and writes ``<name>_labels.tif`` (``.zarr`` for zarr images) into an output folder;
an image that fails is reported and the others are done.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    FloatSpinBox,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal

from napari_unet.widgets import controls
from napari_unet.widgets.docs import numpydoc_params, set_tooltips
from napari_unet.widgets.layers import (
    OUTPUT_KEY,
    LayerLayout,
    auto_channel_axis,
    image_layout,
    reusable_output,
    slice_index,
)
from napari_unet.widgets.session import bundled_model, session_for
from napari_unet.widgets.workers import Job, JobProgress, notify_error, request_stop

if TYPE_CHECKING:
    import napari.viewer

    from napari_unet.cli.batch import FileResult, Target
    from napari_unet.core.inference import SliceLabels

__all__ = ["SegmentWidget"]

logger = logging.getLogger(__name__)

CHANNEL_CHOICES = [("auto", "auto"), ("none", None), ("axis 0", 0), ("axis 1", 1)]
MODEL_CHOICES = [("this session's model", "session"), ("model file", "file")]
SCOPE_CHOICES = ["current slice", "whole stack"]
RUN_TIP = "Segment the image with the chosen model."
STOP_TIP = "Stop after the current tile; finished slices are kept."
FOLDER_TIP = (
    "Segment every image of the image folder with the chosen model and settings; the labels go "
    "to the output folder as <name>_labels.tif (.zarr for zarr images)."
)
#: the output layers: layer type, dtype and display options
OUTPUT_LAYERS: dict[str, tuple[type, type, dict[str, Any]]] = {
    "segmentation": (Labels, np.int32, {}),
    "classes": (Labels, np.uint8, {}),
    "objects": (Labels, np.int32, {}),
    "class probabilities": (Image, np.float32, {"colormap": "magma", "contrast_limits": (0, 1)}),
    "probability": (
        Image,
        np.float32,
        {
            "colormap": "magma",
            "contrast_limits": (0.0, 1.0),
            "blending": "additive",
            "opacity": 0.6,
        },
    ),
}


def model_choices() -> list[tuple[str, str]]:
    """The Segment widget's model choices: the session's, a file, each bundled model.

    Returns
    -------
    list of (str, str)
        ``(text shown, value)`` pairs; a bundled model's value is ``'bundled:NAME'``.
    """
    from napari_unet.core.bundled_models import BUNDLED_MODELS

    return MODEL_CHOICES + [(f"bundled model: {n}", f"bundled:{n}") for n in BUNDLED_MODELS]


class SegmentWidget(controls.ViewerWidget):
    """Segment cells with a U-Net: this session's model or a model file.

    The result goes into the Labels layer ``'<image> segmentation'``, slice by slice as slices
    finish; a result layer you have edited is never overwritten (a new layer is made instead).

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose layers are offered.

    Attributes
    ----------
    image : napari.layers.Image
        The image to segment: 2D, multichannel, RGB or a stack; numpy, dask or zarr data (read
        tile by tile).
    channels : str or int or None
        Axis holding the channels; 'auto' finds the axis whose size matches the model's channels.
    model_source : str
        The model trained or loaded in this session (see Train), a model file, or a model
        shipped with the plugin (nuclei: 2D fluorescence nuclei, ready to use without training).
    model_file : pathlib.Path
        A napari-unet model file (``.pt``).
    tile : int
        Input tile edge in pixels, halo included (0: chosen automatically from the memory at
        hand). Results do not depend on it.
    threshold : float
        Foreground probability above which a pixel belongs to a cell. Set from the model when
        it is chosen (training picks it on the held-out annotations); change it to override.
    min_size : int
        Objects smaller than this many pixels are dropped. Set from the model when it is chosen
        (learnt from the annotated cells' sizes); change it to override.
    tta : bool
        Test-time augmentation: average over the 8 flips and rotations (8x slower, smoother).
    scope : str
        Segment only the slice shown now, or every slice of a stack.
    link_slices : bool
        A 2D model on a stack: link the objects of consecutive slices into 3D objects (one
        label for a nucleus that spans several slices) where they overlap by at least half of
        the smaller one; cellpose calls it stitching.
    probabilities : bool
        Also show the foreground probability as an Image layer (for a model of the classes
        mode: the probability of every class, classes on the layer's first axis).
    objects : bool
        Model of the classes mode: also make the objects of one class (its connected
        components) a Labels layer ``'<image> objects'``.
    object_class : int
        The class whose objects are made.
    folder : pathlib.Path
        A folder of images (.tif, .tiff, .png, .npy, zarr, OME-Zarr) to segment with
        "Segment folder…"; the channel setting applies to each (auto: from the file or from the
        model's training).
    out_folder : pathlib.Path
        Where "Segment folder…" writes ``<name>_labels.tif`` (``.zarr`` for zarr images).
    skip_existing : bool
        Leave out the images whose labels are in the output folder already.
    """

    #: emitted on the main thread when a run ends: the Labels layer, or None if it failed
    segmentation_done = Signal(object)
    #: emitted on the main thread when a folder run ends: a list of FileResult, or None
    folder_done = Signal(object)

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        from napari_unet.core.inference import segment

        self._session = session_for(viewer)
        self._task = JobProgress(self._refresh, lambda: self.alive)
        self._run: dict[str, Any] = {}
        self._file_cache: tuple[str, float, Any] | None = None
        self.tile_progress: tuple[int, int] = (0, 0)

        self.image = controls.layer_picker(viewer, "image", (Image,))
        self.channels = ComboBox(name="channels", choices=CHANNEL_CHOICES, value="auto")
        self.model_source = ComboBox(
            name="model_source", label="model", choices=model_choices(), value="session"
        )
        self.model_file = FileEdit(
            name="model_file", label="model file", mode="r", filter="*.pt *.zip"
        )
        self.model_info = controls.message("model_info", "")
        self.tile = SpinBox(name="tile", label="tile (0: auto)", min=0, max=16384, step=16)
        self._postprocessing_controls()
        self.tta = CheckBox(name="tta", text="test-time augmentation", value=False)
        self.device, self.device_readout = controls.device_picker(runtime=True)
        self.scope = ComboBox(
            name="scope", label="segment", choices=SCOPE_CHOICES, value="whole stack"
        )
        self.link_slices = CheckBox(
            name="link_slices", text="Link slices into 3D objects", value=False
        )
        self.probabilities = CheckBox(
            name="probabilities", text="add a probability layer", value=False
        )
        self._objects_controls()
        self.run_button = controls.push_button("run_button", "Run", RUN_TIP, self._on_run_clicked)
        self.stop_button = controls.push_button("stop_button", "Stop", STOP_TIP, self.stop)
        self.status = controls.message("status", "")
        self.progress_bar = self._task.bar
        folder_section = self._folder_controls()
        self.extend(
            [
                controls.form(
                    self.image,
                    self.channels,
                    self.model_source,
                    self.model_file,
                ),
                self.model_info,
                controls.form(
                    self.tile,
                    self.threshold,
                    self.min_size,
                    self.min_confidence,
                    self.tta,
                    self.scope,
                    self.link_slices,
                    self.probabilities,
                    self.objects,
                    self.object_class,
                    self.device,
                    name="options",
                ),
                self.device_readout,
                controls.button_row(self.run_button, self.stop_button),
                folder_section,
                self.status,
                self.progress_bar,
            ]
        )
        set_tooltips(self, type(self), segment)

        self.model_source.changed.connect(self._on_model_source)
        self.model_file.changed.connect(self._on_model_source)
        self._session.connect(self._on_model_source)
        self._on_model_source()
        self._set_busy(False)

    def _postprocessing_controls(self) -> None:
        """Threshold, minimum size and minimum confidence (set from the model when chosen)."""
        from napari_unet.core.inference import DEFAULT_MIN_CONFIDENCE, DEFAULT_MIN_SIZE

        self.threshold = FloatSpinBox(name="threshold", min=0.01, max=0.99, step=0.05, value=0.5)
        self.min_size = SpinBox(name="min_size", label="minimum size", min=0, max=10_000_000)
        self.min_size.value = DEFAULT_MIN_SIZE
        self.min_confidence = FloatSpinBox(
            name="min_confidence",
            label="min confidence",
            min=0.0,
            max=0.99,
            step=0.01,
            value=DEFAULT_MIN_CONFIDENCE,
            tooltip="drop objects whose highest probability is under this (0 keeps all)",
        )

    def _objects_controls(self) -> None:
        """The classes mode's "add an objects layer" and "objects of" (the model's classes)."""
        self.objects = CheckBox(name="objects", text="add an objects layer", value=False)
        self.object_class = ComboBox(
            name="object_class", label="objects of", choices=self._class_choices
        )

    def _folder_controls(self) -> Any:
        """The "Segment a folder" section: image folder, output folder, its button."""
        self.folder = FileEdit(name="folder", label="image folder", mode="d")
        self.out_folder = FileEdit(name="out_folder", label="output folder", mode="d")
        self.skip_existing = CheckBox(
            name="skip_existing", text="skip images segmented before", value=False
        )
        self.folder_button = controls.push_button(
            "folder_button", "Segment folder…", FOLDER_TIP, self._on_folder_clicked
        )
        self.folder_button.label = ""
        widgets = [self.folder, self.out_folder, self.skip_existing, self.folder_button]
        docs = numpydoc_params(type(self))  # the section's controls sit outside the container
        for widget in widgets[:-1]:
            widget.tooltip = docs.get(widget.name, "")
        return controls.collapsible("folder_section", "Segment a folder", widgets)

    # -- public API ----------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Whether a segmentation is running."""
        return self._task.running

    def run(self) -> bool:
        """Start segmenting, as the Run button does.

        Returns
        -------
        bool
            True if the run started; otherwise a notification said why not.
        """
        from napari_unet.core.inference import segment

        plan = self._ready(self._plan)
        if plan is None:
            return False
        self._run = self._run_state(plan["layout"], plan["z"], plan["model"])
        self._run["buffer"] = plan["params"].get("probabilities_out")
        if getattr(plan["model"].config, "spatial_dims", 2) == 3:
            self._run["n"] = 1  # one volume
        self._run["link"] = self._links(plan)
        self.tile_progress = (0, 0)
        note = plan["layout"].multiscale_note
        if note:
            show_info(note)
        self._start(
            Job(
                segment,
                plan["model"],
                plan["image"],
                on_yield=self._on_report,
                on_return=self._on_return,
                on_error=self._on_error,
                on_finish=self._on_finish,
                **plan["params"],
            ),
            f"Segmenting {self._where(plan['layout'], plan['z'])}… {note}".strip(),
        )
        return True

    def run_folder(self) -> bool:
        """Segment every image of the image folder into the output folder ("Segment folder…").

        Returns
        -------
        bool
            True if the run started; otherwise a notification said why not.
        """
        from napari_unet.cli.batch import segment_files

        ready = self._ready(lambda: (self._model(), *self._folder_targets()))
        if ready is None:
            return False
        model, targets, out_dir = ready
        self._run = {"folder": True, "n": len(targets), "out": out_dir, "results": []}
        self._start(
            Job(
                segment_files,
                model,
                targets,
                self._batch_settings(),
                skip_existing=bool(self.skip_existing.value),
                on_yield=self._on_folder_report,
                on_return=self._on_folder_return,
                on_error=self._on_error,
                on_finish=self._on_finish,
            ),
            f"Segmenting {len(targets)} image(s) of {self.folder.value}…",
            total=len(targets),
        )
        return True

    def _ready(self, prepare: Callable[[], Any]) -> Any:
        """``prepare()``'s result when no run is going on and the inputs work; else None after
        a notification saying why not."""
        if self.busy:
            show_info("A segmentation is already running; press Stop to end it first.")
            return None
        try:
            return prepare()
        except ValueError as exc:
            show_error(str(exc))
            return None

    def _start(self, job: Job, status: str, total: int = 0) -> None:
        """Start ``job`` with the status line, the progress bar (``total`` steps; 0: set by
        the first tile event) and the throttled redraws."""
        self._run["progress"] = (0, total)
        self.status.value = status
        self._set_busy(True)
        self._task.start(job, total)

    def _folder_targets(self) -> tuple[list[Target], Path]:
        """The folder's images and their outputs; ValueError for folders that do not work."""
        from napari_unet.cli.batch import batch_targets, collect_inputs

        folder, out_dir = Path(str(self.folder.value or "")), Path(str(self.out_folder.value or ""))
        if str(folder) in ("", ".") or not folder.is_dir():
            raise ValueError(f"Choose the folder of images to segment; '{folder}' is not a folder.")
        if str(out_dir) in ("", ".") or not out_dir.is_dir():
            raise ValueError(
                f"Choose the output folder for the labels; '{out_dir}' is not a folder."
            )
        return batch_targets(collect_inputs([folder]), out_dir), out_dir

    def _batch_settings(self) -> Any:
        """The widget's settings for every image of a folder (channels: as chosen, else from
        each file or the model's training)."""
        from napari_unet.cli.batch import PredictSettings
        from napari_unet.core.inference import DEFAULT_LINK_OVERLAP

        axis = self.channels.value
        return PredictSettings(
            channel_axis=axis if isinstance(axis, int) else None,
            tile=int(self.tile.value) or None,
            device=self.device.value,
            tta=bool(self.tta.value),
            threshold=float(self.threshold.value),
            min_size=int(self.min_size.value),
            min_confidence=float(self.min_confidence.value),
            link_slices=DEFAULT_LINK_OVERLAP if self.link_slices.value else None,
        )

    def _links(self, plan: dict[str, Any]) -> bool:
        """Whether this run links slice objects into 3D objects: asked for, a whole stack, a
        2D model of cells."""
        model = plan["model"]
        return (
            bool(self.link_slices.value)
            and plan["layout"].is_stack
            and plan["z"] is None
            and getattr(model, "mode", "cells") == "cells"
            and getattr(model.config, "spatial_dims", 2) == 2
        )

    def _run_state(self, layout: LayerLayout, z0: int | None, model: Any) -> dict[str, Any]:
        """The output layers made ready (main thread) and what the run's callbacks need."""
        classes = model.mode == "classes"
        out = self._output_layer(layout, "classes" if classes else "segmentation")
        prob = None
        if self.probabilities.value and classes:
            prob = self._output_layer(layout, "class probabilities", model.config.n_classes)
        elif self.probabilities.value:
            prob = self._output_layer(layout, "probability")
        if classes:
            self._match_colours(out, model)
        if z0 is None:  # the whole image or stack: this run's result replaces the last one
            offset = 0
            out.data[...] = 0
            out.refresh()
        elif classes:  # class ids are the same in every slice
            offset = 0
        else:  # one slice of a stack: labels stay unique across the stack
            offset = int(np.max(out.data)) if np.size(out.data) else 0
        return {
            "layout": layout,
            "labels": out,
            "prob": prob,
            "n": 1 if z0 is not None else layout.n_slices,
            "z0": z0,
            "offset": offset,
            "done": 0,
            "name": layout.name,
            "result": None,
            "classes": classes,
            "model": model,
        }

    @staticmethod
    def _where(layout: LayerLayout, z0: int | None) -> str:
        if z0 is not None:
            return f"slice {z0} of {layout.name}"
        if layout.is_stack:
            return f"{layout.n_slices} slices of {layout.name}"
        return layout.name

    def stop(self, *_args: Any) -> None:
        """Ask the run to end after the current tile (the Stop button)."""
        if request_stop(
            self._task.job,
            "Nothing to stop: no segmentation is running.",
            "The segmentation is already stopping.",
        ):
            self.status.value = "Stopping…"

    # -- planning ------------------------------------------------------------------------------
    def _model(self) -> Any:
        from napari_unet.bioimageio import load_model_or_package
        from napari_unet.core.model_files import ModelFileError

        source = self.model_source.value
        if source.startswith("bundled:"):
            return bundled_model(source.partition(":")[2])
        if source == "session":
            model = self._session.model
            if model is None:
                raise ValueError(
                    "There is no model in this session yet: train one with the Train widget, "
                    "or choose 'model file'."
                )
            return model
        path = str(self.model_file.value or "")
        if not path or path == "." or not os.path.isfile(path):
            raise ValueError(
                f"Choose a model file (.pt or .zip) to segment with; '{path}' is not a file."
            )
        mtime = os.path.getmtime(path)
        if self._file_cache and self._file_cache[:2] == (path, mtime):
            return self._file_cache[2]
        try:
            model = load_model_or_package(path)
        except ModelFileError as exc:
            raise ValueError(
                f"'{Path(path).name}' is not a napari-unet model file we can read: {exc}"
            ) from exc
        except OSError as exc:
            raise ValueError(f"Could not read '{path}': {exc}") from exc
        self._file_cache = (path, mtime, model)
        return model

    def _plan(self) -> dict[str, Any]:
        layer = self.image.value
        if layer is None:
            raise ValueError("Choose the image to segment: open an image first.")
        model = self._model()
        in_channels = model.config.in_channels
        axis = self.channels.value
        if axis == "auto":
            axis = auto_channel_axis(layer, in_channels)
        layout = image_layout(layer, axis)
        if layout.n_channels != in_channels:
            raise ValueError(
                f"The model reads {in_channels} channel(s) but the image '{layout.name}' is "
                f"{layout.describe()} with {layout.n_channels}. Choose the image's channel axis "
                "under 'channels', or a model trained on such images."
            )
        z = None
        image, channel_axis = layout.data, layout.channel_axis
        volume = getattr(model.config, "spatial_dims", 2) == 3
        if volume:
            self._check_volume(layout, model)
        elif layout.is_stack and self.scope.value == "current slice":
            z = slice_index(self.viewer, layer, layout)
            image, channel_axis = layout.slice(z)
        params = {
            "channel_axis": channel_axis,
            "rgb": layout.rgb,
            "tile": int(self.tile.value) or None,
            "device": self.device.value,
            "tta": bool(self.tta.value),
            "threshold": float(self.threshold.value),
            "min_size": int(self.min_size.value),
            "min_confidence": float(self.min_confidence.value),
        }
        if volume and model.mode == "cells":  # what Stop keeps of a volume: its finished tiles
            params["probabilities_out"] = np.zeros(layout.spatial_shape, np.float32)
        return {"layout": layout, "model": model, "image": image, "z": z, "params": params}

    def _check_volume(self, layout: LayerLayout, model: Any) -> None:
        """ValueError unless the image is a volume of the 3D model's voxel size (a layer whose
        scale is all ones says nothing about its voxel size and is taken as it is)."""
        from napari_unet.core.model import check_image_voxel_size

        if not layout.is_stack:
            raise ValueError(
                f"The model is a 3D network: it segments volumes (Z, Y, X), but the image "
                f"'{layout.name}' is {layout.describe()}. Choose a 2D model for 2D images."
            )
        scale = self._spatial_transform(layout)["scale"][-3:]
        if not np.allclose(scale, 1.0):
            check_image_voxel_size(model.config, scale, f"the scale of '{layout.name}'")

    # -- output layers (main thread) -----------------------------------------------------------
    def _spatial_transform(self, layout: LayerLayout, lead: int = 0) -> dict[str, Any]:
        layer = self.image.value
        scale, translate = list(layer.scale), list(layer.translate)
        if layout.channel_axis is not None:
            del scale[layout.channel_axis], translate[layout.channel_axis]
        return {"scale": [1.0] * lead + scale, "translate": [0.0] * lead + translate}

    def _output_layer(self, layout: LayerLayout, kind: str, n_classes: int = 0) -> Any:
        """The ``'<image> <kind>'`` layer for this run: the last run's if it is unedited and
        fits, else a new one (``kind``: a key of :data:`OUTPUT_LAYERS`; ``n_classes``: a
        leading class axis of that size)."""
        name = f"{layout.name} {kind}"
        layer_type, dtype, display = OUTPUT_LAYERS[kind]
        shape = (n_classes, *layout.spatial_shape) if n_classes else layout.spatial_shape
        layer = reusable_output(self.viewer, name, layer_type, shape)
        if layer is not None:
            return layer
        add = self.viewer.add_labels if layer_type is Labels else self.viewer.add_image
        layer = add(
            np.zeros(shape, dtype),
            name=name,
            metadata={OUTPUT_KEY: {"kind": kind, "edited": False}},
            **display,
            **self._spatial_transform(layout, 1 if n_classes else 0),
        )
        if layer_type is Labels:  # the user's corrections are never overwritten

            def edited(_event: Any = None, layer: Any = layer) -> None:
                layer.metadata[OUTPUT_KEY]["edited"] = True

            layer.events.paint.connect(edited)
            layer.events.data.connect(edited)
        return layer

    def _match_colours(self, layer: Any, model: Any) -> None:
        """Show class ids in the colours of the annotation the model was trained on, if open."""
        name = model.training.get("annotation_layer")
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Labels):
            layer.colormap = self.viewer.layers[name].colormap

    # -- worker callbacks (main thread) --------------------------------------------------------
    def _on_report(self, event: Any) -> None:
        if event.stage == "tiles":
            self._on_tiles(event.done, event.total)
        elif event.stage == "labels":
            self._on_slice(event.item)

    def _on_tiles(self, done: int, total: int) -> None:
        """Record the tile progress; :meth:`_refresh` shows it (a redraw per tile is costly)."""
        self.tile_progress = (done, total)
        run = self._run
        if not run:
            return
        part = f"{run['done']}/{run['n']} slices, " if run["n"] > 1 else ""
        run["text"] = f"Segmenting {run['name']}: {part}tile {done}/{total}"
        run["progress"] = (done, total)
        self._task.changed()

    def _refresh(self) -> None:
        """Show the latest progress: status line and progress bar."""
        run = self._run
        if not run:
            return
        if "text" in run:
            self.status.value = run["text"]
        self._task.show(*run["progress"])

    def _on_slice(self, done: SliceLabels) -> None:
        run = self._run
        run["done"] += 1
        layout: LayerLayout = run["layout"]
        z = done.z if run["z0"] is None else run["z0"]
        labels = done.labels
        key = (z,) if layout.is_stack and labels.ndim == 2 else (...,)
        if run["offset"]:
            labels = np.where(labels > 0, labels + run["offset"], 0).astype(labels.dtype)
        out = run["labels"]
        if out in self.viewer.layers:
            out.data[key] = labels
            out.refresh()
        prob_layer = run["prob"]
        if prob_layer is not None and prob_layer in self.viewer.layers:
            prob_layer.data[(slice(None), *key) if run["classes"] else key] = done.probabilities
            prob_layer.refresh()

    def _on_error(self, exc: BaseException) -> None:
        """A run (of an image or a folder) ended by Stop (core's Cancelled) or by an error."""
        from napari_unet.core.inference import Cancelled

        run = self._run
        what = "Folder segmentation" if run.get("folder") else "Segmentation"
        if not isinstance(exc, Cancelled):
            notify_error(f"{what} failed", exc)
            self._show_final(f"{what} failed; see the notification.")
            return
        self._link(run)
        if run.get("buffer") is not None and run["done"] == 0:  # a volume stopped mid-way
            done = self._keep_tiles(run)
        elif run.get("folder"):
            done = (
                f"{len(run['results'])} of {run['n']} image(s); finished ones are in {run['out']}"
            )
        else:
            done = (
                f"{run['done']} of {run['n']} slice(s); finished slices are in "
                f"'{run['labels'].name}'"
            )
        show_info(f"{what} stopped after {done}.")
        self._show_final(f"{what} stopped after {done}.")

    def _keep_tiles(self, run: dict[str, Any]) -> str:
        """Show the probability of the tiles a stopped 3D run finished; what was kept."""
        layer = self._output_layer(run["layout"], "probability")
        layer.data[...] = run["buffer"]
        layer.refresh()
        done, total = run.get("progress", (0, 0))
        return f"{done} of {total} tile(s) of the volume; their probability is in '{layer.name}'"

    def _on_return(self, result: Any) -> None:
        run = self._run
        out = run["labels"]
        self._link(run)
        msg = self._summary(run, out)
        show_info(msg)
        run["result"] = out
        self._show_final(msg)

    def _link(self, run: dict[str, Any]) -> None:
        """Link the finished slices' objects into 3D objects, in place, if this run links."""
        from napari_unet.core.inference import link_slices

        out = run.get("labels")
        if run.get("link") and out is not None and out in self.viewer.layers:
            link_slices(out.data, out=out.data)
            out.refresh()

    def _show_final(self, msg: str) -> None:
        """The run's last word in the status line (the progress shown up to its end first)."""
        self._task.flush()
        if self.alive:
            self.status.value = msg

    def _summary(self, run: dict[str, Any], out: Any) -> str:
        """The message of a finished run (and the objects layer of a classes model, if asked)."""
        where = "" if run["n"] == 1 else f" ({run['n']} slices)"
        if not run["classes"]:
            n_cells = int(np.count_nonzero(np.bincount(np.ravel(out.data))[1:]))
            what = "3D objects" if run.get("link") else "cells"
            return f"Segmented {run['name']}{where}: {n_cells} {what} in '{out.name}'."
        model = run["model"]
        found = [int(k) for k in np.unique(out.data) if k > 0]
        names = ", ".join(model.class_names[k - 1] for k in found if k <= len(model.class_names))
        msg = f"Segmented {run['name']}{where} into classes ({names}) in '{out.name}'."
        if self.objects.value and self.object_class.value is not None:
            msg += " " + self._add_objects(run, out.data, int(self.object_class.value))
        return msg

    def _add_objects(self, run: dict[str, Any], ids: np.ndarray, k: int) -> str:
        """The objects of class ``k`` (connected components) into ``'<image> objects'``."""
        from napari_unet.core.inference import class_objects

        layer = self._output_layer(run["layout"], "objects")
        labels, _ = class_objects(np.asarray(ids), [k])
        layer.data[...] = labels
        layer.refresh()
        name = run["model"].class_names[k - 1]
        return f"{int(labels.max())} objects of '{name}' in '{layer.name}'."

    def _on_finish(self) -> None:
        job = self._task.finish()
        run, self._run = self._run, {}
        if job is not None and job.aborted:
            show_warning("The segmentation was stopped because its napari window closed.")
        if self.alive:
            self._set_busy(False)
        done = self.folder_done if run.get("folder") else self.segmentation_done
        done.emit(run.get("result"))

    def _on_folder_report(self, event: Any) -> None:
        """Record a folder run's progress (files done; tiles of the current file)."""
        run = self._run
        if event.stage == "file":
            run["name"] = event.item.source.name
            run["at"] = event.done + 1
        elif event.stage == "tiles":
            run["text"] = (
                f"Segmenting {run.get('name', '')} ({run.get('at', 0)}/{run['n']}): "
                f"tile {event.done}/{event.total}"
            )
        elif event.stage == "files":
            run["results"].append(event.item)
            run["progress"] = (len(run["results"]), run["n"])
        self._task.changed()

    def _on_folder_return(self, result: Any) -> None:
        run = self._run
        run["result"] = result
        msg = self._folder_summary(result, run["out"])
        failed = [r for r in result if r.status == "failed"]
        (show_warning if failed else show_info)(msg)
        self._show_final(msg)

    @staticmethod
    def _folder_summary(results: list[FileResult], out_dir: Path) -> str:
        """One message: how many images were written, skipped and failed (and why)."""
        counts = {s: sum(r.status == s for r in results) for s in ("written", "skipped", "failed")}
        msg = f"Segmented {counts['written']} of {len(results)} image(s) into {out_dir}"
        if counts["skipped"]:
            msg += f"; {counts['skipped']} skipped (labels there already)"
        failed = [r for r in results if r.status == "failed"]
        if failed:
            shown = "; ".join(f"{r.target.source.name}: {r.message}" for r in failed[:3])
            more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
            msg += f"; {len(failed)} failed ({shown}{more})"
        return msg + "."

    # -- state ---------------------------------------------------------------------------------
    def _on_run_clicked(self, *_args: Any) -> None:
        self.run()

    def _on_folder_clicked(self, *_args: Any) -> None:
        self.run_folder()

    def _on_model_source(self, *_args: Any) -> None:
        if not self.alive:
            return
        from_file = self.model_source.value == "file"
        self.model_file.visible = from_file
        self._apply_model_defaults()
        if from_file:
            self.model_info.value = ""
            self.model_info.visible = False
            return
        self.model_info.visible = True
        source = self.model_source.value
        if source.startswith("bundled:"):
            from napari_unet.core.bundled_models import BUNDLED_MODELS

            bundled = BUNDLED_MODELS[source.partition(":")[2]]
            self.model_info.value = f"Model: bundled '{bundled.name}': {bundled.description}"
            return
        current = self._session.current
        self.model_info.value = (
            "No model yet: train one with Train, or load one."
            if current is None
            else f"Model: {current.description}"
        )

    def _apply_model_defaults(self) -> None:
        """Threshold, minimum size and confidence from the chosen model (the first two chosen on
        its validation part)."""
        from napari_unet.core.inference import postprocessing_defaults

        try:
            model = self._model()
        except ValueError:
            return  # no model yet, or an unreadable file: Run will say so
        classes = model.mode == "classes"
        for control in (self.threshold, self.min_size, self.min_confidence):
            control.visible = not classes  # instances only
        for control in (self.objects, self.object_class):
            control.visible = classes
        if classes:
            self.object_class.reset_choices()
            return
        post = postprocessing_defaults(model.training)
        self.threshold.value = post.threshold
        self.min_size.value = post.min_size
        self.min_confidence.value = post.min_confidence

    def _class_choices(self, _widget: Any = None) -> list[tuple[str, int]]:
        """The classes of the chosen model, for "objects of" (none for a cells model)."""
        try:
            model = self._model()
        except ValueError:
            return []
        return [(name, k) for k, name in enumerate(model.class_names, start=1)]

    def _set_busy(self, busy: bool) -> None:
        self.run_button.enabled = not busy
        self.folder_button.enabled = not busy
        self.stop_button.enabled = busy

    def on_close(self) -> None:
        """The window is closing: stop the run."""
        self._task.close()
