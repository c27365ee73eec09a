"""The napari widgets: Train, Border weights and Segment (magicgui Containers docked by npe2).

Each widget lives in its own module, which napari imports only when the widget is opened, so
this package module imports nothing heavy:

- :mod:`napari_unet.widgets.train` -> :class:`~napari_unet.widgets.train.TrainWidget`
- :mod:`napari_unet.widgets.border_weights` ->
  :class:`~napari_unet.widgets.border_weights.BorderWeightsWidget`
- :mod:`napari_unet.widgets.segment` -> :class:`~napari_unet.widgets.segment.SegmentWidget`

Shared helpers: ``_session`` (the viewer's model, Qt-free), ``_workers`` (stoppable thread
workers, errors as notifications), ``_layers`` (layer data in the core's layout), ``_plot``
(the live loss plot) and ``_docs`` (tooltips from docstrings).
"""
