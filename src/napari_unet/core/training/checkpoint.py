"""Checkpoints: a training run saved every few minutes and when it stops, and resumed.

A checkpoint holds everything the next steps of a run depend on: the network's weights, the
optimiser's state, the step, the best validated weights and scores so far, the random streams
of every rank (patch positions, augmentation, dropout) and the global ones of torch, numpy and
Python, the settings (with the seed drawn) and what a fine-tuned model fixed (architecture,
normalisation, gap). Resuming a seeded CPU run from it gives the model the run would have given
had it not been interrupted. It is written atomically (:mod:`napari_unet.core.atomic`) by rank
0 of a data-parallel run, after gathering every rank's streams; it is a ``torch.save`` file of
plain values and tensors, read back with ``weights_only=True``.

:func:`~napari_unet.core.training.loop.train` takes a :class:`Checkpointing`: where to write,
how often, and the :class:`Checkpoint` to resume from (:func:`load_checkpoint`).
"""

from __future__ import annotations

import logging
import os
import random
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import __version__
from ..atomic import atomic_path
from ..model import TrainedModel, UNet, UNetConfig
from .settings import TrainSettings
from .validation import ValidationScore

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "CheckpointKeeper",
    "Checkpointing",
    "load_checkpoint",
]

logger = logging.getLogger(__name__)

#: The ``format`` entry of a checkpoint file.
CHECKPOINT_FORMAT = "napari-unet-checkpoint"
#: Its version; files of another version are refused with a clear message.
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file's content.

    Attributes
    ----------
    path : pathlib.Path
        Where it was read from.
    settings : TrainSettings
        The run's settings, with the seed it drew.
    iteration : int
        Steps done when it was written.
    payload : dict
        Everything else (weights, optimiser, streams, best state, the data's fingerprint).
    """

    path: Path
    settings: TrainSettings
    iteration: int
    payload: dict[str, Any]

    def base_model(self) -> TrainedModel | None:
        """The model the run fine-tuned (architecture, normalisation, gap, record), if any.

        Its weights are fresh: resuming loads the checkpoint's over them.
        """
        base = self.payload.get("base")
        if base is None:
            return None
        net = UNet(UNetConfig.from_dict(dict(base["config"])))
        return TrainedModel(
            net,
            dict(base["normalization"]),
            int(base["gap"]),
            base["training"],
            mode=base.get("mode", "cells"),
            class_names=tuple(base.get("class_names", ())),
        )

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class names the run was given (classes mode), empty if none."""
        return tuple(self.payload.get("class_names", ()))


@dataclass(frozen=True)
class Checkpointing:
    """Where and how often a run writes checkpoints, and the one it resumes from.

    Attributes
    ----------
    path : pathlib.Path, optional
        The checkpoint file (replaced by each new checkpoint); ``None``: nothing is written.
    minutes : float, optional
        Minutes between checkpoints; ``None``: only when the run is stopped (and at its end
        once one was written).
    resume : Checkpoint, optional
        Continue this run instead of starting afresh.
    """

    path: Path | None = None
    minutes: float | None = 10.0
    resume: Checkpoint | None = None

    def __post_init__(self) -> None:
        if self.minutes is not None and not (
            isinstance(self.minutes, int | float) and self.minutes > 0
        ):
            raise ValueError(f"checkpoint minutes must be > 0 or None, got {self.minutes!r}")


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by a training run.

    Parameters
    ----------
    path : str or path-like
        The file.

    Returns
    -------
    Checkpoint
        Its content.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    ValueError
        If the file is not a checkpoint of this project (or of another format version).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{p} is not a readable checkpoint: {exc}".splitlines()[0]) from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{p} is not a napari-unet training checkpoint")
    if data.get("format_version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{p} is a checkpoint of format version {data.get('format_version')!r}; this "
            f"napari-unet ({__version__}) resumes version {CHECKPOINT_VERSION}"
        )
    settings = TrainSettings.from_dict(dict(data["settings"]))
    return Checkpoint(p, settings, int(data["iteration"]), data)


def _rank_streams(run: Any) -> dict[str, Any]:
    """One rank's random streams: patch positions, augmentation, dropout."""
    return {
        "sampler": run.data.sampler.rng.bit_generator.state,
        "augment": run.generator.get_state(),
        "dropout": run.opt.rng_state,
    }


def _global_streams() -> dict[str, Any]:
    """torch's, numpy's and Python's global random states (plain values and tensors)."""
    state = np.random.get_state(legacy=False)  # noqa: NPY002 (the global state is saved)
    state["state"] = {k: np.asarray(v).tolist() for k, v in state["state"].items()}
    return {"torch": torch.get_rng_state(), "numpy": state, "python": random.getstate()}


def _set_global_streams(streams: dict[str, Any]) -> None:
    torch.set_rng_state(streams["torch"])
    state = dict(streams["numpy"])
    state["state"] = {
        "key": np.asarray(state["state"]["key"], np.uint32),
        "pos": int(state["state"]["pos"]),
    }
    np.random.set_state(state)  # noqa: NPY002
    version, internal, gauss = streams["python"]
    random.setstate((version, tuple(internal), gauss))


def _score(score: ValidationScore | None) -> dict[str, Any] | None:
    return None if score is None else asdict(score)


def _unscore(value: dict[str, Any] | None) -> ValidationScore | None:
    return None if value is None else ValidationScore(**value)


