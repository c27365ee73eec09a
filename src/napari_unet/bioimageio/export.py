"""Export a trained model as a bioimage.io model package (model spec 0.5, ``bioimageio.spec``).

The package is how the model travels to other tools of the field (bioimage.io, deepImageJ/Fiji,
ilastik, QuPath, bioimageio.core). It holds, besides the description (``rdf.yaml``, built with
the spec's own classes):

- three weight formats of the same network: ``pytorch_state_dict`` (its architecture is one
  self-contained Python file shipped in the package, see
  :func:`~napari_unet.bioimageio.architecture.architecture_source`), ``torchscript`` and
  ``onnx``. Each returns the foreground probability ``1 - softmax(logits)[:, 0]``;
- the model's normalisation as preprocessing (``scale_range``: per image and channel, the
  model's low/high percentiles, 1 and 99.8 by default), the input sizes the network accepts
  (``min + n * step`` on the pooling grid) and the halo of the output;
- a test input cut from a real image and the output napari-unet computes for it, a cover
  image made of the two, documentation, the license and the citation of the U-Net paper;
- napari-unet's own record of the model in ``config['napari_unet']`` (configuration,
  normalisation, gap, training record), which
  :func:`~napari_unet.bioimageio.package_import.load_package` reads back.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from napari_unet import __version__
from napari_unet.core.atomic import atomic_path
from napari_unet.core.model import TrainedModel, UNetConfig, check_mode
from napari_unet.core.model_files import FORMAT, FORMAT_VERSION
from napari_unet.core.normalize import as_nchw, check_finite, normalize_image

from .architecture import ARCHITECTURE_CALLABLE, ForegroundUNet, architecture_source

if TYPE_CHECKING:
    from bioimageio.spec.model.v0_5 import InputTensorDescr, ModelDescr, OutputTensorDescr

__all__ = [
    "CONFIG_KEY",
    "LICENSES",
    "UNET_CITATION",
    "UNET_DOI",
    "WEIGHT_FORMATS",
    "default_package_name",
    "export_package",
    "package_test_input",
]

logger = logging.getLogger(__name__)

#: Key of napari-unet's own record in the package's ``config``.
CONFIG_KEY = "napari_unet"
#: Licenses an exported package may carry (SPDX identifiers).
LICENSES = ("CC-BY-4.0", "BSD-3-Clause")
UNET_DOI = "10.1007/978-3-319-24574-4_28"
UNET_CITATION = (
    "Ronneberger, O., Fischer, P., Brox, T. (2015). U-Net: Convolutional Networks for "
    "Biomedical Image Segmentation. MICCAI 2015, LNCS 9351, 234-241."
)
DEFAULT_DESCRIPTION = (
    "U-Net for cell segmentation trained with napari-unet; outputs the foreground probability."
)
ONNX_OPSET = 17
#: Weight formats written besides ``pytorch_state_dict`` by default.
WEIGHT_FORMATS = ("torchscript", "onnx")
#: Largest edge of the test input (the test image is cropped around its centre).
TEST_EDGE = 256
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")


def _settings(model: TrainedModel) -> dict[str, Any]:
    """The training settings stored with the model (empty when there are none)."""
    training = model.training if isinstance(model.training, dict) else {}
    settings = training.get("settings")
    return settings if isinstance(settings, dict) else {}


def default_package_name(model: TrainedModel) -> str:
    """A package name that says what the network is, e.g. ``'napari-unet U-Net (fast)'``.

    Parameters
    ----------
    model : TrainedModel
        The model to name; its training preset goes into the name.

    Returns
    -------
    str
        The name.
    """
    preset = str(_settings(model).get("preset", "") or "")
    preset = "".join(ch for ch in preset if ch in _NAME_CHARS).strip()
    return f"napari-unet U-Net ({preset})" if preset else "napari-unet U-Net"


def _size_rule(config: UNetConfig) -> tuple[int, int, int, int]:
    """``(min, step, halo, offset)`` of the package's spatial axes.

    Same padding: the output has the input's size and ``halo`` pixels per side are affected
    by the zero padding; the smallest input leaves one grid step once the halo is cropped.
    Valid padding: the network crops itself (``offset = -2 * halo``), no halo remains.
    """
    if config.padding == "same":
        return 2 * config.halo + config.grid, config.grid, config.halo, 0
    return config.admissible_size(1), config.grid, 0, -2 * config.halo


def _layout_defaults(
    model: TrainedModel, channel_axis: int | None, rgb: bool | None
) -> tuple[int | None, bool]:
    settings = _settings(model)
    if rgb is None:
        rgb = bool(settings.get("rgb", False)) and channel_axis is None
    if channel_axis is None and not rgb:
        channel_axis = settings.get("channel_axis")
    return channel_axis, bool(rgb)


def package_test_input(
    model: TrainedModel,
    image: Any = None,
    *,
    channel_axis: int | None = None,
    rgb: bool | None = None,
) -> np.ndarray:
    """Cut the package's test input from an image: float32 ``(1, C, Y, X)`` of admissible size.

    Parameters
    ----------
    model : TrainedModel
        The model the input is for.
    image : array-like, optional
        A 2D image (or the first slice of a stack; numpy or dask) in the layout the model was
        trained on; defaults to the synthetic sample
        :func:`napari_unet.sample_data.make_touching_cells` (single-channel models only).
    channel_axis : int, optional
        Axis of the channels; defaults to the model's training settings.
    rgb : bool, optional
        The last axis holds RGB(A) channels; defaults to the model's training settings.

    Returns
    -------
    numpy.ndarray
        The raw intensities (not normalised) of the largest centred crop whose edges are
        admissible package sizes, at most ``TEST_EDGE`` pixels (or the smallest size).

    Raises
    ------
    ValueError
        If the image does not have the model's channels or is smaller than the smallest input.
    """
    config = model.config
    if image is None:
        if config.in_channels != 1:
            raise ValueError(
                f"the model reads {config.in_channels} channels: give a test image in the "
                "layout it was trained on (the synthetic sample has one channel)"
            )
        from napari_unet.sample_data import make_touching_cells

        image = make_touching_cells()[0]
    if not hasattr(image, "shape"):
        image = np.asarray(image)
    channel_axis, rgb = _layout_defaults(model, channel_axis, rgb)
    nchw = as_nchw(image, channel_axis=channel_axis, rgb=rgb)  # lazy for dask arrays
    if nchw.shape[1] != config.in_channels:
        raise ValueError(
            f"the test image has {nchw.shape[1]} channel(s) (shape {np.shape(image)}), the "
            f"model reads {config.in_channels}"
        )
    min_size, step, _, _ = _size_rule(config)
    edges = []
    for n in nchw.shape[-2:]:
        if n < min_size:
            raise ValueError(
                f"the test image is {nchw.shape[-2]}x{nchw.shape[-1]} pixels; the network needs "
                f"at least {min_size}x{min_size}"
            )
        edges.append(min_size + (min(n, max(TEST_EDGE, min_size)) - min_size) // step * step)
    (h, w), (y0, x0) = edges, [(n - e) // 2 for n, e in zip(nchw.shape[-2:], edges, strict=True)]
    crop = np.asarray(nchw[:1, :, y0 : y0 + h, x0 : x0 + w])
    if not np.issubdtype(crop.dtype, np.number) and crop.dtype != bool:
        raise ValueError(f"expected a numeric test image, got dtype {crop.dtype}")
    check_finite(crop, "the test image")
    return np.ascontiguousarray(crop, dtype=np.float32)


def _write_files(
    model: TrainedModel,
    net: ForegroundUNet,
    test_input: np.ndarray,
    test_output: np.ndarray,
    folder: Path,
    meta: dict[str, Any],
) -> dict[str, Path]:
    """Write every file of the package into ``folder``; return their paths by role."""
    import tifffile

    files = _write_weights(net, _normalized(model, test_input), folder, meta["formats"])
    files.update(
        test_input=folder / "test_input.npy",
        test_output=folder / "test_output.npy",
        sample_input=folder / "sample_input.tif",
        sample_output=folder / "sample_output.tif",
        cover=folder / "cover.png",
        documentation=folder / "README.md",
    )
    np.save(files["test_input"], test_input)
    np.save(files["test_output"], test_output)
    tifffile.imwrite(files["sample_input"], test_input[0])
    tifffile.imwrite(files["sample_output"], test_output[0, 0])
    _write_cover(test_input, test_output, files["cover"])
    text = _documentation(model, meta["name"], meta["description"])
    files["documentation"].write_text(text, encoding="utf-8")
    return files


def _export_net(model: TrainedModel) -> ForegroundUNet:
    net = ForegroundUNet(**model.config.to_dict())
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.net.state_dict().items()}
    net.load_state_dict(state, strict=True)
    return net.eval()


def _normalized(model: TrainedModel, test_input: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(normalize_image(test_input[0], model.normalization)[None])


def _write_weights(
    net: ForegroundUNet, example: torch.Tensor, folder: Path, formats: tuple[str, ...]
) -> dict[str, Path]:
    """Write the architecture file and the weights in ``formats`` into ``folder``."""
    files = {
        "architecture": folder / "unet_architecture.py",
        "pytorch_state_dict": folder / "weights.pt",
    }
    files["architecture"].write_text(architecture_source(), encoding="utf-8")
    torch.save(net.state_dict(), files["pytorch_state_dict"])
    with warnings.catch_warnings(), torch.no_grad():
        # The legacy exporters warn that they are deprecated and that the shape test in
        # ``Up.forward`` is traced as a constant, which holds for every admissible size.
        warnings.simplefilter("ignore")
        if "torchscript" in formats:
            files["torchscript"] = folder / "weights_torchscript.pt"
            # check_trace=False: the bioimageio test runs the traced graph at several sizes.
            traced = torch.jit.trace(net, example, check_trace=False)
            torch.jit.save(traced, str(files["torchscript"]))
        if "onnx" in formats:
            files["onnx"] = folder / "weights.onnx"
            dynamic = {0: "batch", 2: "y", 3: "x"}
            torch.onnx.export(
                net,
                (example,),
                str(files["onnx"]),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["raw"],
                output_names=["probability"],
                dynamic_axes={"raw": dynamic, "probability": dynamic},
            )
    return files


def _write_cover(test_input: np.ndarray, test_output: np.ndarray, path: Path) -> None:
    """Cover image: the normalised test input beside its probability (2:1, PNG)."""
    import imageio.v3 as iio

    from napari_unet.core.normalize import percentile_range

    lo, hi = percentile_range(test_input[0])
    x = np.clip((test_input[0] - lo) / np.where(hi > lo, hi - lo, 1), 0, 1)
    x = x[:3].transpose(1, 2, 0) if x.shape[0] >= 3 else np.repeat(x[:1], 3, 0).transpose(1, 2, 0)
    prob = test_output[0, 0]
    h, w = prob.shape
    dy, dx = (x.shape[0] - h) // 2, (x.shape[1] - w) // 2
    x = x[dy : dy + h, dx : dx + w]  # valid padding: show the area the output covers
    magenta = np.stack([prob, np.zeros_like(prob), prob], axis=-1)
    cover = np.concatenate([x, np.clip(0.6 * x + magenta, 0, 1)], axis=1)
    zoom = max(1, -(-128 // h))  # small test images: at least 128 pixels high
    cover = cover.repeat(zoom, axis=0).repeat(zoom, axis=1)
    iio.imwrite(path, (cover * 255).round().astype(np.uint8))


def _tensor_descrs(
    model: TrainedModel, files: dict[str, Path], rgb: bool
) -> tuple[InputTensorDescr, OutputTensorDescr]:
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        BatchAxis,
        ChannelAxis,
        FileDescr,
        InputTensorDescr,
        IntervalOrRatioDataDescr,
        OutputTensorDescr,
        ParameterizedSize,
        ScaleRangeDescr,
        ScaleRangeKwargs,
        SizeReference,
        SpaceInputAxis,
        SpaceOutputAxis,
        SpaceOutputAxisWithHalo,
        TensorId,
    )

    config, norm = model.config, model.normalization
    min_size, step, halo, offset = _size_rule(config)
    n = config.in_channels
    names = ["red", "green", "blue", "alpha"][:n] if rgb and n in (3, 4) else None
    names = names or (["intensity"] if n == 1 else [f"channel{i}" for i in range(n)])
    raw, yx = TensorId("raw"), (AxisId("y"), AxisId("x"))
    inputs = InputTensorDescr(
        id=raw,
        description="image, any intensity range (normalised by the preprocessing)",
        axes=[
            BatchAxis(),
            ChannelAxis(channel_names=[AxisId(c) for c in names]),
            *(SpaceInputAxis(id=a, size=ParameterizedSize(min=min_size, step=step)) for a in yx),
        ],
        test_tensor=FileDescr(source=files["test_input"]),
        sample_tensor=FileDescr(source=files["sample_input"]),
        data=IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[
            ScaleRangeDescr(
                kwargs=ScaleRangeKwargs(
                    axes=list(yx), min_percentile=norm["low"], max_percentile=norm["high"]
                )
            )
        ],
    )
    out_axes: list[Any] = [
        SpaceOutputAxisWithHalo(id=a, halo=halo, size=SizeReference(tensor_id=raw, axis_id=a))
        if halo
        else SpaceOutputAxis(id=a, size=SizeReference(tensor_id=raw, axis_id=a, offset=offset))
        for a in yx
    ]
    outputs = OutputTensorDescr(
        id=TensorId("probability"),
        description="foreground probability, 1 - P(background)",
        axes=[BatchAxis(), ChannelAxis(channel_names=[AxisId("foreground")]), *out_axes],
        test_tensor=FileDescr(source=files["test_output"]),
        sample_tensor=FileDescr(source=files["sample_output"]),
        data=IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )
    return inputs, outputs


def _weights_descr(model: TrainedModel, files: dict[str, Path]) -> Any:
    from bioimageio.spec.model.v0_5 import (
        ArchitectureFromFileDescr,
        Identifier,
        OnnxWeightsDescr,
        PytorchStateDictWeightsDescr,
        TorchscriptWeightsDescr,
        Version,
        WeightsDescr,
    )

    torch_version = Version(torch.__version__.split("+")[0])
    weights: dict[str, Any] = {
        "pytorch_state_dict": PytorchStateDictWeightsDescr(
            source=files["pytorch_state_dict"],
            architecture=ArchitectureFromFileDescr(
                source=files["architecture"],
                callable=Identifier(ARCHITECTURE_CALLABLE),
                kwargs=model.config.to_dict(),
            ),
            pytorch_version=torch_version,
        )
    }
    if "torchscript" in files:
        weights["torchscript"] = TorchscriptWeightsDescr(
            source=files["torchscript"],
            pytorch_version=torch_version,
            parent="pytorch_state_dict",
        )
    if "onnx" in files:
        weights["onnx"] = OnnxWeightsDescr(
            source=files["onnx"], opset_version=ONNX_OPSET, parent="pytorch_state_dict"
        )
    return WeightsDescr(**weights)


def _plain(value: Any) -> Any:
    """``value`` as plain YAML-able values (numpy scalars and arrays, paths converted)."""

    def convert(item: Any) -> Any:
        if isinstance(item, np.generic | np.ndarray):
            return item.tolist()
        if isinstance(item, os.PathLike):
            return os.fspath(item)
        raise ValueError(
            f"the model's record holds a {type(item).__name__}; expected plain values (None, "
            "bool, int, float, str, list, dict)"
        )

    return json.loads(json.dumps(value, default=convert))


def _own_record(model: TrainedModel) -> dict[str, Any]:
    """napari-unet's record of the model (what a ``.pt`` model file holds besides weights)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "config": model.config.to_dict(),
        "normalization": _plain(dict(model.normalization)),
        "gap": int(model.gap),
        "training": _plain(dict(model.training)),
    }


