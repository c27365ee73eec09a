"""Fixtures of the command-line tests: the parser of the sub-commands present, one thread."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from napari_unet import cli


@pytest.fixture(autouse=True)
def _existing_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build the parser from the sub-command modules present (others may be in the works)."""
    present = {
        name: module
        for name, module in cli.COMMANDS.items()
        if importlib.util.find_spec(f"napari_unet.cli.{module}") is not None
    }
    monkeypatch.setattr(cli, "COMMANDS", present)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread: Any) -> None:
    """Every command-line test module runs its tiny networks on one torch thread."""


@pytest.fixture
def tiny_file(tmp_path: Any, tiny_model: Any) -> Any:
    """Factory of tiny untrained model files in ``tmp_path``: ``tiny_file(name, **config)``."""
    from napari_unet.core.model_files import save_model

    def make(name: str = "tiny.pt", **config: Any) -> Any:
        return save_model(tiny_model(**config), tmp_path / name)

    return make


@pytest.fixture
def ctrl_c_at(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``ctrl_c_at(k)``: ``napari-unet train`` gets a SIGINT, as if the user pressed Ctrl-C, once
    its progress line has shown iteration ``k``; ``ctrl_c_at(None)`` ends that."""
    import signal

    from napari_unet.cli import train as train_cli

    original = train_cli.ProgressLine.update

    def press(iteration: int | None) -> None:
        def update(self: Any, event: Any) -> None:
            original(self, event)
            if event.iteration == iteration:
                signal.raise_signal(signal.SIGINT)

        monkeypatch.setattr(
            train_cli.ProgressLine, "update", original if iteration is None else update
        )

    return press
