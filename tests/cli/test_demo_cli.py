"""``napari-unet demo``: arguments, and the demo itself in a real viewer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from napari_unet.cli import main
from napari_unet.cli.demo import Demo

TINY = {"patch_size": 32, "batch_size": 2, "seed": 0, "validation_fraction": 0.0}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--screenshot", "/no/such/folder/shot.png"], "does not exist"),
        (["--screenshot", "shot.gif"], "expected a file name ending in"),
        (["--iterations", "0"], "--iterations must be at least 1"),
    ],
)
def test_bad_arguments_exit_2(args: list[str], words: str, capsys: Any) -> None:
    assert main(["demo", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-unet demo: error:") and words in err


def test_help_names_the_options(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--run" in out and "--screenshot" in out


def _png(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    return iio.imread(path)


def test_demo_docks_the_widgets_and_saves_a_screenshot(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    codes: list[int] = []
    shot = tmp_path / "demo.png"
    demo = Demo(viewer, screenshot=shot, on_done=codes.append)
    demo.start()
    qtbot.waitUntil(lambda: codes != [], timeout=30_000)
    assert codes == [0]
    assert [layer.name for layer in viewer.layers] == ["touching cells", "ground truth"]
    assert set(demo.widgets) == {"Train", "Border weights", "Segment"}
    assert demo.widgets["Train"].annotation_layer.value.name == "ground truth"
    image = _png(shot)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200


def test_demo_run_trains_and_segments(make_napari_viewer, qtbot, tmp_path) -> None:
    viewer = make_napari_viewer()
    codes: list[int] = []
    shot = tmp_path / "run.png"
    demo = Demo(
        viewer, run=True, iterations=2, device="cpu", settings=TINY, screenshot=shot,
        on_done=codes.append,
    )  # fmt: skip
    demo.start()
    qtbot.waitUntil(lambda: codes != [], timeout=120_000)
    assert codes == [0]
    result = viewer.layers["touching cells segmentation"]
    assert result.data.shape == viewer.layers["touching cells"].data.shape
    assert not viewer.layers["ground truth"].visible
    assert "ground truth border weights" in viewer.layers
    assert demo.widgets["Train"].model is not None
    assert shot.is_file()


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display (Xvfb)")
def test_command_line_screenshot_and_exit(tmp_path: Path) -> None:
    """The real command: napari opens, the screenshot is saved, the process ends with 0."""
    shot = tmp_path / "cli.png"
    out = subprocess.run(
        [sys.executable, "-m", "napari_unet.cli", "demo", "--screenshot", str(shot)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert _png(shot).shape[-1] in (3, 4)
