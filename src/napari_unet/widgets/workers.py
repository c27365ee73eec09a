"""Long work off the GUI thread: a stoppable napari thread worker, and errors as notifications.

A :class:`Job` runs a generator function in a napari ``thread_worker``. Its values, its return
value, its warnings and any exception reach the widget on the main thread through the worker's
Qt signals (``yielded``, ``returned``, ``warned``, ``errored``), so widgets change layers on the
main thread only. An exception ends the job through ``errored``: the widget's ``on_error`` puts
it in plain words as a napari notification (:func:`notify_error`), instead of napari's default
error relay, which shows a traceback notification. A warning raised in the job (for example
:class:`~napari_unet.core.targets.SplitLabelsWarning`) goes to the widget's ``on_warning``
first; the project's own warnings it leaves are shown as napari warnings, libraries' warnings
are logged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from magicgui.widgets import ProgressBar
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from superqt.utils import GeneratorWorker

__all__ = [
    "REFRESH_MS",
    "Job",
    "JobProgress",
    "describe_error",
    "notify_error",
    "refresh_timer",
    "request_stop",
]

logger = logging.getLogger(__name__)

#: where the project's modules are: warnings raised there are shown to the user
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
#: milliseconds between redraws of a widget's status, plot and progress bar while a job runs:
#: every redraw of a napari window is composited with OpenGL, which without a GPU (software
#: rendering, e.g. under Xvfb or remote desktops) costs CPU time the job then lacks
REFRESH_MS = 500


def refresh_timer(callback: Callable[[], Any], interval_ms: int = REFRESH_MS) -> QTimer:
    """A Qt timer that calls ``callback`` every ``interval_ms`` once started (throttled redraws).

    Parameters
    ----------
    callback : callable
        Redraws what changed since the last call.
    interval_ms : int
        Milliseconds between calls.

    Returns
    -------
    QTimer
        Not started: ``start()`` it with the job, ``stop()`` it when the job ends.
    """
    timer = QTimer()
    timer.setInterval(interval_ms)
    timer.timeout.connect(callback)
    return timer


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


class _JobRuntimeError(Exception):
    """Carries a RuntimeError raised by a job through the worker to ``errored``."""

    def __init__(self, error: RuntimeError) -> None:
        super().__init__(str(error))
        self.error = error


def _carrying_runtime_errors(
    func: Callable[..., Generator[Any, Any, Any]], *args: Any, **kwargs: Any
):  # type: ignore[no-untyped-def]
    """Run the generator ``func``; a RuntimeError it raises leaves as a :class:`_JobRuntimeError`.

    superqt's worker takes a RuntimeError out of the generator for a sign that its Qt object was
    deleted, and ends without ``errored`` or ``finished``; the job's own RuntimeErrors (a
    diverging loss, a device error) must reach ``errored`` like any other error.
    """
    try:
        return (yield from func(*args, **kwargs))
    except RuntimeError as exc:
        raise _JobRuntimeError(exc) from exc


class _StoppingWorker(GeneratorWorker):
    """A generator worker whose ``quit()`` (napari's cancel, e.g. on closing the window) also
    sets the job's stop event, so that core code checking the event ends promptly.

    superqt's worker rather than napari's subclass, which relays every error and warning to a
    notification of its own: :class:`Job` routes them to the widget instead.
    """

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
        Called on the main thread with ``func``'s return value (not after an error or an abort).
    on_error : callable, optional
        Called on the main thread with the exception that ended ``func`` (e.g.
        :class:`~napari_unet.core.inference.Cancelled` after a stop). Default: a napari error
        notification in plain words (:func:`notify_error`).
    on_warning : callable, optional
        Called on the main thread with each warning ``func`` raised (a ``Warning`` instance);
        returns True when it dealt with it. The project's own warnings it leaves are shown as
        napari warnings; libraries' warnings (resource, deprecation, ...) are only logged.
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
        on_error: Callable[[BaseException], Any] | None = None,
        on_warning: Callable[[Warning], bool] | None = None,
        on_finish: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.stop_event = threading.Event()
        self.aborted = False
        self.done = False
        self.error: BaseException | None = None
        self._name = getattr(func, "__name__", "job")
        self._on_error_cb, self._on_warning_cb = on_error, on_warning
        worker = create_worker(
            _carrying_runtime_errors,
            func,
            *args,
            stop=self.stop_event,
            _start_thread=False,
            _worker_class=_StoppingWorker,
            _connect={"errored": self._on_errored, "warned": self._on_warned},
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

    def _on_errored(self, exc: BaseException) -> None:
        if isinstance(exc, _JobRuntimeError):
            exc = exc.error
        self.error = exc
        logger.debug("job %s failed", self._name, exc_info=exc)
        if self._on_error_cb is not None:
            self._on_error_cb(exc)
        else:
            notify_error(f"{self._name} failed", exc)

    def _on_warned(self, args: tuple[Any, ...]) -> None:
        message = args[0] if args else ""
        if not isinstance(message, Warning):
            message = UserWarning(str(message))
        if self._on_warning_cb is not None and self._on_warning_cb(message):
            return
        where = str(args[2]) if len(args) > 2 else ""
        if _PACKAGE_DIR in where:  # the project's own warnings are for the user
            logger.warning("%s: %s", self._name, message)
            show_warning(str(message))
        else:  # libraries' (resource, deprecation, ...) warnings go to the log only
            logger.debug("%s: %s (%s)", self._name, message, where)

    def _on_aborted(self) -> None:
        self.aborted = True

    def _on_finished(self) -> None:
        self.done = True


class JobProgress:
    """A widget's long job shown with throttled redraws: the job, a progress bar, a timer.

    The job's callbacks record what happened and call :meth:`changed`; ``redraw`` then runs at
    most every :data:`REFRESH_MS` milliseconds (or at once through :meth:`flush`), and only
    when something changed since it last ran and the widget is still there.

    Parameters
    ----------
    redraw : callable
        Shows what the callbacks recorded (status line, progress bar, plot, layers).
    alive : callable
        Whether the widget's Qt side still exists (nothing is redrawn once it is gone).
    """

    def __init__(self, redraw: Callable[[], Any], alive: Callable[[], bool]) -> None:
        self.job: Job | None = None
        self.bar = ProgressBar(name="progress_bar", value=0, min=0, max=1, visible=False)
        self._redraw, self._alive = redraw, alive
        self._pending = False
        self._timer = refresh_timer(self.flush)

    @property
    def running(self) -> bool:
        """Whether a job was started and has not finished yet."""
        return self.job is not None and self.job.running

    @property
    def stopping(self) -> bool:
        """Whether the running job was asked to stop."""
        return self.job is not None and self.job.stopping

    def start(self, job: Job, total: int = 0, *, bar: bool = True) -> None:
        """Start ``job`` and the redraws; the progress bar counts to ``total`` (0: unknown).

        Parameters
        ----------
        job : Job
            Not started yet.
        total : int
            Steps of the progress bar (at least 1).
        bar : bool
            Whether the progress bar is shown.
        """
        self.bar.max = max(total, 1)
        self.bar.value = 0
        self.bar.visible = bar
        self._pending = False
        self.job = job
        job.start()
        self._timer.start()

    def changed(self) -> None:
        """Something new to show: the next tick of the timer redraws."""
        self._pending = True

    def flush(self) -> None:
        """Redraw now if something changed since the last redraw."""
        if not self._pending or not self._alive():
            return
        self._pending = False
        self._redraw()

    def show(self, done: int, total: int) -> None:
        """Set the progress bar to ``done`` of ``total`` steps (nothing for ``total`` 0)."""
        if total > 0:
            self.bar.max = total
            self.bar.value = min(done, total)

    def finish(self) -> Job | None:
        """The job ended: stop the redraws, hide the progress bar, return the job."""
        self._timer.stop()
        self._pending = False
        job, self.job = self.job, None
        if self._alive():
            self.bar.visible = False
        return job

    def close(self) -> None:
        """The widget's window is closing: stop the redraws and ask the job to stop."""
        try:
            self._timer.stop()
        except RuntimeError:  # already deleted with the widget
            pass
        if self.running:
            assert self.job is not None
            self.job.stop()


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
