"""Controls shared by the widgets: layer pickers, a device picker, forms built from dataclasses.

:class:`ViewerWidget` is the base of the three widgets: a magicgui ``Container`` that keeps its
layer pickers in step with the viewer's layer list through public napari events, and lets go of
them when its Qt widget is destroyed. :class:`SettingsForm` makes one magicgui control per field
of a settings dataclass (name, type, default, bounds from the field's metadata, tooltip from the
class docstring) and reads the values back; :func:`push_button`, :func:`form`,
:func:`button_row`, :func:`collapsible` and :func:`qt_box` lay a widget out.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from magicgui.widgets import ComboBox, Container, Label, PushButton, Widget, create_widget

from napari_unet.widgets.docs import numpydoc_params

__all__ = [
    "SettingsForm",
    "ViewerWidget",
    "button_row",
    "collapsible",
    "describe",
    "device_picker",
    "form",
    "layer_picker",
    "message",
    "push_button",
    "qt_box",
    "same_value",
    "setting_control",
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


def device_picker(name: str = "device", runtime: bool = False) -> tuple[ComboBox, Label]:
    """A device drop-down and a "Running on: ..." line that follows it.

    Parameters
    ----------
    name : str
        The drop-down's name; the line is ``'<name>_readout'``.
    runtime : bool
        Say what runs inference there too (``'CPU (OpenVINO), 2 threads'``, see
        :func:`~napari_unet.core.inference.runtimes.describe_runtime`); training always runs in
        torch (``'CPU, 2 threads'``).

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
        readout.value = f"Running on: {describe(picker.value, runtime)}"

    picker.changed.connect(update)
    update()
    return picker, readout


def describe(device: str, runtime: bool = False) -> str:
    """Describe a device name in words (with the inference runtime when ``runtime``); problems
    come back as words too."""
    from napari_unet.core.device import describe_device, select_device

    try:
        if runtime:
            from napari_unet.core.inference.runtimes import describe_runtime

            return describe_runtime(select_device(device))
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


def form(*widgets: Widget, name: str = "settings") -> Container:
    """Controls one under the other, each with its label in a column on the left."""
    box = Container(name=name, widgets=list(widgets), labels=True)
    box.margins = (0, 0, 0, 0)
    return box


def button_row(*buttons: PushButton, name: str = "buttons") -> Container:
    """Buttons side by side."""
    row = Container(name=name, widgets=list(buttons), layout="horizontal", labels=False)
    row.margins = (0, 0, 0, 0)
    return row


def push_button(
    name: str, text: str, tooltip: str, on_click: Callable[..., Any] | None = None
) -> PushButton:
    """A button with its tooltip, calling ``on_click`` when pressed.

    Parameters
    ----------
    name : str
        The button's name (also its attribute on the container).
    text : str
        What the button says.
    tooltip : str
        What pressing it does.
    on_click : callable, optional
        Called (with the button's value) when it is pressed.

    Returns
    -------
    PushButton
        The button.
    """
    button = PushButton(name=name, text=text, tooltip=tooltip)
    if on_click is not None:
        button.changed.connect(on_click)
    return button


def qt_box(name: str, widget: Any) -> Container:
    """A plain Qt widget (a plot) as a full-width row of a magicgui container."""
    box = Container(name=name, labels=False)
    box.margins = (0, 0, 0, 0)
    box.native.layout().addWidget(widget)
    return box


def collapsible(name: str, title: str, widgets: Sequence[Widget]) -> Container:
    """A section that opens when its title is clicked (superqt's ``QCollapsible``), closed.

    Parameters
    ----------
    name : str
        The row's name.
    title : str
        The clickable title.
    widgets : sequence of magicgui widgets
        The section's controls, laid out as a :func:`form`.

    Returns
    -------
    Container
        A row holding the section.
    """
    from superqt import QCollapsible

    section = QCollapsible(title)
    section.addWidget(form(*widgets, name=f"{name}_form").native)
    section.collapse(animate=False)
    return qt_box(name, section)


def _plain_type(annotation: Any) -> Any:
    """``int | None`` -> ``int``; ``bool | None`` stays a union (no single control for it)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        return kinds[0] if len(kinds) == 1 and kinds[0] is not bool else annotation
    return annotation


def setting_control(field: dataclasses.Field, annotation: Any, tooltip: str = "") -> Widget:
    """A magicgui control for one field of a settings dataclass.

    Parameters
    ----------
    field : dataclasses.Field
        The field; its metadata may give ``label``, ``min``, ``max``, ``step``, ``choices`` and
        ``none`` (the control value that stands for ``None``), as
        :func:`napari_unet.core.training.settings.setting` writes them.
    annotation : type
        The field's type (``int | None`` gives a number control).
    tooltip : str
        The control's tooltip.

    Returns
    -------
    magicgui.widgets.Widget
        A SpinBox, FloatSpinBox, CheckBox or ComboBox (magicgui's choice for the type).
    """
    meta = field.metadata
    kind = _plain_type(annotation)
    value = meta.get("none") if field.default is None else field.default
    options = {k: meta[k] for k in ("min", "max", "step", "choices") if k in meta}
    label = meta.get("label", field.name.replace("_", " "))
    options["tooltip"] = tooltip
    return create_widget(
        value=value, annotation=kind, name=field.name, label=label, options=options
    )


class SettingsForm:
    """One control per field of a settings dataclass that metadata ``show`` puts in this form.

    Parameters
    ----------
    cls : type
        The dataclass, e.g. :class:`~napari_unet.core.training.TrainSettings`; tooltips come
        from its docstring.
    show : str
        Fields whose metadata ``show`` is this (``'main'`` or ``'advanced'``) get a control.
    replace : mapping of str to Widget, optional
        Controls made elsewhere for some fields (a device picker).

    Attributes
    ----------
    controls : dict of str to Widget
        Field name -> control, in the dataclass's order.
    rows : list of Widget
        The controls as rows of a form; fields with the same metadata ``group`` share a row.
    """

    def __init__(self, cls: type, show: str, replace: Mapping[str, Widget] | None = None) -> None:
        hints = typing.get_type_hints(cls)
        docs = numpydoc_params(cls)
        self.fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("show") == show}
        self.controls: dict[str, Widget] = {}
        self.rows: list[Widget] = []
        groups: dict[str, Container] = {}
        for name, f in self.fields.items():
            control = (replace or {}).get(name) or setting_control(f, hints[name])
            control.tooltip = control.tooltip or docs.get(name, "")
            self.controls[name] = control
            group = f.metadata.get("group")
            if group is None:
                self.rows.append(control)
            elif group in groups:
                groups[group].append(control)
            else:
                groups[group] = Container(
                    name=group, label=group, layout="horizontal", labels=False, widgets=[control]
                )
                groups[group].margins = (0, 0, 0, 0)
                self.rows.append(groups[group])

    def values(self) -> dict[str, Any]:
        """Field name -> the value its control shows (the ``none`` value read as ``None``)."""
        out = {}
        for name, control in self.controls.items():
            value = control.value
            none = self.fields[name].metadata.get("none")
            out[name] = None if none is not None and value == none else value
        return out

    def set_values(self, values: Mapping[str, Any]) -> None:
        """Show ``values`` (field name -> value; ``None`` shown as the field's ``none``)."""
        for name, value in values.items():
            if name in self.controls:
                none = self.fields[name].metadata.get("none")
                self.controls[name].value = none if value is None else value


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