def _documentation(model: TrainedModel, name: str, description: str) -> str:
    """The package's README.md."""
    config, norm = model.config, model.normalization
    min_size, step, halo, offset = _size_rule(config)
    summary = model.training.get("summary", {}) if isinstance(model.training, dict) else {}
    validation = summary.get("validation")
    if isinstance(validation, int | float):
        checked = (
            f"{summary.get('validation_metric', 'validation score')}: {validation:.3f} at "
            f"iteration {summary.get('best_iteration', '?')} of "
            f"{summary.get('iterations_done', '?')}."
        )
    else:
        checked = "No held-out validation was recorded for this model."
    geometry = (
        f"the output has the input's size; {halo} pixels on each side are affected by the zero "
        "padding (the halo), so overlapping tiles should crop them"
        if halo
        else f"valid convolutions: the output is {-offset} pixels smaller than the input per axis"
    )
    return f"""# {name}

{description}

A U-Net (Ronneberger et al., 2015) trained with
[napari-unet](https://github.com/napari-unet/napari-unet) {__version__}.

## Input and output
- Input `raw`: `(batch, channel, y, x)`, {config.in_channels} channel(s), any intensity range.
  Each image is normalised channel by channel: its percentile {norm["low"]:g} maps to 0 and
  its percentile {norm["high"]:g} to 1 (`scale_range` preprocessing), as in training.
- Sizes: `y` and `x` each `{min_size} + n * {step}` pixels (n = 0, 1, 2, ...); {geometry}.
- Output `probability`: `(batch, 1, y, x)` float32, the foreground probability
  `1 - softmax(logits)[background]`.

## Network
depth {config.depth}, {config.base_channels} base channels, {config.padding!r} padding,
batch norm: {config.batch_norm}, {config.n_classes} classes. napari-unet makes instances by
thresholding the probability (0.5 by default), labelling the connected components (cut apart
by a gap of {model.gap} pixel(s) learnt between touching cells) and growing them back.

## Validation
{checked} To validate on your own data, compare instance labels with a ground truth by average
precision at IoU 0.5 with one-to-one matching.

## Use
- napari-unet: `napari_unet.bioimageio.load_package("package.zip")` gives the model back with
  identical predictions, e.g. for `napari-unet predict`.
- Any bioimage.io consumer (bioimageio.core, deepImageJ, ilastik): `pytorch_state_dict`,
  `torchscript` and `onnx` weights.

## Citation
{UNET_CITATION} doi:{UNET_DOI}
"""


