"""Tooltips from numpydoc docstrings."""

from __future__ import annotations

from magicgui.widgets import Container, FloatSpinBox, SpinBox

from napari_unet.widgets.docs import numpydoc_params, set_tooltips


def _documented(low: float, high: float, size: int) -> None:
    """Do something.

    Parameters
    ----------
    low, high : float
        The range,
        over two lines.
    size : int
        How big.

    Returns
    -------
    None
        Nothing.
    """


class _Documented:
    """A class.

    Attributes
    ----------
    depth : int
        How deep.
    """


def test_numpydoc_params_reads_sections() -> None:
    docs = numpydoc_params(_documented)
    assert docs == {"low": "The range, over two lines.", "high": "The range, over two lines.",
                    "size": "How big."}  # fmt: skip
    assert numpydoc_params(_Documented) == {"depth": "How deep."}
    assert numpydoc_params(object()) == {}


def test_set_tooltips_first_source_wins_and_keeps_existing() -> None:
    size = SpinBox(name="size")
    depth = SpinBox(name="depth")
    low = FloatSpinBox(name="low", tooltip="mine")
    inner = Container(widgets=[depth])
    box = Container(widgets=[size, low, inner])
    set_tooltips(box, _Documented, _documented)
    assert size.tooltip == "How big."
    assert depth.tooltip == "How deep."
    assert low.tooltip == "mine"
