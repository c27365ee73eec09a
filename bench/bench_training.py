"""Training speed: data share of a step, samples/s of both presets, CPU levers one by one.

Usage::

    python bench/bench_training.py            # full run (~6 minutes on a 2-core CPU)
    python bench/bench_training.py --quick    # fewer steps, no torch.compile

A training step is what :func:`napari_unet.core.training.train` does per iteration: cut a batch of
patches (:class:`~napari_unet.core.training.PatchSampler`), augment it on the device with one
sampling grid (:func:`~napari_unet.core.training.augment_batch`), forward, weighted
cross-entropy, backward, optimiser step. The pieces are timed separately here, from the same
core functions. The variants of each table run interleaved, round after round, and each figure
is the median over rounds, so that other work on a shared machine hits them alike.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from napari_unet.core.device import describe_device
from napari_unet.core.model import UNet, preset_config
from napari_unet.core.training import TrainSettings, train
from napari_unet.core.training.augment import AugmentSettings, augment_batch, context_margin
from napari_unet.core.training.data import PatchSampler, patch_geometry, prepare_samples
from napari_unet.core.training.loop import weighted_cross_entropy
from napari_unet.sample_data import make_touching_cells


class _Trainer:
    """The pieces of one training step for a preset and a set of levers."""

    def __init__(
        self,
        preset: str,
        batch: int,
        patch: int,
        *,
        channels_last: bool = False,
        amp: bool = False,
        compile: bool = False,
        seed: int = 0,
    ) -> None:
        image, labels = make_touching_cells((384, 384), 80, seed=0)
        self.samples = prepare_samples(image, labels)
        torch.manual_seed(seed)
        self.config = preset_config(preset)
        self.in_size, self.out_size = patch_geometry(self.config, patch)
        self.aug = AugmentSettings()
        crop = self.in_size + 2 * context_margin(self.in_size, self.aug)
        self.sampler = PatchSampler(self.samples, crop, "cpu", np.random.default_rng(seed))
        self.generator = torch.Generator().manual_seed(seed)
        self.batch = batch
        self.net = UNet(self.config)
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.amp = amp
        self.forward: Callable[[torch.Tensor], torch.Tensor] = self.net
        self.compile_seconds = 0.0
        if compile:
            self.forward = torch.compile(self.net)
        self.optimizer = (
            torch.optim.SGD(self.net.parameters(), lr=1e-4, momentum=0.99)
            if preset == "paper"
            else torch.optim.Adam(self.net.parameters(), lr=1e-3)
        )
        self.net.train()

    def data(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, w = self.sampler.sample(self.batch)
        x, y, w = augment_batch(
            x,
            y,
            w,
            self.aug,
            out_size=self.in_size,
            target_size=self.out_size,
            generator=self.generator,
        )
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y, w

    def step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> float:
        x, y, w = batch
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp):
            logits = self.forward(x)
        loss = weighted_cross_entropy(logits, y, w)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def timed(self) -> tuple[float, float]:
        """(data seconds, network seconds) of one full step."""
        t0 = time.perf_counter()
        batch = self.data()
        t1 = time.perf_counter()
        self.step(batch)
        return t1 - t0, time.perf_counter() - t1


def _rounds(
    trainers: dict[str, _Trainer], rounds: int, steps: dict[str, int]
) -> dict[str, list[tuple[float, float]]]:
    """Interleave: each round runs ``steps[name]`` steps of each variant.

    Returns, per variant and round, the median (data seconds, network seconds) of its steps.
    """
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in trainers}
    for _ in range(rounds):
        for name, t in trainers.items():
            times = [t.timed() for _ in range(steps[name])]
            out[name].append(
                (
                    statistics.median(a for a, _ in times),
                    statistics.median(b for _, b in times),
                )
            )
    return out


def _warm(trainer: _Trainer, steps: int = 2) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.step(trainer.data())
    return time.perf_counter() - t0


def _engine_rate(preset: str, iterations: int, **overrides) -> tuple[float, str]:
    """samples/s reported by train() itself at its last event."""
    image, labels = make_touching_cells((384, 384), 80, seed=0)
    settings = TrainSettings.for_preset(
        preset,
        iterations=iterations,
        device="cpu",
        seed=0,
        validation_fraction=0.0,
        **overrides,
    )
    last = None
    for event in train(image, labels, settings=settings):
        last = event
    assert last is not None
    return last.samples_per_second, last.device


def run(quick: bool = False) -> str:
    """Measure and return the markdown section (in a worker thread, as the Train widget)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_measure, quick).result()


