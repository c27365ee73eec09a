"""The Border weights widget: the U-Net weight map of a Labels layer, live while you paint.

The map (Ronneberger et al. 2015, eq. 2) is shown as an Image layer just below the Labels layer
it belongs to. Painting updates it incrementally: each brush stroke's box (from napari's
``paint`` event) is recomputed by :class:`~napari_unet.core.targets.BorderWeightMap`, debounced
so that a fast stroke costs one update. ``w0`` and class balance only re-assemble the map;
``sigma``, the gap or a new labels layer recompute it in a napari thread worker, slice by slice,
or, for a ``(Z, Y, X)`` layer treated as "3D", as one volume with the layer's ``scale`` as voxel
size (the map is then a 3D Image layer with the same scale). A stack's progress shows in the
widget's own progress bar; the layer and the bar are redrawn at most every
:data:`~napari_unet.widgets.workers.REFRESH_MS` while the worker runs.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, PushButton, SpinBox
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer

from napari_unet.widgets.controls import (
    ViewerWidget,
    button_row,
    form,
    layer_picker,
    message,
    same_value,
)
from napari_unet.widgets.docs import set_tooltips
from napari_unet.widgets.layers import (
    DIMS_CHOICES,
    OUTPUT_KEY,
    default_dims,
    layer_array,
    region_mask,
    reusable_output,
    voxel_size,
)
from napari_unet.widgets.workers import Job, JobProgress, notify_error

if TYPE_CHECKING:
    import napari.viewer

__all__ = ["BorderWeightsWidget", "paint_boxes", "volume_box"]

logger = logging.getLogger(__name__)

#: debounce delay between an edit and the update of the map, in milliseconds
DEBOUNCE_MS = 120

Box = tuple[slice, slice]


def _union(a: Box | None, b: Box) -> Box:
    if a is None:
        return b
    return tuple(  # type: ignore[return-value]
        slice(min(p.start, q.start), max(p.stop, q.stop)) for p, q in zip(a, b, strict=True)
    )


def paint_boxes(atoms: Any, ndim: int) -> dict[int | None, Box] | None:
    """The boxes a napari ``paint`` event changed, per slice.

    Parameters
    ----------
    atoms : sequence
        ``event.value`` of a Labels layer's ``paint`` event: history atoms, either mask-based
        (with a ``slice_key`` box) or ``(indices, old_values, new_value)`` tuples.
    ndim : int
        2 for ``(Y, X)`` labels, 3 for ``(Z, Y, X)``.

    Returns
    -------
    dict or None
        Slice index (None for 2D labels) -> ``(rows, cols)`` box; None when an atom cannot be
        read (the caller then compares the whole image).

    Examples
    --------
    >>> idx = (np.array([2, 3]), np.array([5, 9]))
    >>> paint_boxes([(idx, np.zeros(2), 1)], 2)
    {None: (slice(2, 4, None), slice(5, 10, None))}
    """
    boxes: dict[int | None, Box] = {}
    try:
        for atom in atoms:
            key = getattr(atom, "slice_key", None)
            if key is not None:
                if len(key) != ndim:
                    return None
                spans = [(s.start or 0, s.stop) for s in key]
            else:
                indices = atom[0]
                if len(indices) != ndim:
                    return None
                if any(np.size(i) == 0 for i in indices):
                    continue
                spans = [(int(np.min(i)), int(np.max(i)) + 1) for i in indices]
            yx: Box = (slice(*spans[-2]), slice(*spans[-1]))
            zs = [None] if ndim == 2 else range(*spans[0])
            for z in zs:
                boxes[z] = _union(boxes.get(z), yx)
    except (TypeError, IndexError, AttributeError, ValueError):
        return None
    return boxes


def volume_box(boxes: dict[int | None, Box]) -> tuple[slice, ...]:
    """One ``(Z, Y, X)`` box covering the per-slice boxes of :func:`paint_boxes`.

    Parameters
    ----------
    boxes : dict
        Slice index -> ``(rows, cols)`` box, as :func:`paint_boxes` gives for 3D labels.

    Returns
    -------
    tuple of slice
        ``(z, rows, cols)``.

    Examples
    --------
    >>> volume_box({2: (slice(0, 4), slice(5, 9)), 4: (slice(3, 6), slice(1, 2))})
    (slice(2, 5, None), slice(0, 6, None), slice(1, 9, None))
    """
    zs = [z for z in boxes if z is not None]
    if not zs:
        raise ValueError(f"volume_box needs per-slice boxes, got {boxes!r}")
    yx: Box | None = None
    for box in boxes.values():
        yx = _union(yx, box)
    return (slice(min(zs), max(zs) + 1), *yx)  # type: ignore[misc]


def _full_job(labels: np.ndarray, region: np.ndarray | None, params: dict[str, Any], *, stop: Any):  # type: ignore[no-untyped-def]
    """Worker thread: one BorderWeightMap per slice, or one for a volume (``sampling`` in
    ``params``); yields ``(z, map)`` with ``z = None`` for the whole array."""
    from napari_unet.core.targets import BorderWeightMap

    whole = labels.ndim == 2 or params.get("sampling") is not None
    zs: list[int | None] = [None] if whole else list(range(labels.shape[0]))
    for z in zs:
        if stop.is_set():
            return False
        key = (...,) if z is None else (z,)
        live = BorderWeightMap(
            labels[key], region=None if region is None else region[key], **params
        )
        live.weights  # noqa: B018 (assemble off the GUI thread)
        yield z, live
    return True


class BorderWeightsWidget(ViewerWidget):
    """Show the U-Net border-weight map of a Labels layer, updated live as you paint.

    Pixels in the narrow background between touching cells get high weight (up to ``w0`` on top
    of the class weight), so that the network learns to separate the cells. Press **Show** to add
    the map as an Image layer below the labels; it then follows every brush stroke and every
    change of ``w0``, ``sigma``, class balance and gap.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer to work in: its Labels and Shapes layers are offered.

    Attributes
    ----------
    labels_layer : napari.layers.Labels
        The annotation whose weight map to show (2D, or ``(Z, Y, X)``).
    dims : str
        For ``(Z, Y, X)`` labels: ``'2D slices'`` (each slice weighted on its own, as a 2D model
        trains) or ``'3D'`` (one volume, distances in 3D measured in the layer's scale, as a 3D
        model trains). Default: 3D when the layer's z scale differs from its in-plane scale.
    region : napari.layers.Shapes or napari.layers.Labels, optional
        The annotated area; the weight is 0 outside it.
    gap : int
        Pixels cut from each side of a border between touching cells before the map is computed,
        as training does (0: the labels as painted).
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        from napari_unet.core.targets import border_weight_map
        from napari_unet.core.training import TrainSettings

        defaults = TrainSettings()
        self._maps: dict[int | None, Any] = {}
        self._source: Any = None  # the Labels layer followed
        self._region_layer: Any = None
        self._layer: Any = None  # the weights Image layer
        self._task = JobProgress(self._refresh, lambda: self.alive)
        self._progress = (0, 0)  # slices computed, slices to compute
        self._need_full = False
        self._need_assemble = False
        self._need_region = False
        self._dirty: dict[int | None, Box | None] = {}
        self.updates = 0  # incremental updates applied (for tests and curiosity)

        self.labels_layer = layer_picker(viewer, "labels_layer", (Labels,), label="labels")
        self.region = layer_picker(
            viewer, "region", (Shapes, Labels), label="annotated region", nullable=True
        )
        self.w0 = FloatSpinBox(name="w0", min=0.0, max=1000.0, step=1.0, value=defaults.w0)
        self.sigma = FloatSpinBox(name="sigma", min=0.1, max=200.0, step=0.5, value=defaults.sigma)
        self.class_balance = CheckBox(
            name="class_balance", text="balance classes", value=defaults.class_balance
        )
        self.gap = SpinBox(name="gap", min=0, max=20, value=int(defaults.gap))
        self.dims = ComboBox(name="dims", label="stack as", choices=list(DIMS_CHOICES))
        self.dims.value = default_dims(self.labels_layer.value)
        self.dims.enabled = self._is_stack(self.labels_layer.value)
        self.show_button = PushButton(name="show_button", text="Show weight map")
        self.status = message("status", "Choose a Labels layer and press Show.")
        self.progress_bar = self._task.bar
        self.extend(
            [
                form(
                    self.labels_layer,
                    self.dims,
                    self.region,
                    self.w0,
                    self.sigma,
                    self.class_balance,
                    self.gap,
                ),
                button_row(self.show_button),
                self.progress_bar,
                self.status,
            ]
        )
        self.show_button.tooltip = "Add the weight map of the labels as an Image layer."
        set_tooltips(self, type(self), border_weight_map, TrainSettings)

        self._timer = QTimer(self.native)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self._flush)

        self.show_button.changed.connect(self._on_show_clicked)
        for widget, need in (
            (self.w0, "assemble"),  # re-assembled only
            (self.class_balance, "assemble"),
            (self.sigma, "full"),  # recomputed
            (self.gap, "full"),
            (self.dims, "full"),
            (self.region, "region"),
        ):
            widget.changed.connect(partial(self._on_setting, need))
        self.labels_layer.changed.connect(self._on_labels_choice)

    # -- public API ----------------------------------------------------------------------------
    @property
    def weights_layer(self) -> Any:
        """The Image layer showing the map, or None before Show."""
        return self._layer

    @property
    def busy(self) -> bool:
        """Whether an update is pending or running."""
        return self._timer.isActive() or self._task.running or self._need_full or bool(self._dirty)

    def show_weights(self) -> bool:
        """Add (or refresh) the weight-map layer of the chosen labels and follow their edits.

        Returns
        -------
        bool
            True if the map is being computed; otherwise a notification said why not.
        """
        source = self.labels_layer.value
        if source is None:
            show_error("Choose the Labels layer whose weight map to show.")
            return False
        data = layer_array(source)
        if data.ndim not in (2, 3):
            show_error(
                f"The labels '{source.name}' have {data.ndim} dimensions {data.shape}; expected "
                "a 2D image (Y, X) or a stack (Z, Y, X)."
            )
            return False
        if not np.issubdtype(np.asarray(data[(0,) * data.ndim]).dtype, np.integer):
            show_error(f"The layer '{source.name}' does not hold integer labels.")
            return False
        self._follow(source)
        self._make_layer(source, data.shape)
        self._need_full = True
        self._flush()
        return True

    # -- following a labels layer --------------------------------------------------------------
    def _follow(self, source: Any) -> None:
        if same_value(self._source, source):
            return
        self._unfollow()
        self._source = source
        source.events.paint.connect(self._on_paint)
        source.events.data.connect(self._on_data)
        self._maps = {}

    def _unfollow(self) -> None:
        if self._source is not None:
            for emitter, callback in (
                (self._source.events.paint, self._on_paint),
                (self._source.events.data, self._on_data),
            ):
                try:
                    emitter.disconnect(callback)
                except (RuntimeError, ValueError, TypeError):
                    logger.debug("disconnect failed", exc_info=True)
        self._source = None
        self._maps = {}
        self._dirty.clear()
        self._watch_region(None)

    def _watch_region(self, layer: Any) -> None:
        if self._region_layer is not None:
            try:
                self._region_layer.events.data.disconnect(self._on_region_edit)
            except (RuntimeError, ValueError, TypeError):
                logger.debug("disconnect failed", exc_info=True)
        self._region_layer = layer
        if layer is not None:
            layer.events.data.connect(self._on_region_edit)
            if isinstance(layer, Labels):
                layer.events.paint.connect(self._on_region_edit)

    def _make_layer(self, source: Any, shape: tuple[int, ...]) -> None:
        name = f"{source.name} border weights"
        layer = self._layer
        if layer is None or layer not in self.viewer.layers or layer.data.shape != shape:
            old = reusable_output(self.viewer, name, Image, shape)
            if old is not None:
                self._layer = old
                return
            layer = Image(
                np.zeros(shape, np.float32),
                name=name,
                colormap="inferno",
                contrast_limits=(0.0, max(float(self.w0.value), 1.0) + 2.0),
                opacity=0.85,
                scale=source.scale,
                translate=source.translate,
                metadata={OUTPUT_KEY: {"kind": "border weights", "labels": source.name}},
            )
            index = self.viewer.layers.index(source)
            self.viewer.layers.insert(index, layer)  # just below the labels
            self._layer = layer

    # -- events (main thread) ------------------------------------------------------------------
    def _on_paint(self, event: Any) -> None:
        ndim = layer_array(self._source).ndim if self._source is not None else 2
        boxes = paint_boxes(getattr(event, "value", None) or [], ndim)
        if boxes is None:  # unknown edit: compare everything
            zs: list[int | None] = [None] if ndim == 2 else list(range(self._source.data.shape[0]))
            for z in zs:
                self._dirty[z] = None
        else:
            for z, box in boxes.items():
                if z in self._dirty and self._dirty[z] is None:
                    continue
                self._dirty[z] = _union(self._dirty.get(z), box)
        self._timer.start()

    def _on_data(self, _event: Any = None) -> None:
        self._need_full = True
        self._timer.start()

    def _on_region_edit(self, _event: Any = None) -> None:
        self._need_region = True
        self._timer.start()

    def _on_setting(self, need: str, *_args: Any) -> None:
        """A setting changed: the next update does what it ``need``s (``'assemble'``,
        ``'full'`` or ``'region'``), once labels are followed."""
        if self._source is not None:
            setattr(self, f"_need_{need}", True)
            self._timer.start()

    @staticmethod
    def _is_stack(layer: Any) -> bool:
        return layer is not None and layer_array(layer).ndim == 3

    @property
    def volume(self) -> bool:
        """Whether the followed labels are weighted as one 3D volume."""
        return self._is_stack(self._source) and self.dims.value == DIMS_CHOICES[1]

    def _on_labels_choice(self, *_args: Any) -> None:
        layer = self.labels_layer.value
        self.dims.enabled = self._is_stack(layer)
        with self.dims.changed.blocked():
            self.dims.value = default_dims(layer)
        if self._source is not None and self.labels_layer.value is not None:
            if not same_value(self.labels_layer.value, self._source):
                self.show_weights()

    def on_layers_changed(self) -> None:
        """Stop following labels that were removed from the viewer."""
        if self._source is not None and self._source not in self.viewer.layers:
            self._unfollow()
            self.status.value = "The labels were removed; choose a Labels layer and press Show."

    def _on_show_clicked(self, *_args: Any) -> None:
        self.show_weights()

    # -- the update itself ---------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "w0": float(self.w0.value),
            "sigma": float(self.sigma.value),
            "class_balance": bool(self.class_balance.value),
            "gap": int(self.gap.value),
        }
        if self.volume:
            params["sampling"] = voxel_size(self._source)
        return params

    def _region(self, shape: tuple[int, ...]) -> np.ndarray | None:
        layer = self.region.value
        if layer is None:
            return None
        if same_value(layer, self._source):
            raise ValueError("The annotated region cannot be the labels layer itself.")
        return region_mask(layer, shape)

    def _flush(self) -> None:
        """Apply what changed since the last update (the debounce timer's end)."""
        if not self.alive or self._source is None:
            return
        if self._layer is None or self._layer not in self.viewer.layers:
            self.status.value = "The weight map layer was removed; press Show to add it again."
            self._unfollow()
            self._layer = None
            return
        if self._task.running:
            if self._need_full:
                self._task.job.stop()  # restarted with the new settings when it ends
            return
        try:
            if self._need_full or not self._maps:
                self._start_full()
                return
            if self._need_region:
                self._apply_region()
            if self._need_assemble:
                self._apply_params()
            if self._dirty:
                self._apply_dirty()
        except ValueError as exc:
            self._dirty.clear()
            self._need_full = self._need_region = self._need_assemble = False
            show_error(str(exc))

    def _start_full(self) -> None:
        data = np.array(layer_array(self._source), copy=True)
        self._watch_region(self.region.value)
        region = self._region(data.shape)
        params = self._params()
        if "sampling" in params:
            from napari_unet.core.voxels import check_voxel_size

            check_voxel_size(params["sampling"], 3, name=f"the scale of '{self._source.name}'")
        self._need_full = self._need_region = self._need_assemble = False
        self._dirty.clear()
        self._maps = {}
        n = 1 if data.ndim == 2 or "sampling" in params else data.shape[0]
        self._progress = (0, n)
        in_3d = " in 3D" if "sampling" in params else ""
        self.status.value = f"Computing the weight map{in_3d}…"
        job = Job(
            _full_job,
            data,
            region,
            params,
            on_yield=self._on_map,
            on_return=self._on_full_return,
            on_error=self._on_full_error,
            on_finish=self._on_full_finish,
        )
        self._task.start(job, n, bar=n > 1)

    def _on_map(self, value: tuple[int | None, Any]) -> None:
        """Keep a computed map; :meth:`_refresh` draws it (a redraw per slice is costly)."""
        z, live = value
        self._maps[z] = live
        self._write(z, live.weights, refresh=False)
        done, total = self._progress
        self._progress = (done + 1, total)
        self._task.changed()

    def _refresh(self) -> None:
        """Draw the maps computed since the last call and show the progress."""
        if self._layer is not None:
            self._layer.refresh()
        done, total = self._progress
        if total > 1:
            self._task.show(done, total)
            self.status.value = f"Computing the weight map: {done}/{total} slices…"

    def _on_full_error(self, exc: BaseException) -> None:
        self._task.flush()  # the slices done before the failure
        self._maps = {}
        notify_error("Could not compute the weight map", exc)
        if self.alive:
            self.status.value = "The weight map could not be computed."

    def _on_full_return(self, result: Any) -> None:
        self._task.flush()  # the last slices, before the summary replaces the status
        if result and self.alive:
            self._finish_update()

    def _on_full_finish(self) -> None:
        self._task.finish()
        if self.alive and (
            self._need_full or self._need_region or self._need_assemble or self._dirty
        ):
            self._flush()

    def _apply_region(self) -> None:
        self._need_region = False
        if not same_value(self._region_layer, self.region.value):
            self._watch_region(self.region.value)
        region = self._region(layer_array(self._source).shape)
        for z, live in self._maps.items():
            key = (...,) if z is None else (z,)
            live.set_region(None if region is None else region[key])
            self._write(z, live.weights)
        self._finish_update()

    def _apply_params(self) -> None:
        self._need_assemble = False
        params = self._params()
        for z, live in self._maps.items():
            live.set_params(w0=params["w0"], class_balance=params["class_balance"])
            self._write(z, live.weights)
        self._finish_update()

    def _apply_dirty(self) -> None:
        data = layer_array(self._source)
        dirty, self._dirty = self._dirty, {}
        if None in self._maps and data.ndim == 3:  # one volume: one box over the edited slices
            boxes = {z: box for z, box in dirty.items() if box is not None}
            whole = len(boxes) < len(dirty)
            dirty = {None: None if whole or not boxes else volume_box(boxes)}
        for z, box in dirty.items():
            live = self._maps.get(z)
            if live is None:
                self._need_full = True
                continue
            labels = np.asarray(data if z is None else data[z])
            if live.update(labels, changed=box) is not None:
                self._write(z, live.weights)
                self.updates += 1
        if self._need_full:
            self._timer.start()
        self._finish_update()

    def _write(self, z: int | None, weights: np.ndarray, refresh: bool = True) -> None:
        layer = self._layer
        if layer is None or not self.alive:
            return
        if z is None:
            layer.data[...] = weights
        else:
            layer.data[z] = weights
        if refresh:
            layer.refresh()

    def _finish_update(self) -> None:
        layer = self._layer
        if layer is None:
            return
        top = float(np.max(layer.data)) if layer.data.size else 1.0
        layer.contrast_limits = (0.0, max(top, 1e-3))
        if self._source is not None:
            self.status.value = f"Weights 0–{top:.1f} of '{self._source.name}', updated live."

    def on_close(self) -> None:
        """The window is closing: stop updates and let go of the labels layer."""
        try:
            self._timer.stop()
        except RuntimeError:  # already deleted with the widget
            pass
        self._task.close()
        self._unfollow()
