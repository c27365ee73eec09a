"""The napari widgets: Train, Border weights and Segment (magicgui Containers docked by npe2).

Each widget lives in its own module, which napari imports only when the widget is opened, so
this package module imports nothing heavy:

- :mod:`napari_unet.widgets.train` -> :class:`~napari_unet.widgets.train.TrainWidget`
- :mod:`napari_unet.widgets.border_weights` ->
  :class:`~napari_unet.widgets.border_weights.BorderWeightsWidget`
- :mod:`napari_unet.widgets.segment` -> :class:`~napari_unet.widgets.segment.SegmentWidget`

Shared helpers: :mod:`.controls` (layer and device pickers, forms built from settings
dataclasses, buttons, the ``ViewerWidget`` base), :mod:`.session` (the viewer's model, Qt-free),
:mod:`.workers` (stoppable thread workers, errors as notifications), :mod:`.layers` (layer data
in the core's layout), :mod:`.plot` (the live loss plot) and :mod:`.docs` (tooltips from
docstrings).
"""
