"""The ``napari-unet`` command line: ``train``, ``predict``, ``weights`` and ``demo``.

Each sub-command lives in a module of this package that defines ``add_parser(subparsers)`` and
``run(args) -> int``. Modules are imported only when their command runs, so ``napari-unet --help``
stays quick. Errors in the user's input end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from napari_unet import __version__

__all__ = ["UsageError", "main"]

#: sub-command name -> module in this package
COMMANDS: dict[str, str] = {
    "train": "train",
    "predict": "predict",
    "weights": "weights",
    "demo": "demo",
}


class UsageError(Exception):
    """An error in what the user asked for: reported in one line, exit code 2."""


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Build the argument parser.

    Only the sub-command named in ``argv`` gets its options (building them may import torch);
    the others get their one-line help (the module's ``HELP``, else the first line of its
    docstring), so that ``napari-unet --help`` stays quick.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments to be parsed; ``None``: build every sub-command in full.

    Returns
    -------
    argparse.ArgumentParser
        The parser; each full sub-command sets ``args.module``.
    """
    parser = argparse.ArgumentParser(
        prog="napari-unet",
        description="Train and run U-Nets for cell segmentation (napari plugin and command line).",
    )
    parser.add_argument("--version", action="version", version=f"napari-unet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"{__name__}.{module_name}")
        if chosen is None or chosen == name:
            module.add_parser(sub)
            sub.choices[name].set_defaults(module=module)
        else:
            summary = (module.__doc__ or "").strip().splitlines()[0]
            help_ = getattr(module, "HELP", summary.split(": ", 1)[-1].rstrip("."))
            sub.add_parser(name, help=help_)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; defaults to ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit code: 0 on success, 1 on an unexpected failure, 2 on bad input, 130 when
        interrupted.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.module.run(args) or 0)
    except (UsageError, ValueError, FileNotFoundError, IsADirectoryError) as exc:
        print(f"napari-unet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-unet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
