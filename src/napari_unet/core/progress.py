"""One progress protocol for long work: generators of events that return a result.

Training (:func:`napari_unet.core.training.train`) and inference
(:func:`napari_unet.core.inference.segment`, :func:`~napari_unet.core.inference.
predict_probabilities`) are generators: they yield progress events while they work and *return*
their result (``StopIteration.value``). Widgets run them in a napari generator worker (each event
reaches the main thread through ``yielded``), the command line shows them with tqdm, and scripts
that only want the result call :func:`run_to_end`. Every event has ``done``, ``total`` and
``stage``; stopping is a ``threading.Event`` passed as ``stop=``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = ["ProgressEvent", "Step", "run_to_end"]

T = TypeVar("T")


@runtime_checkable
class ProgressEvent(Protocol):
    """What every progress event has: how much is done, of how much, and in which stage."""

    @property
    def done(self) -> int:
        """Units done so far (iterations, tiles, slices)."""

    @property
    def total(self) -> int | None:
        """Units planned; ``None`` when unknown (a run limited by time only)."""

    @property
    def stage(self) -> str:
        """What is being done, e.g. ``'training'``, ``'tiles'``, ``'labels'``."""


@dataclass(frozen=True)
class Step:
    """A plain progress event: ``done`` of ``total`` units of ``stage``.

    Attributes
    ----------
    done : int
        Units done so far.
    total : int, optional
        Units planned, if known.
    stage : str
        What the units are.
    item : Any
        What the step finished, when a caller needs it (e.g. the index of a labelled slice).
    """

    done: int
    total: int | None
    stage: str
    item: Any = None


def run_to_end(work: Generator[Any, None, T], callback: Callable[[Any], None] | None = None) -> T:
    """Drive a progress generator to its end and return its result.

    Parameters
    ----------
    work : generator
        A generator of progress events that returns a result.
    callback : callable, optional
        Called with every event.

    Returns
    -------
    object
        The generator's return value.

    Examples
    --------
    >>> def count(n):
    ...     for i in range(n):
    ...         yield Step(i + 1, n, "counting")
    ...     return "finished"
    >>> seen = []
    >>> run_to_end(count(3), lambda e: seen.append(e.done))
    'finished'
    >>> seen
    [1, 2, 3]
    """
    while True:
        try:
            event = next(work)
        except StopIteration as finished:
            return finished.value
        if callback is not None:
            callback(event)
