"""Widget tooltips taken from numpydoc docstrings, so that a control and its documentation agree.

The docstrings are read by ``docstring_parser``, the parser magicgui itself uses for the tooltips
of ``magicgui``-decorated functions.

Examples
--------
>>> def f(threshold: float = 0.5) -> None:
...     '''Do it.
...
...     Parameters
...     ----------
...     threshold : float
...         Foreground probability above which a pixel is a cell.
...     '''
>>> numpydoc_params(f)["threshold"]
'Foreground probability above which a pixel is a cell.'
"""

from __future__ import annotations

import inspect
from typing import Any

from docstring_parser import parse

__all__ = ["numpydoc_params", "set_tooltips"]


def numpydoc_params(obj: Any) -> dict[str, str]:
    """Map each documented name of ``obj`` to its description, as one line of text.

    Reads the ``Parameters``, ``Other Parameters`` and ``Attributes`` sections. Entries
    documenting several names (``low, high : float``) give each name the text.

    Parameters
    ----------
    obj : object
        A function, class or anything with a docstring.

    Returns
    -------
    dict of str to str
        Name -> description (whitespace collapsed, double backticks removed); empty when there
        is no docstring.
    """
    out: dict[str, str] = {}
    for param in parse(inspect.getdoc(obj) or "").params:
        text = " ".join((param.description or "").split()).replace("``", "")
        out.update(dict.fromkeys((n.strip() for n in param.arg_name.split(",")), text))
    return out


def set_tooltips(container: Any, *sources: Any) -> None:
    """Give every control of a magicgui container the description of its name in ``sources``.

    Parameters
    ----------
    container : magicgui.widgets.Container
        Controls are matched by their ``name``, nested containers included.
    *sources : object
        Documented objects, searched in order; the first that documents a name wins. A control
        that already has a tooltip keeps it.
    """
    docs: dict[str, str] = {}
    for source in reversed(sources):
        docs.update(numpydoc_params(source))
    _apply(container, docs)


def _apply(container: Any, docs: dict[str, str]) -> None:
    for widget in container:
        if hasattr(widget, "__iter__") and hasattr(widget, "append"):  # a nested Container
            _apply(widget, docs)
        elif not widget.tooltip and widget.name in docs:
            widget.tooltip = docs[widget.name]
