"""The network a bioimage.io package describes: the U-Net followed by its foreground probability.

Packages ship one self-contained Python file as the architecture of their
``pytorch_state_dict`` weights: the source of :mod:`napari_unet.core.model` (plain torch)
followed by the part of this module below the ``SHIPPED`` marker. :func:`architecture_source`
puts that file together; :class:`ForegroundUNet` is the same class, importable here, so that the
exported TorchScript and ONNX graphs trace exactly the network that the file defines.

A :class:`ForegroundUNet` has the state_dict keys of :class:`~napari_unet.core.model.UNet` (it is
a subclass that adds no parameters), so the weights of a napari-unet model load into it as they
are.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch

from napari_unet.core import model as core_model
from napari_unet.core.model import UNet, UNetConfig

__all__ = ["ARCHITECTURE_CALLABLE", "ForegroundUNet", "architecture_source", "inlined"]

#: Name of the class the package's architecture file defines.
ARCHITECTURE_CALLABLE = "ForegroundUNet"

_MARKER = "# ---- SHIPPED: everything below goes into the package's architecture file ----"


def architecture_source() -> str:
    """Return the self-contained source of the architecture file that packages ship.

    Returns
    -------
    str
        The source of :mod:`napari_unet.core.model` (torch only), then the definition of
        :class:`ForegroundUNet`.
    """
    own = inspect.getsource(inspect.getmodule(architecture_source))
    _, marker, shipped = own.partition("\n" + _MARKER + "\n")
    if not marker:  # pragma: no cover - the marker is part of this file
        raise RuntimeError("architecture.py lost its SHIPPED marker")
    model_source = inlined(inspect.getsource(core_model), "from .voxels import check_voxel_size")
    return (
        model_source.rstrip()
        + "\n\n\n# ---- napari-unet: the network as the bioimage.io package describes it ----\n\n"
        + shipped.lstrip()
    )


def inlined(source: str, import_line: str) -> str:
    """``source`` with ``import_line`` (a relative import of a core module) replaced by that
    module's own code, so that the shipped file imports nothing from napari-unet.

    Parameters
    ----------
    source : str
        A module's source.
    import_line : str
        One line of it, ``from .NAME import ...``.

    Returns
    -------
    str
        The source with the module's code (without its ``from __future__`` line) in place of
        the import.
    """
    if import_line not in source:
        return source
    name = import_line.split()[1].lstrip(".")
    module = importlib.import_module(f"napari_unet.core.{name}")
    body = inspect.getsource(module).replace("from __future__ import annotations\n", "")
    return source.replace(import_line, f"# ---- inlined: napari_unet.core.{name} ----\n" + body)


# ---- SHIPPED: everything below goes into the package's architecture file ----
class ForegroundUNet(UNet):
    """A U-Net that returns the foreground probability ``(N, 1, H', W')`` instead of logits.

    The probability is ``1 - softmax(logits)[:, 0]`` (``sigmoid(l1 - l0)`` for two classes),
    computed in float32, as napari-unet's own inference does.

    Parameters
    ----------
    **config
        The fields of :class:`UNetConfig` (``in_channels``, ``n_classes``, ``depth``, ...).
    """

    def __init__(self, **config: Any) -> None:
        super().__init__(UNetConfig.from_dict(config))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the foreground probability of the batch ``x``."""
        logits = super().forward(x).float()
        if logits.shape[1] == 2:
            return torch.sigmoid(logits[:, 1:2] - logits[:, 0:1])
        return 1.0 - torch.softmax(logits, dim=1)[:, 0:1]
