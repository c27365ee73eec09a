"""Option blocks shared by the sub-commands, defined once.

:func:`napari_unet.cli.build_parser` makes each sub-command's parser with :func:`add_command`;
the sub-command's ``add_arguments`` adds the blocks it needs:
:func:`add_device`, :func:`add_channel_layout` (``--channel-axis`` / ``--rgb``),
:func:`add_preset`, :func:`add_output`, :func:`add_volume` (``--ndim`` / ``--scale``);
:func:`add_options` adds a command's own options from a table.
:func:`add_dataclass_options` turns the fields of a settings dataclass (e.g.
:class:`~napari_unet.core.training.TrainSettings`) into options, with help from the class
docstring and choices and extra spellings from the fields' metadata; :func:`given_fields` reads
them back.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "add_channel_layout",
    "add_command",
    "add_dataclass_options",
    "add_device",
    "add_options",
    "add_output",
    "add_preset",
    "add_volume",
    "check_output_path",
    "field_docs",
    "given_fields",
    "volume_sampling",
]


def add_command(
    subparsers: Any, name: str, *, help: str, description: str
) -> argparse.ArgumentParser:
    """Add a sub-command and return its parser.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The command line's sub-parsers.
    name : str
        The sub-command, e.g. ``'train'``.
    help : str
        One line for ``napari-unet --help``.
    description : str
        The paragraph at the top of ``napari-unet NAME --help``.

    Returns
    -------
    argparse.ArgumentParser
        The sub-command's parser.
    """
    return subparsers.add_parser(name, help=help, description=description)


def add_options(parser: argparse.ArgumentParser, options: dict[str, dict[str, Any]]) -> None:
    """Add options (or positional arguments) from a table, in its order.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        Where to add them.
    options : dict of str to dict
        Flag (``'--tile'``) or positional name -> the keywords of
        :meth:`argparse.ArgumentParser.add_argument` (``type``, ``metavar``, ``help``, ...).
    """
    for flag, keywords in options.items():
        parser.add_argument(flag, **keywords)


def add_device(parser: argparse.ArgumentParser, *, what: str = "") -> None:
    """``--device`` (default ``auto``).

    Parameters
    ----------
    parser : argparse.ArgumentParser
        Where to add it.
    what : str
        What the device is for, e.g. ``'for --run'`` (shown in the help).
    """
    where = f"device {what}: " if what else ""
    parser.add_argument(
        "--device", default="auto", help=f"{where}auto, cpu, cuda, cuda:N or mps (default: auto)"
    )


def add_channel_layout(parser: argparse.ArgumentParser, *, default: str | None = None) -> None:
    """``--channel-axis AXIS`` and ``--rgb``: where an image keeps its channels.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        Where to add them; they arrive as ``args.channel_axis`` (int or None) and ``args.rgb``.
    default : str, optional
        Where an image's channels are when neither option is given, in words for the help
        (e.g. ``'as the model was trained'``); ``args.rgb`` is then None without ``--rgb``.
        None: one channel, and ``args.rgb`` is False without ``--rgb``.
    """
    unless = "" if default is None else f" (default: {default})"
    parser.add_argument(
        "--channel-axis",
        type=int,
        metavar="AXIS",
        help=f"axis of the channels in a multichannel image (e.g. 0 for (C, Y, X)){unless}",
    )
    parser.add_argument(
        "--rgb",
        action="store_true",
        default=None if default else False,
        help=f"the last axis holds RGB(A) colour channels{unless}",
    )


def add_preset(parser: argparse.ArgumentParser) -> None:
    """``--preset {fast,paper}`` (default ``fast``): the network and its training settings.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        Where to add it.
    """
    parser.add_argument(
        "--preset",
        choices=["fast", "paper"],
        default="fast",
        help="fast: small net, Adam (default); paper: Ronneberger et al. 2015, SGD momentum "
        "0.99, 572 px tiles",
    )


def add_output(
    parser: argparse.ArgumentParser, *, metavar: str, help: str, required: bool = True
) -> None:
    """``--out`` / ``-o PATH``: where the result goes.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        Where to add it.
    metavar : str
        The placeholder in the help, e.g. ``'LABELS'``.
    help : str
        What is written there.
    required : bool
        Whether the option must be given.
    """
    parser.add_argument("--out", "-o", type=Path, required=required, metavar=metavar, help=help)


def check_output_path(
    path: str | Path, option: str, suffixes: Iterable[str] = (), *, hint: str = ""
) -> Path:
    """Check a file the command is to write: its suffix, that it is no folder, that its folder
    exists (nothing is written here).

    Parameters
    ----------
    path : str or path-like
        The output file.
    option : str
        The option that named it, e.g. ``'--out'`` (used in the messages).
    suffixes : iterable of str
        The suffixes accepted (lower case, with the dot); empty: any.
    hint : str
        Added after the list of suffixes in the message, e.g. ``' (or name a folder ...)'``.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    UsageError
        If the suffix is not accepted, or ``path`` is a folder.
    FileNotFoundError
        If the folder ``path`` is to be written into does not exist.
    """
    from napari_unet.cli import UsageError

    path, suffixes = Path(path), tuple(suffixes)
    if suffixes and path.suffix.lower() not in suffixes:
        raise UsageError(f"{option} must end in {', '.join(suffixes)}{hint}, got {path.name!r}")
    if path.is_dir() and path.suffix.lower() != ".zarr":
        raise UsageError(f"{option} must be a file name, got a folder: {path}")
    if not path.resolve().parent.is_dir():
        raise FileNotFoundError(
            f"folder for {option} does not exist: {path.resolve().parent} (the folder does not "
            "exist yet: create it first)"
        )
    return path


def add_volume(parser: argparse.ArgumentParser, *, what: str) -> None:
    """``--ndim {2,3}`` and ``--scale Z Y X``: a stack of 2D slices or a volume, and its voxel size.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        Where to add them; they arrive as ``args.ndim`` (2, 3 or None) and ``args.scale``
        (a list of floats or None). Read them back with :func:`volume_sampling`.
    what : str
        What a ``(Z, Y, X)`` array is treated as with ``--ndim 2``, e.g. ``'weighted slice by
        slice'`` (shown in the help).
    """
    parser.add_argument(
        "--ndim",
        type=int,
        choices=[2, 3],
        default=None,
        help=f"3: a (Z, Y, X) array is one volume; 2: it is a stack of 2D slices, {what} "
        "(default: 3 when --scale has three values, else 2)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        nargs="+",
        metavar="S",
        help="voxel size, one spacing per axis (Z Y X for a volume, e.g. 2 0.5 0.5, as a napari "
        "layer's scale); distances are measured in it (default: the pixel size an OME-Zarr "
        "file states, else 1 per axis)",
    )


def volume_sampling(args: argparse.Namespace) -> tuple[int, tuple[float, ...] | None]:
    """The dimensions and voxel size asked for by ``--ndim`` and ``--scale``.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments of a command with :func:`add_volume`.

    Returns
    -------
    ndim : int
        2 or 3: ``--ndim``, else the length of ``--scale``, else 2.
    sampling : tuple of float or None
        The checked ``--scale``; None when not given.

    Raises
    ------
    ValueError
        If ``--scale`` does not have ``ndim`` values or holds a value that is not > 0.
    """
    from napari_unet.core.voxels import check_voxel_size

    scale = getattr(args, "scale", None)
    ndim = args.ndim or (len(scale) if scale is not None and len(scale) in (2, 3) else 2)
    return ndim, check_voxel_size(scale, ndim, name="--scale")


def field_docs(cls: type) -> dict[str, str]:
    """The description of every documented parameter of ``cls`` (numpydoc), as one line.

    Entries that document several names (``w0, sigma : float``) give each name the text.

    Parameters
    ----------
    cls : type
        A class (or function) with a numpydoc docstring.

    Returns
    -------
    dict of str to str
        Name -> description, double backticks removed.
    """
    from docstring_parser import parse

    docs: dict[str, str] = {}
    for param in parse(cls.__doc__ or "").params:
        text = " ".join((param.description or "").split()).replace("``", "")
        for name in param.arg_name.split(","):
            docs[name.strip()] = text
    return docs


_METAVARS = {int: "N", float: "X", str: "TEXT"}


def _plain_type(annotation: Any) -> Any:
    """``int | None`` -> ``int``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        return kinds[0] if len(kinds) == 1 else str
    return annotation


