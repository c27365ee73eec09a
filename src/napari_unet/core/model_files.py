"""Model files: one ``.pt`` file per trained model, written atomically and read safely.

A model file is a ``torch.save`` of a dictionary of plain values and tensors::

    {"format": "napari-unet-model", "format_version": 1, "package_version": "0.1.0",
     "torch_version": "2.x", "config": {...}, "normalization": {...}, "gap": 1,
     "training": {...}, "mode": "cells", "class_names": [], "state_dict": {name: tensor}}

``mode`` (``'cells'`` or ``'classes'``) and ``class_names`` came in later; files without them
load as ``'cells'`` models.

Loading uses ``torch.load(weights_only=True)``, whose restricted unpickler refuses any object
that is not a tensor or a plain container, so a file never runs code when it is opened. Writes go
to a temporary file in the destination folder and are renamed into place (``os.replace``), so an
interrupted save never leaves half a model behind (:func:`napari_unet.core.atomic.atomic_path`).
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from .atomic import atomic_path
from .device import select_device
from .model import MODES, TrainedModel, UNet, UNetConfig

__all__ = ["FORMAT", "FORMAT_VERSION", "ModelFileError", "load_model", "save_model"]

logger = logging.getLogger(__name__)

#: Tag that identifies our model files.
FORMAT = "napari-unet-model"
#: Version of the file layout this code writes; files of a newer version are refused.
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A file that is not a readable napari-unet model (foreign, newer, corrupt or unsafe)."""


def _plain(value: Any, where: str) -> Any:
    """Convert ``value`` to plain Python values that ``weights_only`` loading accepts."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: keys must be strings, got {key!r}")
            out[key] = _plain(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, list | tuple):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise ValueError(
        f"{where}: expected plain values (None, bool, int, float, str, list, dict), "
        f"got {type(value).__name__}"
    )


def save_model(model: TrainedModel, path: str | os.PathLike[str]) -> Path:
    """Write a trained model to one ``.pt`` file, atomically.

    Parameters
    ----------
    model : TrainedModel
        The network with its normalisation, gap and training record. ``model.training`` must
        hold plain values only (numbers, strings, lists, dicts).
    path : str or path-like
        Destination file; its folder must exist. An existing file is replaced only once the
        new one is completely written.

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    ValueError
        If ``model`` is not a :class:`~napari_unet.core.model.TrainedModel` or holds values
        that cannot be stored safely.
    FileNotFoundError
        If the destination folder does not exist.
    """
    if not isinstance(model, TrainedModel):
        raise ValueError(f"model must be a TrainedModel, got {type(model).__name__}")
    p = Path(path)
    if not p.parent.exists():
        raise FileNotFoundError(f"folder does not exist: {p.parent}")
    if p.is_dir():
        raise IsADirectoryError(f"path is a folder, expected a file name: {p}")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "config": model.config.to_dict(),
        "normalization": _plain(dict(model.normalization), "model.normalization"),
        "gap": int(model.gap),
        "training": _plain(dict(model.training), "model.training"),
        "mode": model.mode,
        "class_names": list(model.class_names),
        "state_dict": {
            key: value.detach().to("cpu", copy=True).contiguous()
            for key, value in model.net.state_dict().items()
        },
    }
    with atomic_path(p) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    logger.info("saved model to %s", p)
    return p


def _read(p: Path) -> Any:
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The restricted unpickler met an object it does not allow (e.g. a class whose
        # __reduce__ would call a function): nothing from the file was executed.
        raise ModelFileError(
            f"{p} was refused: it holds Python objects other than tensors and plain values, "
            f"which could run code when loaded; only napari-unet model files can be opened "
            f"({str(exc).splitlines()[0]})"
        ) from exc
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # torch raises many types on foreign or damaged files
        raise ModelFileError(
            f"{p} is not a readable napari-unet model file (truncated, corrupt or another "
            f"format): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> TrainedModel:
    """Read a model file written by :func:`save_model`.

    The file is read with ``torch.load(weights_only=True)``: no code stored in it runs.

    Parameters
    ----------
    path : str or path-like
        The ``.pt`` file.
    device : str or torch.device
        Where to put the network (``'cpu'``, ``'cuda'``, ...). Default ``'cpu'``.

    Returns
    -------
    TrainedModel
        The model, its network in evaluation mode on ``device``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ModelFileError
        If the file is not a napari-unet model, was written by a newer version of the file
        format, is truncated or corrupt, or holds objects that loading refuses to create.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from napari_unet.core.model import UNetConfig
    >>> model = TrainedModel(UNet(UNetConfig(depth=2, base_channels=4)))
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "model.pt"
    >>> load_model(save_model(model, path)).config.base_channels
    4
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such model file: {p}")
    if p.is_dir():
        raise IsADirectoryError(f"expected a model file, got a folder: {p}")
    data = _read(p)
    _check_header(data, p)
    net = _rebuild_net(data, p)
    gap = data["gap"]
    if not isinstance(gap, int) or isinstance(gap, bool) or gap < 0:
        raise ModelFileError(f"{p}: gap must be a non-negative integer, got {gap!r}")
    normalization = data["normalization"]
    if not isinstance(normalization, dict):
        raise ModelFileError(f"{p}: normalization must be a dictionary, got {normalization!r}")
    training = data.get("training") or {}
    if not isinstance(training, dict):
        raise ModelFileError(f"{p}: training must be a dictionary, got {type(training).__name__}")
    mode, class_names = _mode(data, net, p)
    if device is not None:
        net.to(select_device(device))
    return TrainedModel(
        net=net,
        normalization=dict(normalization),
        gap=gap,
        training=dict(training),
        mode=mode,
        class_names=class_names,
    )


