"""The session's model holder: one per viewer, held weakly, listeners told of new models."""

from __future__ import annotations

import gc

from napari_unet.widgets.session import Session, session_for


class _Viewer:
    """Stands in for a napari viewer (the holder needs only a weak-referenceable key)."""


class _Listener:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:  # pragma: no cover - only bound methods are used below
        self.calls += 1

    def on_model(self) -> None:
        self.calls += 1


def test_one_session_per_viewer() -> None:
    a, b = _Viewer(), _Viewer()
    assert session_for(a) is session_for(a)
    assert session_for(a) is not session_for(b)


def test_session_goes_with_its_viewer() -> None:
    import weakref

    viewer = _Viewer()
    ref = weakref.ref(session_for(viewer))
    del viewer
    gc.collect()
    assert ref() is None


def test_set_model_tells_listeners_and_keeps_description() -> None:
    session = Session()
    listener = _Listener()
    session.connect(listener.on_model)
    model = object()
    entry = session.set_model(model, "trained", "trained here")  # type: ignore[arg-type]
    assert listener.calls == 1
    assert session.model is model
    assert entry.description == "trained here" and entry.path is None
    session.set_path("/tmp/m.pt")
    assert session.current.path == "/tmp/m.pt" and session.model is model
    assert listener.calls == 2
    session.disconnect(listener.on_model)
    session.set_model(model, "file", "loaded")  # type: ignore[arg-type]
    assert listener.calls == 2


def test_listeners_are_held_weakly() -> None:
    session = Session()
    listener = _Listener()
    session.connect(listener.on_model)
    del listener
    gc.collect()
    session.set_model(object(), "trained", "x")  # type: ignore[arg-type]
    assert session._listeners == []


def test_plain_function_listener() -> None:
    session = Session()
    calls: list[int] = []
    session.connect(lambda: calls.append(1))
    session.set_model(object(), "trained", "x")  # type: ignore[arg-type]
    assert calls == [1]
