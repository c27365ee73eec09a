"""Long work off the GUI thread: a stoppable napari thread worker, and errors as notifications.

A :class:`Job` runs a generator function in a napari ``thread_worker``. Its values, its return
value and any exception reach the widget on the main thread through the worker's Qt signals, so
widgets change layers on the main thread only. Exceptions never escape: the generator is wrapped
so that a failure comes back as a :class:`Failure` return value, which the widget turns into a
napari notification in plain words.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils.notifications import show_error, show_info

__all__ = ["Failure", "Job", "describe_error", "notify_error", "request_stop"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """What a job returns instead of raising: the exception and its formatted traceback."""

    error: BaseException
    traceback: str


def describe_error(exc: BaseException) -> str:
    """One plain sentence for a notification.

    Bad input (``ValueError`` and the like) carries a message written for users and is shown as
    it is; anything else also names the kind of error, since it is a bug or a resource problem.

    Parameters
    ----------
    exc : BaseException
        The error to put in words.

    Returns
    -------
    str
        The sentence.
    """
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, ValueError | FileNotFoundError | IsADirectoryError | PermissionError):
        return text
    if isinstance(exc, MemoryError):
        return "Not enough memory for this job; try a smaller tile, batch or image."
    if "out of memory" in text.lower():
        return f"The device ran out of memory ({text}); try a smaller tile or batch size."
    return f"{type(exc).__name__}: {text}"


def notify_error(what: str, exc: BaseException) -> None:
    """Show ``'<what>: <plain message>'`` as a napari error notification and log the traceback.

    Parameters
    ----------
    what : str
        What failed, e.g. ``'Training failed'``.
    exc : BaseException
        The error.
    """
    logger.info("%s", what, exc_info=exc)
    show_error(f"{what}: {describe_error(exc)}")


def _guarded(func: Callable[..., Generator[Any, Any, Any]], *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
    """Run the generator ``func``, passing its values on; return a :class:`Failure` on error."""
    try:
        return (yield from func(*args, **kwargs))
    except Exception as exc:
        logger.debug("job %s failed", getattr(func, "__name__", func), exc_info=True)
        return Failure(exc, traceback.format_exc())


class _StoppingWorker(GeneratorWorker):
    """A napari GeneratorWorker whose ``quit()`` (napari's cancel, e.g. on closing the window)
    also sets the job's stop event, so that core code checking the event ends promptly."""

    stop_event: threading.Event | None = None

    def quit(self) -> None:
        """Ask the job to stop, then abort the worker at its next value."""
        if self.stop_event is not None:
            self.stop_event.set()
        super().quit()


class Job:
    """A generator function run in a napari thread worker, with a stop event.

    Parameters
    ----------
    func : callable
        A generator function; it receives ``*args``, ``**kwargs`` and ``stop=`` (a
        :class:`threading.Event` it should check between steps).
    *args, **kwargs
        Passed to ``func``.
    on_yield : callable, optional
        Called on the main thread with each value ``func`` yields.
    on_return : callable, optional
        Called on the main thread with ``func``'s return value, or a :class:`Failure`.
    on_finish : callable, optional
        Called on the main thread once the worker is done, however it ended (also after napari
        aborted it on closing).
    """

    def __init__(
        self,
        func: Callable[..., Generator[Any, Any, Any]],
        *args: Any,
        on_yield: Callable[[Any], Any] | None = None,
        on_return: Callable[[Any], Any] | None = None,
        on_finish: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.stop_event = threading.Event()
        self.aborted = False
        self.done = False
        worker = create_worker(
            _guarded,
            func,
            *args,
            stop=self.stop_event,
            _start_thread=False,
            _worker_class=_StoppingWorker,
            **kwargs,
        )
        worker.stop_event = self.stop_event
        if on_yield is not None:
            worker.yielded.connect(on_yield)
        if on_return is not None:
            worker.returned.connect(on_return)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        if on_finish is not None:
            worker.finished.connect(on_finish)
        self.worker = worker

    def start(self) -> None:
        """Start the worker thread."""
        self.worker.start()

    @property
    def running(self) -> bool:
        """Whether the job has not finished yet."""
        return not self.done

    @property
    def stopping(self) -> bool:
        """Whether a stop was asked for."""
        return self.stop_event.is_set()

    def stop(self) -> bool:
        """Ask the job to stop at its next step.

        Returns
        -------
        bool
            False if a stop had already been asked for (nothing more happens).
        """
        if self.stop_event.is_set():
            return False
        self.stop_event.set()
        return True

    def _on_aborted(self) -> None:
        self.aborted = True

    def _on_finished(self) -> None:
        self.done = True


def request_stop(job: Job | None, nothing: str, already: str) -> bool:
    """Ask a running job to stop (a Stop button); say so when there is nothing to stop.

    Parameters
    ----------
    job : Job, optional
        The widget's job.
    nothing : str
        Shown (napari info) when no job is running.
    already : str
        Shown when a stop was already asked for.

    Returns
    -------
    bool
        True if this call asked the job to stop.
    """
    if job is None or not job.running:
        show_info(nothing)
        return False
    if not job.stop():
        show_info(already)
        return False
    return True
