"""Widget tooltips taken from numpydoc docstrings, so that a control and its documentation agree.

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
import re
from typing import Any

__all__ = ["numpydoc_params", "set_tooltips"]

_SECTIONS = ("Parameters", "Attributes", "Other Parameters")
_HEADER = re.compile(r"^([A-Za-z][A-Za-z ]*)\n-{3,}\s*$", re.MULTILINE)


def numpydoc_params(obj: Any) -> dict[str, str]:
    """Map each documented name of ``obj`` to its description, as one line of text.

    Reads the ``Parameters``, ``Other Parameters`` and ``Attributes`` sections of a numpydoc
    docstring. Entries documenting several names (``low, high : float``) give each name the text.

    Parameters
    ----------
    obj : object
        A function, class or anything with a docstring.

    Returns
    -------
    dict of str to str
        Name -> description (whitespace collapsed); empty when there is no docstring.
    """
    doc = inspect.getdoc(obj) or ""
    out: dict[str, str] = {}
    headers = list(_HEADER.finditer(doc))
    for k, header in enumerate(headers):
        if header.group(1).strip() not in _SECTIONS:
            continue
        end = headers[k + 1].start() if k + 1 < len(headers) else len(doc)
        body = doc[header.end() : end]
        names: list[str] = []
        text: list[str] = []
        for line in body.splitlines():
            if line and not line[0].isspace():
                for name in names:
                    out[name] = " ".join(text).replace("``", "").strip()
                names = [n.strip() for n in line.split(":")[0].split(",") if n.strip()]
                text = []
            elif line.strip():
                text.append(line.strip())
        for name in names:
            out[name] = " ".join(text).replace("``", "").strip()
    return out


def set_tooltips(container: Any, *sources: Any) -> None:
    """Give every control of a magicgui container the description of its name in ``sources``.

    Parameters
    ----------
    container : magicgui.widgets.Container
        Controls are matched by their ``name``.
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