def _mode(data: dict[str, Any], net: UNet, p: Path) -> tuple[str, tuple[str, ...]]:
    """The stored mode and class names (files without them hold 'cells' models)."""
    mode = data.get("mode", "cells")
    if mode not in MODES:
        raise ModelFileError(f"{p}: mode must be one of {MODES}, got {mode!r}")
    names = data.get("class_names") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ModelFileError(f"{p}: class_names must be a list of strings, got {names!r}")
    if mode == "cells" and net.config.n_classes != 2:
        raise ModelFileError(
            f"{p}: a 'cells' model must have 2 output classes, got {net.config.n_classes}"
        )
    return mode, tuple(names)


def _check_header(data: Any, p: Path) -> None:
    """Refuse what is not a model file of a format version this code reads."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelFileError(
            f"{p} is not a napari-unet model file (expected format {FORMAT!r}, found "
            f"{data.get('format')!r} in a dictionary)"
            if isinstance(data, dict)
            else f"{p} is not a napari-unet model file (it holds a {type(data).__name__})"
        )
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModelFileError(f"{p}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{p} uses model file format {version}, newer than the format {FORMAT_VERSION} this "
            f"napari-unet {__version__} reads (written by napari-unet "
            f"{data.get('package_version', '?')}); update napari-unet to open it"
        )
    if version < 1:
        raise ModelFileError(f"{p}: unknown model file format version {version}")
    missing = [k for k in ("config", "normalization", "gap", "state_dict") if k not in data]
    if missing:
        raise ModelFileError(f"{p} is an incomplete model file: missing {', '.join(missing)}")


def _rebuild_net(data: dict[str, Any], p: Path) -> UNet:
    """The stored network with its weights (finite), in evaluation mode on the CPU."""
    try:
        config = UNetConfig.from_dict(dict(data["config"]))
        net = UNet(config)
        net.load_state_dict(data["state_dict"], strict=True)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelFileError(f"{p} holds a network that cannot be rebuilt: {exc}") from exc
    for name, tensor in net.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelFileError(f"{p}: parameter {name!r} holds NaN or infinite values")
    return net.eval()
