"""napari-unet: train and run U-Nets for cell segmentation in napari.

Importing this package is cheap on purpose: napari reads every plugin's manifest at start-up, so
neither torch nor any Qt module is imported here. The torch core lives in
:mod:`napari_unet.core`, the napari widgets in :mod:`napari_unet.widgets`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
