"""The model of a napari session, shared by the Train and Segment widgets.

One :class:`Session` per viewer holds the model trained (or loaded) in that viewer, so that
Segment can use what Train produced, and Train can fine-tune it. The module is Qt-free and uses
no napari API: the viewer is only a key, held weakly, so closing a viewer frees its model.

Examples
--------
>>> class Viewer:  # any weak-referenceable object stands in for a napari viewer
...     pass
>>> viewer = Viewer()
>>> session = session_for(viewer)
>>> session.model is None
True
>>> session_for(viewer) is session
True
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from napari_unet.core.model import TrainedModel

__all__ = ["Session", "SessionModel", "bundled_model", "session_for"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionModel:
    """A model together with where it came from.

    Parameters
    ----------
    model : TrainedModel
        The network and what inference needs.
    source : str
        ``'trained'``, ``'fine-tuned'`` or ``'file'``.
    description : str
        One line for the widgets, e.g. ``'trained here: fast preset, 200 iterations'``.
    path : str, optional
        The model file, when the model was loaded from or saved to one.
    """

    model: TrainedModel
    source: str
    description: str
    path: str | None = None


class Session:
    """What one viewer's widgets share: the current model, and who wants to hear of a new one.

    Listeners are held weakly (bound methods through :class:`weakref.WeakMethod`), so a closed
    widget never keeps itself alive by listening.
    """

    def __init__(self) -> None:
        self._current: SessionModel | None = None
        self._listeners: list[Callable[[], Any]] = []

    @property
    def current(self) -> SessionModel | None:
        """The current model with its description, or None before one is trained or loaded."""
        return self._current

    @property
    def model(self) -> TrainedModel | None:
        """The current model, or None."""
        return None if self._current is None else self._current.model

    def set_model(
        self, model: TrainedModel, source: str, description: str, path: str | None = None
    ) -> SessionModel:
        """Make ``model`` the session's model and tell every listener.

        Parameters
        ----------
        model : TrainedModel
            The new model.
        source : str
            ``'trained'``, ``'fine-tuned'`` or ``'file'``.
        description : str
            One line for the widgets.
        path : str, optional
            The model file it came from or was saved to.

        Returns
        -------
        SessionModel
            The new current entry.
        """
        self._current = SessionModel(model, source, description, path)
        self._notify()
        return self._current

    def set_path(self, path: str) -> None:
        """Record that the current model was saved to ``path``."""
        if self._current is not None:
            cur = self._current
            self._current = SessionModel(cur.model, cur.source, cur.description, str(path))
            self._notify()

    def connect(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` whenever the model changes (held weakly for bound methods).

        Parameters
        ----------
        callback : callable
            Called with no arguments.
        """
        ref: Callable[[], Any]
        if hasattr(callback, "__self__") and hasattr(callback, "__func__"):
            ref = weakref.WeakMethod(callback)  # type: ignore[arg-type]
        else:

            def ref(cb: Callable[[], Any] = callback) -> Callable[[], Any]:
                return cb

        self._listeners.append(ref)

    def disconnect(self, callback: Callable[[], Any]) -> None:
        """Stop calling ``callback``; unknown callbacks are ignored."""
        self._listeners = [ref for ref in self._listeners if ref() not in (None, callback)]

    def _notify(self) -> None:
        alive = []
        for ref in self._listeners:
            callback = ref()
            if callback is None:
                continue
            alive.append(ref)
            try:
                callback()
            except RuntimeError:  # a listener whose Qt widget is already gone
                logger.debug("session listener %r failed", callback, exc_info=True)
        self._listeners = alive


_SESSIONS: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()


def session_for(viewer: Any) -> Session:
    """Return the session of ``viewer``, creating it on first use.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer (held weakly: the session goes when the viewer does).

    Returns
    -------
    Session
        The same object for every call with the same viewer.
    """
    # napari gives each plugin widget its own public-only proxy of the viewer (a wrapt
    # ObjectProxy); key on the viewer behind it so that every widget of a viewer shares one
    # session for as long as the viewer lives.
    viewer = getattr(viewer, "__wrapped__", viewer)
    session = _SESSIONS.get(viewer)
    if session is None:
        session = _SESSIONS[viewer] = Session()
    return session


def bundled_model(name: str) -> TrainedModel:
    """A bundled model for a widget to segment with or to fine-tune.

    Core's loader reads the file once per process and hands out a fresh copy each time
    (:func:`napari_unet.core.bundled_models.load_bundled_model`), so the Train widget may
    fine-tune what it gets while the Segment widget keeps using the original.

    Parameters
    ----------
    name : str
        A key of :data:`napari_unet.core.bundled_models.BUNDLED_MODELS`.

    Returns
    -------
    TrainedModel
        An independent copy of the model, on the CPU.

    Raises
    ------
    ValueError
        With a message for a notification, when the model cannot be loaded.
    """
    from napari_unet.core.bundled_models import load_bundled_model

    try:
        return load_bundled_model(name)
    except (OSError, ValueError) as exc:
        raise ValueError(f"Could not load the bundled model: {exc}") from exc