def _measure(quick: bool) -> str:
    rounds = 3 if quick else 5
    steps = 2 if quick else 4
    lines = [
        "## Training speed (bench/bench_training.py)",
        "",
        f"Command: `python bench/bench_training.py{' --quick' if quick else ''}`. Device: "
        f"{describe_device('cpu')}. Synthetic sample 384 x 384, all augmentations on. All "
        f"variants run interleaved ({rounds} rounds of {steps} steps each, 1 for the paper "
        "preset, after warm-up); figures are medians over rounds. Everything "
        "runs in a worker thread, as in the Train widget. The CPU was shared with other jobs "
        "while this ran: absolute figures are pessimistic, ratios measured side by side hold "
        "better.",
        "",
    ]

    # Every variant, both presets included, runs in one interleaved loop.
    variants: dict[str, tuple[str, int, int, dict]] = {
        "fast": ("fast", 4, 128, {}),
        "paper": ("paper", 1, 388, {}),
        "channels_last": ("fast", 4, 128, {"channels_last": True}),
        "bf16 autocast": ("fast", 4, 128, {"amp": True}),
    }
    if not quick:
        variants["torch.compile"] = ("fast", 4, 128, {"compile": True})
    trainers: dict[str, _Trainer] = {}
    compile_note = ""
    for name, (preset, batch, patch, kw) in variants.items():
        trainers[name] = _Trainer(preset, batch=batch, patch=patch, **kw)
        warm = _warm(trainers[name], 1 if preset == "paper" else 2)
        if kw.get("compile"):
            compile_note = f" torch.compile's first two steps (compilation) took {warm:.0f} s."
    steps_of = {name: 1 if name == "paper" else steps for name in trainers}
    res = _rounds(trainers, rounds, steps_of)

    # -- 1. data share and samples/s of both presets ------------------------------------------
    lines += [
        "| preset | input -> output | batch | data + augmentation (ms) | network step (ms) "
        "| data share | samples/s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ("fast", "paper"):
        t = trainers[name]
        data = statistics.median(a for a, _ in res[name])
        net = statistics.median(b for _, b in res[name])
        lines.append(
            f"| {name} | {t.in_size} -> {t.out_size} px | {t.batch} | {data * 1e3:.1f} | "
            f"{net * 1e3:.0f} | {100 * data / (data + net):.1f}% | {t.batch / (data + net):.2f} |"
        )
    engine_its = 10 if quick else 30
    rate, device = _engine_rate("fast", engine_its)
    lines += [
        "",
        f"`train()` itself, fast preset defaults, {engine_its} iterations (run after the loop "
        f"above): {rate:.1f} samples/s as reported by its last TrainEvent ({device}).",
        "",
    ]

    # -- 2. CPU levers one by one --------------------------------------------------------------
    base = statistics.median(a + b for a, b in res["fast"])
    lines += [
        "CPU levers, fast preset, batch 4, 128 x 128 patches, one at a time:",
        "",
        "| variant | step (ms) | samples/s | speed vs default |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, times in res.items():
        if name == "paper":
            continue
        label = "fp32, contiguous (default)" if name == "fast" else name
        step = statistics.median(a + b for a, b in times)
        lines.append(f"| {label} | {step * 1e3:.0f} | {4 / step:.2f} | {base / step:.2f}x |")
    lines += [
        "",
        "Kept on the CPU only where the ratio is clearly above 1 (TrainSettings `amp`, "
        "`channels_last` default to on for CUDA only, `compile` to off)." + compile_note,
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