def _model_descr(
    model: TrainedModel,
    files: dict[str, Path],
    meta: dict[str, Any],
) -> ModelDescr:
    from bioimageio.spec.model.v0_5 import (
        Author,
        BioimageioConfig,
        CiteEntry,
        Config,
        Doi,
        FileDescr,
        LicenseId,
        ModelDescr,
    )

    inputs, outputs = _tensor_descrs(model, files, meta["rgb"])
    return ModelDescr(
        name=meta["name"],
        description=meta["description"],
        authors=[Author(name=a) for a in meta["authors"]],
        cite=[CiteEntry(text=UNET_CITATION, doi=Doi(UNET_DOI))],
        license=LicenseId(meta["license"]),
        documentation=FileDescr(source=files["documentation"]),
        covers=[FileDescr(source=files["cover"])],
        tags=["unet", "pytorch", "2d", "cells", "semantic-segmentation", "napari-unet"],
        inputs=[inputs],
        outputs=[outputs],
        weights=_weights_descr(model, files),
        config=Config(
            bioimageio=BioimageioConfig(
                architecture_type="U-Net",
                model_parameter_count=model.net.n_parameters,
            ),
            **{CONFIG_KEY: _own_record(model)},
        ),
    )


def _check_meta(meta: dict[str, Any]) -> None:
    name, authors, license = meta["name"], meta["authors"], meta["license"]
    bad = sorted(set(name) - _NAME_CHARS)
    if not 5 <= len(name) <= 128 or bad:
        raise ValueError(
            "the package name must be 5 to 128 letters, digits, spaces or _+-() characters, "
            f"got {name!r}" + (f" (not allowed: {''.join(bad)!r})" if bad else "")
        )
    if license not in LICENSES:
        raise ValueError(f"license must be one of {', '.join(LICENSES)}, got {license!r}")
    if not authors or any(not a.strip() or "/" in a for a in authors):
        raise ValueError(f"authors must be non-empty names without '/', got {authors!r}")
    if len(meta["description"]) > 1024:
        raise ValueError(
            f"the description must be at most 1024 characters, got {len(meta['description'])}"
        )
    unknown = sorted(set(meta["formats"]) - set(WEIGHT_FORMATS))
    if unknown:
        raise ValueError(
            f"weight formats must be among {', '.join(WEIGHT_FORMATS)} (pytorch_state_dict is "
            f"always written), got {', '.join(unknown)}"
        )


