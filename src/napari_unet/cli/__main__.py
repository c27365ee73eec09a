"""``python -m napari_unet.cli`` runs the command line."""

import sys

from napari_unet.cli import main

sys.exit(main())
