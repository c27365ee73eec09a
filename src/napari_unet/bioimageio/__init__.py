"""bioimage.io model packages: export a trained model, read back one this project exported.

Needs the optional dependencies ``bioimageio.spec`` (export, reading) and ``bioimageio.core``
(``bioimageio test``); they are imported only when a function here runs.
"""

from .export import export_package
from .package_import import load_model_or_package, load_package

__all__ = ["export_package", "load_model_or_package", "load_package"]
