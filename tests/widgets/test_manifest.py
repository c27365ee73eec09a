"""The npe2 manifest: valid, and every contribution resolves to what it names."""

from __future__ import annotations

import importlib
import subprocess
import sys

import npe2


def _manifest() -> npe2.PluginManifest:
    return npe2.PluginManifest.from_distribution("napari-unet-trainer")


def test_npe2_validate_with_imports() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "--imports", "napari-unet-trainer"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_widgets_and_sample_are_contributed() -> None:
    manifest = _manifest()
    widgets = {w.display_name: w.command for w in manifest.contributions.widgets}
    assert widgets == {
        "Train": "napari-unet-trainer.train",
        "Border weights": "napari-unet-trainer.border_weights",
        "Segment": "napari-unet-trainer.segment",
    }
    samples = [s.key for s in manifest.contributions.sample_data]
    assert samples == ["touching_cells", "touching_nuclei_3d", "cell_classes"]


def test_every_command_resolves() -> None:
    from napari_unet.widgets.border_weights import BorderWeightsWidget
    from napari_unet.widgets.segment import SegmentWidget
    from napari_unet.widgets.train import TrainWidget

    expected = {
        "napari-unet-trainer.train": TrainWidget,
        "napari-unet-trainer.border_weights": BorderWeightsWidget,
        "napari-unet-trainer.segment": SegmentWidget,
    }
    for command in _manifest().contributions.commands:
        module_name, _, attr = command.python_name.partition(":")
        obj = getattr(importlib.import_module(module_name), attr)
        assert callable(obj)
        if command.id in expected:
            assert obj is expected[command.id]
