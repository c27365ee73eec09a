"""The torch core of napari-unet: numpy + torch only, no napari, Qt or magicgui.

Import the submodules directly (``from napari_unet.core.model import UNet``); this package
module itself stays empty so that importing one part does not import all of them.
"""
