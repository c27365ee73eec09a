"""Read back a bioimage.io model package that napari-unet exported.

The package's ``config['napari_unet']`` holds what a ``.pt`` model file holds besides the
weights (configuration, normalisation, gap, training record); the weights are the package's
``pytorch_state_dict`` file, read with ``torch.load(weights_only=True)`` so that opening a
package never runs code from it. The network is napari-unet's own
:class:`~napari_unet.core.model.UNet` with exactly those weights, so its predictions are those of
the model that was exported.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from napari_unet.core.bundled_models import is_bundled_model, load_bundled_model
from napari_unet.core.model import TrainedModel, UNet, UNetConfig
from napari_unet.core.model_files import FORMAT, FORMAT_VERSION, ModelFileError, load_model

from .export import CONFIG_KEY

__all__ = ["is_package", "load_model_or_package", "load_package"]


def is_package(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a zip file (a bioimage.io package or something else zipped).

    ``.pt`` model files are zip archives too (``torch.save``); they are told apart by their
    ``data.pkl`` member.
    """
    p = Path(path)
    if not p.is_file() or not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as archive:
        return not any(n.endswith("data.pkl") for n in archive.namelist())


def _description(p: Path) -> Any:
    try:
        from bioimageio.spec import load_model_description
    except ImportError as exc:
        raise ModelFileError(
            f"{p}: reading a bioimage.io package needs bioimageio.spec "
            "(pip install 'napari-unet[bioimageio]')"
        ) from exc
    try:
        return load_model_description(p, perform_io_checks=False)
    except Exception as exc:  # the spec raises ValueError, pydantic and zip errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{p} is not a readable bioimage.io model package: {first}") from exc


def _own_record(p: Path, descr: Any) -> dict[str, Any]:
    config = descr.config  # a dict in spec 0.4 descriptions, a pydantic node with extras in 0.5
    extra = config if isinstance(config, dict) else (getattr(config, "model_extra", None) or {})
    record = extra.get(CONFIG_KEY)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ModelFileError(
            f"{p} is a bioimage.io model package that napari-unet did not export (its config "
            f"has no {CONFIG_KEY!r} record); napari-unet opens the packages it exports"
        )
    version = record.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(f"{p}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{p} uses napari-unet model format {version}, newer than the format "
            f"{FORMAT_VERSION} this version reads (written by napari-unet "
            f"{record.get('package_version', '?')}); update napari-unet to open it"
        )
    missing = [k for k in ("config", "normalization", "gap") if k not in record]
    if missing:
        raise ModelFileError(f"{p}: the napari-unet record lacks {', '.join(missing)}")
    return record


def _state_dict(p: Path, descr: Any) -> dict[str, torch.Tensor]:
    weights = getattr(descr.weights, "pytorch_state_dict", None)
    if weights is None:
        raise ModelFileError(f"{p} has no pytorch_state_dict weights")
    try:
        data = weights.get_reader().read()
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(f"{p}: its pytorch_state_dict weights cannot be read: {exc}") from exc
    if not isinstance(state, dict):
        raise ModelFileError(f"{p}: the weights hold a {type(state).__name__}, not a state dict")
    return state


def load_package(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> TrainedModel:
    """Read a bioimage.io model package exported by napari-unet.

    Parameters
    ----------
    path : str or path-like
        The package (``.zip``).
    device : str or torch.device
        Where to put the network (``'cpu'``, ``'cuda'``, ...). Default ``'cpu'``.

    Returns
    -------
    TrainedModel
        The model, its network in evaluation mode on ``device``; its predictions equal those of
        the model that was exported.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ModelFileError
        (a ``ValueError``) If the file is not a bioimage.io model package, is a package that
        napari-unet did not export, or its record or weights cannot be read.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such model package: {p}")
    if p.is_dir() or not zipfile.is_zipfile(p):
        raise ModelFileError(f"{p} is not a bioimage.io model package (expected a .zip file)")
    descr = _description(p)
    record = _own_record(p, descr)
    state = _state_dict(p, descr)
    try:
        net = UNet(UNetConfig.from_dict(dict(record["config"])))
        net.load_state_dict(state, strict=True)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelFileError(f"{p} holds a network that cannot be rebuilt: {exc}") from exc
    gap, normalization = record["gap"], record["normalization"]
    if not isinstance(gap, int) or isinstance(gap, bool) or gap < 0:
        raise ModelFileError(f"{p}: gap must be a non-negative integer, got {gap!r}")
    if not isinstance(normalization, dict):
        raise ModelFileError(f"{p}: normalization must be a dictionary, got {normalization!r}")
    training = record.get("training") or {}
    net.eval()
    if device is not None:
        from napari_unet.core.device import select_device

        net.to(select_device(device))
    return TrainedModel(
        net=net, normalization=dict(normalization), gap=gap, training=dict(training)
    )


def load_model_or_package(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> TrainedModel:
    """Read a napari-unet model file (``.pt``), a package it exported (``.zip``) or a bundled model.

    Parameters
    ----------
    path : str or path-like
        The model file or package, or the name of a bundled model
        (:data:`~napari_unet.core.bundled_models.BUNDLED_MODELS`, e.g. ``'nuclei'``).
    device : str or torch.device
        Where to put the network. Default ``'cpu'``.

    Returns
    -------
    TrainedModel
        The model.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ModelFileError
        If the file is neither (see :func:`load_package` and
        :func:`~napari_unet.core.model_files.load_model`).
    """
    if is_bundled_model(path):
        return load_bundled_model(str(path), device)
    if is_package(path):
        return load_package(path, device)
    return load_model(path, device)
