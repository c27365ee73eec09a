"""Models shipped with the package: a start for fine-tuning, or ready to segment.

A U-Net trained from scratch on a handful of painted cells has only minutes to learn what a
nucleus looks like; one that already knows and only adapts to the user's images does better in
the same minutes (cellpose and StarDist ship pretrained models for the same reason). The models
here are ordinary model files (:mod:`.model_files`) inside the package, addressed by a short
name wherever a model file is accepted (``napari-unet predict nuclei ...``,
``napari-unet train ... --init nuclei``, the widgets' model choices).

``nuclei``: 2D, one channel, fast preset, cells mode; trained on the 20 *train* images of the
DSB2018 / BBBC038v1 fluorescence nuclei in ``shared/data/nuclei-dsb2018`` (CC0 1.0), never on
its test images. It was made with (``OMP_WAIT_POLICY=PASSIVE`` set; 72 minutes on a shared
2-core CPU, 4846 iterations, the checkpoint of best held-out AP@0.5: 0.846 on 24 nuclei)::

    cd shared/data/nuclei-dsb2018/train
    napari-unet train images/*.tif --labels labels/*.tif --out nuclei.pt --minutes 72 --seed 0
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .device import select_device
from .model import TrainedModel
from .model_files import load_model

__all__ = [
    "BUNDLED_MODELS",
    "BundledModel",
    "bundled_model_path",
    "is_bundled_model",
    "load_bundled_model",
    "read_bundled_file",
]

FOLDER = Path(__file__).resolve().parent.parent / "models"


@dataclass(frozen=True)
class BundledModel:
    """A model file shipped inside the package.

    Parameters
    ----------
    name : str
        The short name users type (``'nuclei'``).
    file : str
        The file name inside ``napari_unet/models``.
    description : str
        One line for help texts and the widgets.
    """

    name: str
    file: str
    description: str


BUNDLED_MODELS: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            "nuclei",
            "nuclei.pt",
            "2D fluorescence nuclei, one channel (DSB2018 train images, CC0)",
        ),
    )
}


def is_bundled_model(value: str | os.PathLike[str]) -> bool:
    """Whether ``value`` names a bundled model (and is not an existing file of that name).

    Parameters
    ----------
    value : str or path-like
        What the user gave where a model file is expected.

    Returns
    -------
    bool
        ``True`` for a name of :data:`BUNDLED_MODELS` that is not a file in the working folder.

    Examples
    --------
    >>> is_bundled_model("nuclei"), is_bundled_model("model.pt")
    (True, False)
    """
    return str(value) in BUNDLED_MODELS and not os.path.exists(value)


def bundled_model_path(name: str) -> Path:
    """The file of a bundled model.

    Parameters
    ----------
    name : str
        A key of :data:`BUNDLED_MODELS`.

    Returns
    -------
    Path
        The model file inside the installed package.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones).
    FileNotFoundError
        If the installation lacks the file.
    """
    if name not in BUNDLED_MODELS:
        known = ", ".join(sorted(BUNDLED_MODELS))
        raise ValueError(f"no bundled model named '{name}'; expected one of: {known}")
    path = FOLDER / BUNDLED_MODELS[name].file
    if not path.is_file():
        raise FileNotFoundError(
            f"the bundled model '{name}' is missing from this installation ({path}); "
            "reinstall napari-unet-trainer"
        )
    return path


def load_bundled_model(name: str, device: str | torch.device = "cpu") -> TrainedModel:
    """Load a bundled model by name.

    The file is read once per process (:func:`read_bundled_file` caches it by path and
    modification time); every call returns a fresh copy, so a caller may train it or change it
    without touching what the next caller gets.

    Parameters
    ----------
    name : str
        A key of :data:`BUNDLED_MODELS`.
    device : str or torch.device
        Where to put the network. Default ``'cpu'``.

    Returns
    -------
    TrainedModel
        An independent copy of the model, its network in evaluation mode on ``device``; its
        ``training['bundled']`` is ``name``.
    """
    path = bundled_model_path(name)
    stat = path.stat()
    model = read_bundled_file(path, stat.st_mtime_ns, stat.st_size).copy()
    model.net.to(select_device(device)).eval()
    model.training["bundled"] = name
    return model


@functools.lru_cache(maxsize=4)
def read_bundled_file(path: Path, mtime_ns: int, size: int) -> TrainedModel:
    """The model in a bundled file, read once per file version (an LRU cache).

    Callers must not change what this returns: :func:`load_bundled_model` hands out copies.

    Parameters
    ----------
    path : Path
        The file (:func:`bundled_model_path`).
    mtime_ns, size : int
        The file's modification time and size: a rewritten file is read again.

    Returns
    -------
    TrainedModel
        The model on the CPU, shared by every caller.
    """
    del mtime_ns, size  # part of the cache key only
    return load_model(path, "cpu")