def _check_destination(model: TrainedModel, path: str | os.PathLike[str]) -> Path:
    if not isinstance(model, TrainedModel):
        raise ValueError(f"model must be a TrainedModel, got {type(model).__name__}")
    if getattr(model.config, "spatial_dims", 2) != 2:
        raise ValueError(
            f"only 2D models can be exported, got spatial_dims={model.config.spatial_dims}"
        )
    check_mode(model, "cells", "a bioimage.io package (foreground probability)")
    if model.normalization.get("method") != "percentile":
        raise ValueError(
            f"only percentile normalisation can be exported, got {model.normalization!r}"
        )
    dest = Path(path)
    if dest.suffix.lower() != ".zip":
        raise ValueError(f"a bioimage.io package is a .zip file, got {dest.name!r}")
    if not dest.parent.is_dir():
        raise FileNotFoundError(f"folder does not exist: {dest.parent}")
    return dest


def _net_and_output(model: TrainedModel, test_input: np.ndarray) -> tuple[Any, np.ndarray]:
    """The network the package describes, and its output for the test input."""
    net = _export_net(model)
    with torch.no_grad():
        return net, net(_normalized(model, test_input)).numpy()


def export_package(
    model: TrainedModel,
    path: str | os.PathLike[str],
    *,
    test_image: Any = None,
    name: str | None = None,
    description: str | None = None,
    authors: list[str] | None = None,
    license: str = "CC-BY-4.0",
    channel_axis: int | None = None,
    rgb: bool | None = None,
    weight_formats: tuple[str, ...] = WEIGHT_FORMATS,
) -> Path:
    """Write a trained model as a bioimage.io model package (a ``.zip``), atomically.

    The package is validated by ``bioimageio.spec`` when it is written; run
    ``bioimageio test PACKAGE.zip`` (``bioimageio.core``) to check that every weight format
    reproduces the test output.

    Parameters
    ----------
    model : TrainedModel
        The model (a 2D U-Net with percentile normalisation).
    path : str or path-like
        Destination ``.zip``; its folder must exist.
    test_image : array-like, optional
        The image the test input is cut from (see :func:`package_test_input`); defaults to the
        synthetic sample.
    name : str, optional
        Package name (5 to 128 letters, digits, spaces, ``_+-()``); see
        :func:`default_package_name`.
    description : str, optional
        One or two sentences on what the model segments.
    authors : list of str, optional
        The people who made the model; defaults to ``['napari-unet user']``.
    license : {'CC-BY-4.0', 'BSD-3-Clause'}
        License of the weights.
    channel_axis : int, optional
        Channel axis of ``test_image``; defaults to the model's training settings.
    rgb : bool, optional
        ``test_image`` is RGB(A) ``(Y, X, 3|4)``; defaults to the model's training settings.
    weight_formats : tuple of str
        Weight formats to write besides ``pytorch_state_dict`` (always written: napari-unet
        reads it back): any of ``'torchscript'``, ``'onnx'``; default both.

    Returns
    -------
    pathlib.Path
        The written package.

    Raises
    ------
    ValueError
        On a model that is not a :class:`TrainedModel` with percentile normalisation, a path
        that does not end in ``.zip``, an unsuitable test image or invalid metadata.
    FileNotFoundError
        If the destination folder does not exist.
    """
    from bioimageio.spec import save_bioimageio_package

    dest = _check_destination(model, path)
    meta = {
        "name": name or default_package_name(model),
        "description": description or DEFAULT_DESCRIPTION,
        "authors": list(authors or ["napari-unet user"]),
        "license": license,
        "rgb": _layout_defaults(model, channel_axis, rgb)[1],
        "formats": (weight_formats,) if isinstance(weight_formats, str) else tuple(weight_formats),
    }
    _check_meta(meta)
    test_input = package_test_input(model, test_image, channel_axis=channel_axis, rgb=rgb)
    net, test_output = _net_and_output(model, test_input)
    with tempfile.TemporaryDirectory(prefix="napari-unet-package-") as tmp:
        files = _write_files(model, net, test_input, test_output, Path(tmp), meta)
        descr = _model_descr(model, files, meta)
        with atomic_path(dest) as out:
            save_bioimageio_package(descr, output_path=out)
    logger.info("wrote bioimage.io package %s", dest)
    return dest
