"""Controls shared by the widgets: layer pickers that follow the viewer, and a device picker.

:class:`ViewerWidget` is the base of the three widgets: a magicgui ``Container`` that keeps its
layer pickers in step with the viewer's layer list through public napari events, and lets go of
them when its Qt widget is destroyed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from magicgui.widgets import ComboBox, Container, Label, PushButton

__all__ = [
    "ViewerWidget",
    "button_row",
    "device_picker",
    "form",
    "layer_picker",
    "message",
]

logger = logging.getLogger(__name__)


def layer_picker(
    viewer: Any,
    name: str,
    kinds: Sequence[type],
    *,
    label: str | None = None,
    nullable: bool = False,
) -> ComboBox:
    """A drop-down of the viewer's layers of the given kinds, by name.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        Whose layers to offer.
    name : str
        The control's name (also its attribute on the container).
    kinds : sequence of type
        Layer classes to offer, e.g. ``(napari.layers.Labels,)``.
    label : str, optional
        Text beside the control.
    nullable : bool
        Offer "none" as well.

    Returns
    -------
    ComboBox
        Values are the layers themselves; refresh with ``reset_choices()``.
    """
    kinds = tuple(kinds)

    def choices(_widget: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kinds)]

    return ComboBox(name=name, label=label or name, choices=choices, nullable=nullable)


def device_picker(name: str = "device") -> tuple[ComboBox, Label]:
    """A device drop-down and a "Running on: ..." line that follows it.

    Returns
    -------
    picker : ComboBox
        ``'auto'``, ``'cuda:N'``..., ``'mps'``, ``'cpu'`` as this machine offers them.
    readout : Label
        Says which hardware the choice means, e.g. ``'Running on: CPU, 2 threads'``.
    """
    from napari_unet.core.device import available_devices

    picker = ComboBox(name=name, label="device", choices=available_devices(), value="auto")
    readout = Label(name=f"{name}_readout", value="")
    readout.tooltip = "Where the computation runs (the device's name and kind)."

    def update(_value: Any = None) -> None:
        readout.value = f"Running on: {describe(picker.value)}"

    picker.changed.connect(update)
    update()
    return picker, readout


def describe(device: str) -> str:
    """Describe a device name in words; problems come back as words too."""
    from napari_unet.core.device import describe_device, select_device

    try:
        return describe_device(select_device(device))
    except ValueError as exc:
        return f"unavailable ({exc})"


def same_value(a: Any, b: Any) -> bool:
    """Whether two layers are the same layer.

    napari hands plugin widgets a proxy of the viewer, whose layers come back as proxies or as
    the layers themselves depending on how they were reached; ``==`` sees through the proxies
    (layers compare by identity), ``is`` does not.
    """
    if a is None or b is None:
        return a is b
    return bool(a == b)


def message(name: str, value: str = "") -> Label:
    """A full-width line of text that wraps instead of widening the dock (status, model)."""
    from qtpy.QtWidgets import QSizePolicy

    label = Label(name=name, value=value)
    label.native.setWordWrap(True)
    # Take the width the dock gives (a wrapping label otherwise asks for a narrow one).
    label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    return label


def form(*widgets: Any, name: str = "settings") -> Container:
    """Controls one under the other, each with its label in a column on the left."""
    box = Container(name=name, widgets=list(widgets), labels=True)
    box.margins = (0, 0, 0, 0)
    return box


def button_row(*buttons: PushButton, name: str = "buttons") -> Container:
    """Buttons side by side."""
    row = Container(name=name, widgets=list(buttons), layout="horizontal", labels=False)
    row.margins = (0, 0, 0, 0)
    return row


class ViewerWidget(Container):
    """A Container bound to a viewer whose layer pickers follow the layer list.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer the widget works in (napari passes plugin widgets a public-only proxy of it;
        only public API is used through it).
    **kwargs
        Passed to :class:`magicgui.widgets.Container`.
    """

    def __init__(self, viewer: Any, **kwargs: Any) -> None:
        kwargs.setdefault("labels", False)  # full-width rows; labelled controls sit in forms
        super().__init__(**kwargs)
        self._viewer = viewer
        self._alive = True
        self._layer_hooks: list[tuple[Any, Callable[..., Any]]] = []
        events = viewer.layers.events
        for emitter in (events.inserted, events.removed, events.moved, events.reordered):
            self._hook(emitter, self._on_layers_changed)
        for layer in viewer.layers:
            self._hook(layer.events.name, self._refresh_choices)
        self.native.destroyed.connect(self._on_destroyed)

    @property
    def viewer(self) -> Any:
        """The viewer this widget works in."""
        return self._viewer

    @property
    def alive(self) -> bool:
        """False once the widget's Qt side is gone (the window was closed)."""
        return self._alive

    def _hook(self, emitter: Any, callback: Callable[..., Any]) -> None:
        emitter.connect(callback)
        self._layer_hooks.append((emitter, callback))

    def _on_layers_changed(self, event: Any = None) -> None:
        if event is not None and getattr(event, "type", "") == "inserted":
            self._hook(event.value.events.name, self._refresh_choices)
        self._refresh_choices()
        if self._alive:
            self.on_layers_changed()

    def on_layers_changed(self) -> None:
        """Called after layers were added, removed or moved; subclasses may react."""

    def _refresh_choices(self, _event: Any = None) -> None:
        if not self._alive:
            return
        try:
            self.reset_choices()
        except RuntimeError:  # the Qt widget is being deleted
            self._alive = False

    def _on_destroyed(self, *_args: Any) -> None:
        self._alive = False
        for emitter, callback in self._layer_hooks:
            try:
                emitter.disconnect(callback)
            except (RuntimeError, ValueError, TypeError):
                logger.debug("could not disconnect %r", callback, exc_info=True)
        self._layer_hooks.clear()
        self.on_close()

    def on_close(self) -> None:
        """Called once when the widget's window goes; subclasses stop their work here."""
