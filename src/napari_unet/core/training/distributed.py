"""Training past one process: DistributedDataParallel under ``torchrun`` (or ``srun``).

``torchrun --standalone --nproc_per_node N -m napari_unet train ...`` starts N processes that
each run the same command; :func:`process_group` reads ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` from the environment (``SLURM_PROCID``, ``SLURM_NTASKS`` and ``SLURM_LOCALID``
when ``srun`` starts the processes itself), joins them in one process group (NCCL on CUDA, gloo
on the CPU) and gives each its GPU. :func:`~napari_unet.core.training.loop.train` notices the
group through :func:`current`, and then

- wraps the network in :class:`~torch.nn.parallel.DistributedDataParallel`, so that gradients
  are averaged over the processes ("ranks") after every backward pass;
- draws each rank's patches and augmentation from its own seeded stream
  (:meth:`Distributed.rank_seed`); the seed itself (drawn on rank 0 when none is given) and the
  held-out validation blocks are the same on every rank;
- normalises the loss by the annotated pixels of the *global* batch
  (:meth:`Distributed.loss_count`), so that N ranks with batch b take exactly the step one
  process takes with batch N * b on the same patches (batch normalisation aside: its batch
  statistics are per rank);
- agrees on when to stop (a stop request on any rank, the iteration or time budget on rank 0's
  clock: :meth:`Distributed.agree`), so that no rank waits for a step the others never take
  and all write checkpoints at the same steps;
- validates, reports progress and writes files on rank 0 only (:attr:`Distributed.main`).

A single process is ``Distributed()``: rank 0 of 1, every method a no-op.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["Distributed", "current", "launch_environment", "process_group", "rank_seed"]

logger = logging.getLogger(__name__)

#: How long a rank waits for the others in one collective (validation runs on rank 0 only).
TIMEOUT = datetime.timedelta(minutes=30)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s random streams in a run seeded with ``seed``.

    Rank 0 keeps ``seed`` itself, so a single process draws exactly what it always drew; the
    other ranks get independent streams derived from ``(seed, rank)`` by
    :class:`numpy.random.SeedSequence`.

    Parameters
    ----------
    seed : int
        The run's seed (>= 0).
    rank : int
        The process's rank (>= 0).

    Returns
    -------
    int
        A seed in ``[0, 2**31)``.

    Examples
    --------
    >>> rank_seed(7, 0)
    7
    >>> rank_seed(7, 1) != rank_seed(7, 2) != 7
    True
    """
    if rank == 0:
        return int(seed)
    state = np.random.SeedSequence((int(seed), int(rank))).generate_state(1)
    return int(state[0] % (2**31))


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run; ``Distributed()`` is a single process.

    Attributes
    ----------
    rank : int
        The process's rank, 0 to ``world_size - 1``.
    world_size : int
        How many processes train together.
    local_rank : int
        The rank among the processes of this machine (which GPU it takes).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """More than one process trains."""
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """This is rank 0: it validates, reports and writes files."""
        return self.rank == 0

    def rank_seed(self, seed: int) -> int:
        """This rank's seed for patch positions and augmentation (:func:`rank_seed`)."""
        return rank_seed(seed, self.rank)

    def rank_rng(self, rng: np.random.Generator, seed: int) -> np.random.Generator:
        """``rng`` on rank 0 (a single process draws as before), else a stream of its own."""
        return rng if self.rank == 0 else np.random.default_rng(self.rank_seed(seed))

    def same_seed(self, seed: int) -> int:
        """Rank 0's ``seed`` on every rank (each may have drawn its own at random)."""
        if not self.active:
            return int(seed)
        values = [int(seed)]
        dist.broadcast_object_list(values, src=0)
        return int(values[0])

    def wrap(self, net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``net`` in :class:`~torch.nn.parallel.DistributedDataParallel` (itself alone).

        DDP copies rank 0's weights and buffers to every rank when it wraps the network, so
        all ranks start from the same weights whatever their seed.
        """
        if not self.active:
            return net
        ids = [device.index] if device.type == "cuda" and device.index is not None else None
        return torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)

    def loss_count(self, weights: torch.Tensor) -> torch.Tensor | None:
        """Annotated pixels of the global batch per rank, the loss's normaliser.

        With it each rank's loss is ``sum(w * ce) / (count_all / world_size)``; DDP averages
        the gradients over the ranks, which gives the gradient of
        ``sum_all(w * ce) / count_all``: the loss of one process on the whole global batch.

        Parameters
        ----------
        weights : torch.Tensor
            This rank's pixel weights (annotated where > 0).

        Returns
        -------
        torch.Tensor or None
            A float scalar; ``None`` in a single process (the loss counts its own pixels).
        """
        if not self.active:
            return None
        count = (weights > 0).sum().to(torch.float32)
        dist.all_reduce(count)
        return (count / self.world_size).clamp_min(1.0 / self.world_size)

    def mean(self, value: float, device: torch.device) -> float:
        """The mean of ``value`` over the ranks (the global batch's loss)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64 if device.type == "cpu" else torch.float32)
        t = t.to(device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def agree(
        self, stop: bool, finished: bool, elapsed: float, device: torch.device
    ) -> tuple[bool, bool, float]:
        """Whether any rank was asked to stop or is finished, and rank 0's clock, on every rank.

        Parameters
        ----------
        stop : bool
            This rank was asked to stop (Ctrl-C, SIGTERM, Stop).
        finished : bool
            This rank's budget is spent (iterations, minutes).
        elapsed : float
            Seconds of training on this rank's clock.
        device : torch.device
            Where the collective runs (NCCL needs CUDA tensors).

        Returns
        -------
        stop, finished : bool
            The same on every rank: all ranks end before the same step.
        elapsed : float
            Rank 0's clock (learning-rate schedule, time budget and checkpoint times are the
            same everywhere).
        """
        if not self.active:
            return stop, finished, elapsed
        dtype = torch.float64 if device.type == "cpu" else torch.float32
        values = [float(stop), float(finished), elapsed if self.main else 0.0]
        t = torch.tensor(values, dtype=dtype).to(device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t[0].item() > 0), bool(t[1].item() > 0), float(t[2].item())

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value`` (picklable), in rank order, on rank 0; ``None`` elsewhere."""
        if not self.active:
            return [value]
        out: list[Any] | None = [None] * self.world_size if self.main else None
        dist.gather_object(value, out, dst=0)
        return out

    def barrier(self) -> None:
        """Wait until every rank is here."""
        if self.active:
            dist.barrier()


def current() -> Distributed:
    """The data-parallel run this process is part of (``Distributed()`` when none).

    Returns
    -------
    Distributed
        From the initialised default process group of :mod:`torch.distributed`.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return Distributed()
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
    return Distributed(dist.get_rank(), dist.get_world_size(), local)


def launch_environment(environ: dict[str, str] | None = None) -> Distributed:
    """The run a launcher (``torchrun``, ``srun``) started this process in, from its env.

    Parameters
    ----------
    environ : dict, optional
        The environment; ``os.environ`` by default.

    Returns
    -------
    Distributed
        ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (torchrun), else ``SLURM_PROCID`` /
        ``SLURM_NTASKS`` / ``SLURM_LOCALID`` (``srun`` without torchrun, with ``MASTER_ADDR``
        and ``MASTER_PORT`` set), else a single process.

    Raises
    ------
    ValueError
        If the variables are not integers or the rank is not below the world size.

    Examples
    --------
    >>> launch_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    Distributed(rank=1, world_size=2, local_rank=1)
    >>> launch_environment({})
    Distributed(rank=0, world_size=1, local_rank=0)
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env:
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    elif "SLURM_NTASKS" in env and "MASTER_ADDR" in env:
        names = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
    else:
        return Distributed()
    try:
        rank, world, local = (int(env.get(name, "0")) for name in names)
    except ValueError as exc:
        got = ", ".join(f"{n}={env.get(n)!r}" for n in names)
        raise ValueError(
            f"expected integer {', '.join(names)} from the launcher, got {got}"
        ) from exc
    if not 0 <= rank < world:
        raise ValueError(f"expected 0 <= rank < world size from the launcher, got {rank}, {world}")
    return Distributed(rank, world, local)


@contextmanager
def process_group(device: str = "auto") -> Iterator[Distributed]:
    """Join the processes a launcher started, for the duration of the block.

    Parameters
    ----------
    device : str
        The training device setting: ``'auto'`` or ``'cuda'`` use NCCL and the GPU of this
        rank's ``LOCAL_RANK`` when CUDA is present; the CPU uses gloo.

    Yields
    ------
    Distributed
        This process's place (a single process when no launcher set the environment; then
        nothing is initialised).

    Raises
    ------
    ValueError
        On a ``'cuda:N'`` device with more than one process (each takes its ``LOCAL_RANK``'s
        GPU), or launcher variables that make no sense.
    """
    place = launch_environment()
    if not place.active or (dist.is_available() and dist.is_initialized()):
        yield current() if place.active else place
        return
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if device.startswith("cuda:"):
        raise ValueError(
            f"device {device!r} with {place.world_size} processes: use 'cuda' or 'auto', each "
            "process takes the GPU of its LOCAL_RANK"
        )
    if cuda:
        torch.cuda.set_device(place.local_rank)
    os.environ.setdefault("RANK", str(place.rank))
    os.environ.setdefault("WORLD_SIZE", str(place.world_size))
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    logger.info("rank %d of %d joined (%s)", place.rank, place.world_size, backend)
    try:
        yield current()
    finally:
        dist.destroy_process_group()
