"""``napari-unet export``: write a trained model as a bioimage.io model package (``.zip``).

The package (model spec 0.5) carries ``pytorch_state_dict``, ``torchscript`` and ``onnx`` weights,
the model's normalisation as preprocessing, test tensors cut from a real image, a cover,
documentation, the license and the U-Net citation (see :mod:`napari_unet.bioimageio.export`).
After writing it, the command runs ``bioimageio.core``'s model test on every weight format,
as ``bioimageio test`` does, unless ``--no-check``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

from napari_unet.cli import UsageError
from napari_unet.cli.options import (
    add_channel_layout,
    add_options,
    add_output,
    check_output_path,
)

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]


_EXTRA = "pip install 'napari-unet[bioimageio]'"


#: the line in ``napari-unet --help``
HELP = "write a trained model as a bioimage.io model package (.zip)"
DESCRIPTION = (
    "Write a trained model as a bioimage.io model package (spec 0.5) for bioimage.io, "
    "deepImageJ/Fiji, ilastik, QuPath and bioimageio.core: pytorch_state_dict, "
    "torchscript and onnx weights, the model's percentile normalisation as "
    "preprocessing, test tensors cut from a real image (the synthetic sample by "
    "default), a cover, documentation, license and citation. The package is then "
    "tested with bioimageio.core for every weight format (as `bioimageio test`)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``export`` arguments: the model, the package, its metadata and test image."""
    add_options(parser, _MODEL)
    add_output(parser, metavar="NAME.zip", help="package to write")
    add_options(parser, _METADATA)
    add_options(parser, _TEST_IMAGE)
    add_channel_layout(parser, default="as the model was trained")
    add_options(parser, _WEIGHTS)


#: the positional argument
_MODEL: dict[str, dict[str, Any]] = {
    "model": {
        "type": Path,
        "metavar": "MODEL",
        "help": "model file (.pt) or bundled model name (nuclei)",
    },
}
#: the package's metadata: each option is the keyword of ``export_package`` of the same name
_METADATA: dict[str, dict[str, Any]] = {
    "--name": {"help": "package name (default: 'napari-unet U-Net (PRESET)')"},
    "--description": {"help": "one or two sentences on what the model segments"},
    "--authors": {"nargs": "+", "metavar": "NAME", "help": "the people who made the model"},
    "--license": {
        "default": "CC-BY-4.0",
        "help": "license of the weights: CC-BY-4.0 or BSD-3-Clause (default: %(default)s)",
    },
}
_TEST_IMAGE: dict[str, dict[str, Any]] = {
    "--test-image": {
        "type": Path,
        "metavar": "IMAGE",
        "help": "image to cut the test input from (.tif, .png, .npy, .zarr; first slice of a "
        "stack); default: the synthetic sample",
    },
}
#: the weight formats and their test
_WEIGHTS: dict[str, dict[str, Any]] = {
    "--formats": {
        "nargs": "*",
        "metavar": "FORMAT",
        "help": "weight formats besides pytorch_state_dict (always written): torchscript, onnx "
        "(default: both; --formats alone: neither, a smaller package)",
    },
    "--no-check": {
        "dest": "check",
        "action": "store_false",
        "help": "do not run the bioimageio.core model test after writing",
    },
}


def _package_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of ``export_package`` the command line gives (all but model and path)."""
    options = {flag[2:]: getattr(args, flag[2:]) for flag in _METADATA}
    options.update(test_image=_test_image(args), channel_axis=args.channel_axis, rgb=args.rgb)
    if args.formats is not None:
        options["weight_formats"] = tuple(args.formats)
    return options


def _test_image(args: argparse.Namespace) -> Any:
    if args.test_image is None:
        return None
    from napari_unet.cli.files import read_image

    return read_image(args.test_image)  # a zarr stays lazy: only the test crop is read


def run(args: argparse.Namespace) -> int:
    """Write the package and check it.

    Parameters
    ----------
    args : argparse.Namespace
        The model file, ``--out`` package, its metadata (``--name``, ``--authors``, ...),
        ``--test-image`` and ``--formats`` / ``--no-check``.

    Returns
    -------
    int
        0 on success, 1 if the written package fails the bioimageio.core test.

    Raises
    ------
    ValueError, UsageError, FileNotFoundError
        On an unreadable model or test image, bad metadata or an unwritable output path.
    """
    if importlib.util.find_spec("bioimageio") is None or (
        importlib.util.find_spec("bioimageio.spec") is None
    ):
        raise UsageError(f"exporting needs the bioimage.io libraries: {_EXTRA}")
    from napari_unet.bioimageio import export_package, load_model_or_package

    check_output_path(args.out, "--out", (".zip",))
    started = time.perf_counter()
    model = load_model_or_package(args.model)
    path = export_package(model, args.out, **_package_options(args))
    print(f"wrote {path} in {time.perf_counter() - started:.1f} s")
    if not args.check:
        return 0
    if importlib.util.find_spec("bioimageio.core") is None:
        print(f"not tested: bioimageio.core is not installed ({_EXTRA})", file=sys.stderr)
        return 0
    from napari_unet.bioimageio.check import check_package

    result = check_package(path)
    formats = ", ".join(result.weight_formats)
    if result.passed:
        print(f"bioimageio test passed ({formats})")
        return 0
    print(f"bioimageio test FAILED ({formats}):", file=sys.stderr)
    for line in result.problems:
        print(f"  {line}", file=sys.stderr)
    return 1
