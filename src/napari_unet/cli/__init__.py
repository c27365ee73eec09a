"""The ``napari-unet`` command line: ``train``, ``predict``, ``weights``, ``export`` and ``demo``.

Each sub-command lives in a module of this package that defines ``HELP`` (its line in
``napari-unet --help``), ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> int``;
:func:`build_parser` makes the sub-parser (:func:`~napari_unet.cli.options.add_command`). Only the
command that runs gets its arguments (they may import torch), so ``napari-unet --help`` stays
quick.

Every error ends with one line on stderr (``napari-unet COMMAND: error: ...``; with ``--verbose``
the traceback comes first) and an exit code:

- 0: success;
- 1: the work failed while running: a ``RuntimeError`` (e.g. a loss that became NaN), out of
  memory, an ``OSError`` such as a full disk; and ``predict`` on several inputs when any of them
  failed (each failure had its own line);
- 2: bad input: unreadable or unsuitable files, options that cannot work (``ValueError``,
  :class:`UsageError`, a missing file);
- 130: interrupted (Ctrl-C).

Warnings (a core ``UserWarning`` such as
:class:`~napari_unet.core.targets.SplitLabelsWarning` or
:class:`~napari_unet.core.training.NoValidationWarning`, or a logged warning) reach the user as
one plain line on stderr, ``warning: ...``, each message once (:class:`WarningLines`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from napari_unet import __version__
from napari_unet.cli.options import add_command

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "UsageError",
    "WarningLines",
    "error_line",
    "main",
    "warning_lines",
]

#: exit code for a failure while running (RuntimeError, MemoryError, OSError)
EXIT_FAILED = 1
#: exit code for bad input (unreadable files, options that cannot work)
EXIT_BAD_INPUT = 2
#: exit code after Ctrl-C
EXIT_INTERRUPTED = 130

#: sub-command name -> module in this package
COMMANDS: dict[str, str] = {
    "train": "train",
    "predict": "predict",
    "weights": "weights",
    "export": "export",
    "demo": "demo",
}


class UsageError(Exception):
    """An error in what the user asked for: reported in one line, exit code 2."""


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Build the argument parser.

    Only the sub-command named in ``argv`` gets its options (building them may import torch);
    the others get their one-line help (the module's ``HELP``), so that ``napari-unet --help``
    stays quick.

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
            command = add_command(sub, name, help=module.HELP, description=module.DESCRIPTION)
            module.add_arguments(command)
            command.set_defaults(module=module)
        else:
            sub.add_parser(name, help=module.HELP)
    return parser


def error_line(exc: BaseException) -> str:
    """One line that says what went wrong, for stderr.

    Parameters
    ----------
    exc : BaseException
        The error.

    Returns
    -------
    str
        The first line of its message (the project's errors are written for users); an error
        without a message is named, and running out of memory says what to try.

    Examples
    --------
    >>> error_line(RuntimeError("loss became NaN at iteration 12\\nmore detail"))
    'loss became NaN at iteration 12'
    >>> error_line(MemoryError())
    'out of memory (MemoryError); try a smaller --tile, --batch or image'
    """
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    if isinstance(exc, MemoryError):
        detail = f": {text}" if text else " (MemoryError)"
        return f"out of memory{detail}; try a smaller --tile, --batch or image"
    return text or type(exc).__name__


class WarningLines(logging.Handler):
    """Writes warnings as one plain line on stderr, ``warning: MESSAGE``, each message once.

    As a logging handler it writes log records of level ``WARNING`` this way and the others as
    ``LEVEL logger: message`` (with the traceback of a logged exception); :meth:`show` is a
    drop-in for :func:`warnings.showwarning`. A warning that core both logs and warns (the same
    text) is written once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.seen: set[str] = set()

    def line(self, message: object) -> None:
        """Write ``warning: MESSAGE`` (white space folded into one line) unless written already.

        Parameters
        ----------
        message : object
            The warning or its text.
        """
        text = " ".join(str(message).split())
        if text not in self.seen:
            self.seen.add(text)
            print(f"warning: {text}", file=sys.stderr)

    def show(self, message: Warning | str, *_args: Any, **_kwargs: Any) -> None:
        """Write a Python warning (the signature of :func:`warnings.showwarning`).

        Parameters
        ----------
        message : Warning or str
            The warning; where it was raised is not shown.
        *_args, **_kwargs
            Category, file name, line number, ...: ignored.
        """
        self.line(message)

    def emit(self, record: logging.LogRecord) -> None:
        """Write a log record (see :class:`logging.Handler`).

        Parameters
        ----------
        record : logging.LogRecord
            The record.
        """
        if record.levelno == logging.WARNING:
            self.line(record.getMessage())
        else:
            print(self.format(record), file=sys.stderr)


@contextlib.contextmanager
def warning_lines(verbose: bool = False) -> Iterator[WarningLines]:
    """Within the block, log records and Python warnings go to stderr through
    :class:`WarningLines` (the root logger at ``INFO`` with ``verbose``, else ``WARNING``).

    Parameters
    ----------
    verbose : bool
        Whether ``INFO`` records are written too.

    Yields
    ------
    WarningLines
        The handler; logging and warnings are as before after the block.
    """
    handler = WarningLines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        with warnings.catch_warnings():  # the filters stay as they are
            warnings.showwarning = handler.show
            yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; defaults to ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit code: 0 on success, :data:`EXIT_FAILED` (1) when the work failed while running,
        :data:`EXIT_BAD_INPUT` (2) on bad input, :data:`EXIT_INTERRUPTED` (130) when
        interrupted.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        with warning_lines(args.verbose):
            return int(args.module.run(args) or 0)
    except (UsageError, ValueError, FileNotFoundError, IsADirectoryError) as exc:
        code = EXIT_BAD_INPUT
        error = exc
    except (RuntimeError, MemoryError, OSError) as exc:
        code = EXIT_FAILED
        error = exc
    except KeyboardInterrupt:
        print(f"napari-unet {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.verbose:
        traceback.print_exception(error, file=sys.stderr)
    print(f"napari-unet {args.command}: error: {error_line(error)}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