class CheckpointKeeper:
    """Writes a run's checkpoints and restores one into a fresh run (used by ``train``).

    Every rank of a data-parallel run calls the same methods at the same steps (the times are
    rank 0's clock, agreed on by all), as the ranks' streams are gathered on rank 0.

    Parameters
    ----------
    checkpointing : Checkpointing, optional
        What to do; ``None``: nothing.
    model : TrainedModel, optional
        The model the run fine-tunes (recorded so that a resumed run rebuilds it).
    """

    def __init__(self, checkpointing: Checkpointing | None, model: TrainedModel | None) -> None:
        self.plan = checkpointing or Checkpointing(path=None)
        self.model = model
        self.last = 0.0  # rank 0's training clock at the last checkpoint
        self.written = 0
        self._fingerprint: dict[str, int] | None = None

    def fingerprint(self, run: Any) -> dict[str, int]:
        """The run's data fingerprint (computed once: a pass over all prepared data)."""
        if self._fingerprint is None:
            self._fingerprint = _fingerprint(run)
        return self._fingerprint

    def restore(self, run: Any) -> None:
        """Load the checkpoint to resume into ``run`` (a fresh run on the same data)."""
        ckpt = self.plan.resume
        if ckpt is None:
            return
        data = ckpt.payload
        fingerprint = self.fingerprint(run)
        if data["data"] != fingerprint:
            raise ValueError(
                f"{ckpt.path} was made on other data ({data['data']}); the images, labels and "
                f"regions given now hold {fingerprint}: resume with the same files"
            )
        run.opt.net.load_state_dict(data["net"])
        run.opt.optimizer.load_state_dict(data["optimizer"])
        ranks = data["ranks"]
        rank = run.plan.dist.rank
        if rank < len(ranks):
            streams = ranks[rank]
            run.data.sampler.rng.bit_generator.state = streams["sampler"]
            run.generator.set_state(streams["augment"])
            run.opt.rng_state = streams["dropout"]
        else:
            logger.warning("rank %d has no streams in %s: it starts fresh ones", rank, ckpt.path)
        _set_global_streams(data["global"])
        run.iteration, run.loss = int(data["iteration"]), float(data["loss"])
        best = data["best"]
        run.best.score, run.best.last_score = _unscore(best["score"]), _unscore(best["last"])
        run.best.iteration, run.best.last_validated = best["iteration"], best["last_validated"]
        run.best.state = best["state"]
        # the budget (minutes) and the learning-rate schedule go on from where they were
        run.train_start -= float(data["clock"])
        run.start -= float(data["elapsed"])
        self.last = float(data["clock"])
        logger.info("resumed %s at iteration %d", ckpt.path, run.iteration)

    def after_step(self, run: Any) -> None:
        """Write a checkpoint when one is due (every ``minutes`` of training)."""
        minutes = self.plan.minutes
        if self.plan.path is not None and minutes is not None:
            if run.clock - self.last >= 60.0 * minutes:
                self.save(run)

    def at_end(self, run: Any, stopped: bool) -> None:
        """Write a checkpoint when the run was stopped, or to keep an earlier one current."""
        if self.plan.path is not None and (stopped or self.written or self.plan.resume):
            self.save(run)

    def save(self, run: Any) -> Path | None:
        """Gather every rank's streams and write the checkpoint (rank 0); its path there."""
        group = run.plan.dist
        ranks = group.gather(_rank_streams(run))
        self.last, self.written = run.clock, self.written + 1
        if ranks is None or self.plan.path is None:
            return None
        payload = self.payload(run, ranks)
        with atomic_path(self.plan.path) as tmp, open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        logger.info("checkpoint at iteration %d: %s", run.iteration, self.plan.path)
        return self.plan.path

    def payload(self, run: Any, ranks: list[dict[str, Any]]) -> dict[str, Any]:
        """What the checkpoint file holds."""
        best = run.best
        base = None
        if self.model is not None:
            base = {
                "config": self.model.config.to_dict(),
                "normalization": dict(self.model.normalization),
                "gap": int(self.model.gap),
                "training": dict(self.model.training),
                "mode": self.model.mode,
                "class_names": list(self.model.class_names),
            }
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "package_version": __version__,
            "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "settings": replace(run.settings, seed=run.plan.seed).to_dict(),
            "base": base,
            "class_names": list(getattr(run, "names", ())),
            "data": self.fingerprint(run),
            "iteration": run.iteration,
            "loss": run.loss,
            "clock": run.clock,
            "elapsed": time.perf_counter() - run.start,
            "net": {k: v.detach().cpu() for k, v in run.opt.net.state_dict().items()},
            "optimizer": run.opt.optimizer.state_dict(),
            "ranks": ranks,
            "global": _global_streams(),
            "best": {
                "score": _score(best.score),
                "last": _score(best.last_score),
                "iteration": best.iteration,
                "last_validated": best.last_validated,
                "state": best.state,
            },
        }


def _fingerprint(run: Any) -> dict[str, int]:
    """What identifies a run's data: its images, annotated pixels, targets and geometry."""
    samples = run.data.samples
    crc = 0
    for s in samples:
        crc = zlib.crc32(np.ascontiguousarray(s.classes), crc)
        crc = zlib.crc32(np.ascontiguousarray(s.image), crc)
    return {
        "images": len(samples),
        "annotated_pixels": int(sum(s.n_annotated for s in samples)),
        "input_size": int(run.data.in_size),
        "crc32": crc,
    }
