"""``napari-unet``'s error handling: one line on stderr and an exit code, never a traceback."""

from __future__ import annotations

import sys
import types

import pytest

from napari_unet import cli
from napari_unet.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, error_line, main


@pytest.fixture
def failing(monkeypatch):
    """A sub-command ``fail`` that raises the exception put in ``failing.error``."""
    module = types.ModuleType("napari_unet.cli.fail")
    module.HELP = "fail on purpose"
    module.DESCRIPTION = "Fail on purpose."
    module.error = None

    def run(_args):
        raise module.error

    module.add_arguments, module.run = lambda parser: None, run
    monkeypatch.setitem(sys.modules, "napari_unet.cli.fail", module)
    monkeypatch.setattr(cli, "COMMANDS", {"fail": "fail"})
    return module


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (
            RuntimeError("training diverged at iteration 3 (loss nan); lower the learning rate"),
            EXIT_FAILED,
            "training diverged at iteration 3 (loss nan); lower the learning rate",
        ),
        (MemoryError(), EXIT_FAILED, "out of memory (MemoryError); try a smaller --tile"),
        (OSError(28, "No space left on device"), EXIT_FAILED, "[Errno 28] No space left"),
        (RuntimeError("CUDA error: device-side assert\nmore\nlines"), EXIT_FAILED, "CUDA error"),
        (ValueError("the image is constant"), EXIT_BAD_INPUT, "the image is constant"),
        (FileNotFoundError("no such file: a.tif"), EXIT_BAD_INPUT, "no such file: a.tif"),
        (cli.UsageError("--tile must be positive"), EXIT_BAD_INPUT, "--tile must be positive"),
    ],
)
def test_errors_are_one_line(failing, capsys, error, code, line):
    failing.error = error
    assert main(["fail"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"napari-unet fail: error: {line}")


def test_verbose_shows_the_traceback_first(failing, capsys):
    failing.error = RuntimeError("boom")
    assert main(["-v", "fail"]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("napari-unet fail: error: boom")


def test_interrupt(failing, capsys):
    failing.error = KeyboardInterrupt()
    assert main(["fail"]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "napari-unet fail: interrupted\n"


def test_error_line():
    assert error_line(RuntimeError("")) == "RuntimeError"
    assert error_line(MemoryError("CPU: 2 GiB")).startswith("out of memory: CPU: 2 GiB;")


def test_warnings_are_one_plain_line_each(failing, capsys):
    """A warning core both logs and warns (SplitLabelsWarning) is written once, as one line."""
    import logging
    import warnings

    from napari_unet.core.targets import SplitLabelsWarning
    from napari_unet.core.training import NoValidationWarning

    def run(_args):
        split = SplitLabelsWarning(2, 5)
        logging.getLogger("napari_unet.core.training.data").warning("%s", split)
        warnings.warn(split, stacklevel=2)
        warnings.warn(NoValidationWarning(0.2, 32), stacklevel=2)
        logging.getLogger("napari_unet.cli.train").info("not shown without --verbose")
        return 0

    failing.run = run
    before = warnings.showwarning
    assert main(["fail"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "warning: 2 label values painted on several separate cells were split into 5 cells "
        "(one label per connected region); paint each cell with its own label to silence this",
        f"warning: {NoValidationWarning(0.2, 32)}",
    ]
    assert not any(isinstance(h, cli.WarningLines) for h in logging.getLogger().handlers)
    assert warnings.showwarning is before  # both restored after main
