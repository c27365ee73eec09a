"""Fixtures for the widget tests: a viewer with the plugin's widgets, small data, tiny models.

The tests drive the widgets as a user would, in a real napari viewer under a virtual display
(pytest-xvfb), and wait for workers with ``qtbot.waitUntil``. Training uses tiny networks
(depth 2, 4 base channels) through the fine-tuning path, since ``TrainSettings`` has no knob
that shrinks a new network; one test trains the ``fast`` preset for a few iterations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from napari_unet.sample_data import make_touching_cells

#: TrainSettings for tests: tiny patches, few iterations, CPU, seeded
TINY = {"patch_size": 32, "batch_size": 2, "device": "cpu", "seed": 0}


@dataclass
class Notes:
    """The napari notifications shown since the fixture started."""

    start: int

    @property
    def records(self) -> list[Any]:
        from napari.utils.notifications import notification_manager

        return list(notification_manager.records[self.start :])

    def messages(self, severity: str | None = None) -> list[str]:
        """Messages, optionally of one severity ('error', 'warning', 'info')."""
        return [
            str(n.message)
            for n in self.records
            if severity is None or str(n.severity).lower().endswith(severity)
        ]

    def uncaught(self) -> list[Any]:
        """Notifications made from exceptions that escaped (there must be none)."""
        from napari.utils.notifications import ErrorNotification

        return [n for n in self.records if isinstance(n, ErrorNotification)]


@pytest.fixture
def notes() -> Notes:
    """Capture napari notifications (show_error/show_warning/show_info)."""
    from napari.utils.notifications import notification_manager

    notes = Notes(len(notification_manager.records))
    yield notes
    assert notes.uncaught() == []


@pytest.fixture(scope="session")
def cells() -> tuple[np.ndarray, np.ndarray]:
    """A 96 x 96 image of touching cells and its ground truth."""
    return make_touching_cells((96, 96), n_cells=10, seed=3)


@pytest.fixture
def viewer(make_napari_viewer: Any) -> Any:
    """A napari viewer."""
    return make_napari_viewer()


@pytest.fixture
def dock(viewer: Any) -> Any:
    """``dock(name)``: open a widget from the npe2 manifest, as Plugins > U-Net does."""

    def open_widget(name: str) -> Any:
        _, widget = viewer.window.add_plugin_dock_widget("napari-unet-trainer", name)
        return widget

    return open_widget


@pytest.fixture
def wait_idle(qtbot: Any) -> Any:
    """``wait_idle(widget)``: wait until the widget's work has finished."""

    def wait(widget: Any, timeout: int = 60_000) -> None:
        qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)

    return wait


@pytest.fixture
def threshold_model() -> Any:
    """Factory of hand-set U-Nets that segment by intensity: ``threshold_model(in_channels)``.

    Every weight is 0 except one path that carries the mean of the (normalised) channels
    through the first level and the last skip connection to the head, which outputs
    ``20 * (x - 0.25)`` as the foreground logit. The foreground probability is thus a sharp
    sigmoid of the intensity: bright cells come out as objects without any training, so tests
    get a non-trivial, deterministic segmentation in milliseconds.
    """
    import torch

    from napari_unet.core.model import TrainedModel, UNet, UNetConfig

    def make(in_channels: int = 1) -> Any:
        net = UNet(UNetConfig(in_channels=in_channels, depth=2, base_channels=4, batch_norm=False))
        with torch.no_grad():
            for p in net.parameters():
                p.zero_()
            first, second = net.inc[0], net.inc[2]
            first.weight[0, :, 1, 1] = 1.0 / in_channels
            second.weight[0, 0, 1, 1] = 1.0
            last = net.ups[-1].conv
            last[0].weight[0, 0, 1, 1] = 1.0  # channel 0 of the skip connection
            last[2].weight[0, 0, 1, 1] = 1.0
            net.head.weight[1, 0, 0, 0] = 20.0
            net.head.bias[1] = -5.0
        net.eval()
        return TrainedModel(net)

    return make


@pytest.fixture
def no_activity_dock(monkeypatch: Any) -> list[Any]:
    """Records every napari ``progress`` made (the activity dock's bars): there must be none."""
    from napari.utils import progress

    made: list[Any] = []
    original = progress.__init__

    def record(self: Any, *args: Any, **kwargs: Any) -> None:
        made.append(kwargs.get("desc"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(progress, "__init__", record)
    return made
