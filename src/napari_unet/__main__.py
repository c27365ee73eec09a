"""``python -m napari_unet`` runs the command line (the same as ``napari-unet``).

This is also how ``torchrun`` starts it: ``torchrun ... -m napari_unet train ...``.
"""

import sys

from napari_unet.cli import main

if __name__ == "__main__":
    sys.exit(main())