def add_dataclass_options(
    parser: argparse.ArgumentParser | Any,
    cls: type,
    *,
    skip: Iterable[str] = (),
    only: Iterable[str] | None = None,
    defaults: dict[str, str] | None = None,
) -> None:
    """An option for each field of the dataclass ``cls``: ``--field-name`` and its metadata's
    ``flags``; booleans as ``--name`` / ``--no-name``.

    Every option defaults to ``None`` (not given), so that :func:`given_fields` returns only what
    was typed and the settings' own defaults (or a preset's) apply to the rest.

    Parameters
    ----------
    parser : argparse.ArgumentParser or argument group
        Where to add the options.
    cls : type
        A dataclass; help comes from its docstring, ``choices`` and ``flags`` from field metadata.
    skip : iterable of str
        Fields not to add (those with an option block of their own).
    only : iterable of str, optional
        Add only these fields.
    defaults : dict of str to str, optional
        Default shown in the help per field, where it is not the field's own default.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    skipped = set(skip)
    wanted = None if only is None else set(only)
    for f in dataclasses.fields(cls):
        if f.name in skipped or (wanted is not None and f.name not in wanted):
            continue
        kind = _plain_type(hints[f.name])
        default = (defaults or {}).get(f.name, f.default)
        options: dict[str, Any] = {"default": None, "dest": f.name}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = kind
            options["metavar"] = _METAVARS.get(kind, "VALUE")
        if "choices" in f.metadata:
            options["choices"] = list(f.metadata["choices"])
            options.pop("metavar", None)
        shown = "none" if default is None else default
        options["help"] = f"{docs.get(f.name, '')} (default: {shown})".strip()
        flags = [f"--{f.name.replace('_', '-')}", *f.metadata.get("flags", ())]
        parser.add_argument(*flags, **options)


def given_fields(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of the dataclass ``cls`` that were given on the command line.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments from a parser with :func:`add_dataclass_options`.
    cls : type
        The dataclass.

    Returns
    -------
    dict
        Field name -> value, for the options that are not ``None``.
    """
    names = (f.name for f in dataclasses.fields(cls))
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
