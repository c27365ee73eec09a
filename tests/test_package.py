"""Tests of the package itself: a light import and the console script."""

from __future__ import annotations

import json
import subprocess
import sys

import napari_unet


def test_import_is_light() -> None:
    """napari imports every plugin's manifest at start: no torch and no Qt on import."""
    code = (
        "import json, sys; import napari_unet; "
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in {'torch', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', "
        "'napari', 'magicgui'})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_version() -> None:
    assert napari_unet.__version__.count(".") == 2


def test_console_script_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "napari_unet.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for command in ("train", "predict", "weights", "demo"):
        assert command in out.stdout
