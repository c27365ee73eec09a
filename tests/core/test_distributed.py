"""Data-parallel training (DistributedDataParallel, gloo on the CPU).

The equivalence test runs two ranks with batch b and one process with batch 2b on the *same*
patches: the patch centres of the global batch are drawn once from a stream seeded by the step
and split between the ranks (a test-only replacement of ``PatchSampler.centres``), augmentation
is off and the network has no batch normalisation (whose batch statistics are per rank). What
remains to differ is the order of floating-point sums (the gradient all-reduce vs. one larger
backward pass), hence the tolerance: 1e-6 relative on the losses and 1e-6 absolute on the
weights after three Adam steps (measured: 6e-8 and 1.5e-8, float32 rounding; the weights moved
by more than 1e-4).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from napari_unet.core.model import TrainedModel, UNet, UNetConfig
from napari_unet.core.training import TrainSettings, run_training
from napari_unet.core.training.data import PatchSampler
from napari_unet.core.training.distributed import Distributed, current, launch_environment
from napari_unet.sample_data import make_touching_cells

STEPS = 3
BATCH = 2

_draw_centres = PatchSampler.centres


def _shared_centres(self: PatchSampler, n: int) -> list[tuple[int, int, int]]:
    """The global batch's centres, drawn from the step's stream; this rank's share of them."""
    step = getattr(self, "test_step", 0)
    self.test_step = step + 1
    group = current()
    kept, self.rng = self.rng, np.random.default_rng(1000 + step)
    try:
        everything = _draw_centres(self, n * group.world_size)
    finally:
        self.rng = kept
    return everything[group.rank * n : (group.rank + 1) * n]


def _data():
    image, labels = make_touching_cells((64, 64), n_cells=8, seed=3)
    region = np.zeros(labels.shape, bool)
    region[8:56, 4:40] = True  # patches hold different numbers of annotated pixels
    return image, labels, region


def _run(batch: int) -> tuple[list[float], dict[str, torch.Tensor], str]:
    torch.manual_seed(0)
    model = TrainedModel(UNet(UNetConfig(depth=2, base_channels=4, batch_norm=False)))
    settings = TrainSettings(
        iterations=STEPS,
        patch_size=32,
        batch_size=batch,
        device="cpu",
        seed=5,
        validation_fraction=0.0,
        elastic=False,
        flips=False,
        affine=False,
        intensity=False,
    )
    losses: list[float] = []
    image, labels, region = _data()
    result = run_training(
        image,
        labels,
        region,
        settings=settings,
        model=model,
        callback=lambda e: losses.append(e.loss),
    )
    return losses, result.net.state_dict(), result.training["summary"]["device"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    PatchSampler.centres = _shared_centres
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        losses, state, device = _run(BATCH)
        torch.save({"losses": losses, "state": state, "device": device}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    # spawned processes unpickle _rank from this module, with this process's sys.path: it
    # needs the repository root also when pytest runs as a script (tox), not `python -m pytest`
    root = str(Path(__file__).resolve().parents[2])
    sys.path.insert(0, root)
    try:
        mp.spawn(_rank, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    finally:
        sys.path.remove(root)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_two_ranks_of_batch_b_step_like_one_process_of_batch_2b(two_ranks, monkeypatch):
    monkeypatch.setattr(PatchSampler, "centres", _shared_centres)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        losses, state, device = _run(2 * BATCH)
    finally:
        torch.set_num_threads(threads)
    assert "processes" not in device
    assert two_ranks[0]["device"].endswith("x 2 processes")
    assert len(losses) == STEPS
    for rank in two_ranks:
        # every rank reports the global batch's loss, and ends with the same weights
        np.testing.assert_allclose(rank["losses"], losses, rtol=1e-6)
        for key, value in state.items():
            torch.testing.assert_close(rank["state"][key], value, atol=1e-6, rtol=0)
    # the run moved the weights (the comparison is not between two untouched networks)
    torch.manual_seed(0)
    start = UNet(UNetConfig(depth=2, base_channels=4, batch_norm=False)).state_dict()
    moved = max(float((state[k] - start[k]).abs().max()) for k in start)
    assert moved > 1e-4


def test_a_single_process_is_rank_0_of_1():
    assert current() == Distributed()
    group = Distributed()
    assert not group.active and group.main
    assert group.loss_count(torch.ones(2, 3)) is None
    assert group.agree(True, False, 1.5, torch.device("cpu")) == (True, False, 1.5)
    assert group.gather({"a": 1}) == [{"a": 1}]
    rng = np.random.default_rng(3)
    assert group.rank_rng(rng, 3) is rng


def test_ranks_draw_from_their_own_streams():
    a = Distributed(rank=1, world_size=2).rank_rng(np.random.default_rng(3), 3)
    b = Distributed(rank=1, world_size=2).rank_rng(np.random.default_rng(3), 3)
    c = np.random.default_rng(3)
    assert a.integers(1 << 30) == b.integers(1 << 30) != c.integers(1 << 30)


def test_launch_environment_from_torchrun_and_srun():
    assert launch_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Distributed(
        3, 4, 1
    )
    slurm = {"SLURM_PROCID": "2", "SLURM_NTASKS": "8", "SLURM_LOCALID": "2", "MASTER_ADDR": "n1"}
    assert launch_environment(slurm) == Distributed(2, 8, 2)
    # srun without a rendezvous address is not a data-parallel launch
    assert launch_environment({"SLURM_NTASKS": "8", "SLURM_PROCID": "2"}) == Distributed()
    with pytest.raises(ValueError, match="rank < world size"):
        launch_environment({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="integer"):
        launch_environment({"RANK": "a", "WORLD_SIZE": "2"})
