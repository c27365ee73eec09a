"""GPU figures: the paper preset's forward and training throughput in bf16, and tiled vs one pass.

Runs only where CUDA is available; elsewhere the section says that no GPU was measured. The FLOP
count of the network is counted by torch's FlopCounterMode (no GPU needed), so the fraction of
the GPU's peak can be reported next to the measured time.

Usage: ``python bench/bench_gpu.py [--quick]``
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_unet.core.model import TrainedModel, UNet, preset_config

#: dense bf16 tensor-core peak, TFLOP/s, of the GPUs this project is measured on
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def forward_flops(net: torch.nn.Module, size: int, channels: int = 1) -> int:
    """Count the floating-point operations of one forward pass on a ``size``² image."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, channels, size, size))
    return int(counter.get_total_flops())


def _timeit(fn, repeat: int) -> float:
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeat


def run(quick: bool = False) -> str:
    """Measure on the GPU and return the markdown section."""
    head = ["## GPU", "", "Command: `python bench/bench_gpu.py`", ""]
    config = preset_config("paper")
    size = config.admissible_size(512)
    flops = forward_flops(UNet(config), size)
    head.append(
        f"Paper preset ({UNet(config).n_parameters / 1e6:.2f} M parameters), input {size}²: "
        f"{flops / 1e9:.0f} GFLOP per forward pass (counted by torch's FlopCounterMode)."
    )
    if not torch.cuda.is_available():
        head += [
            "",
            "No GPU on the machine that made this report, and no GPU machine was lent to the "
            "session that wrote it, so no GPU timing is reported. Run `tox -e bench -- --only "
            "gpu` on a CUDA machine to fill this section.",
        ]
        return "\n".join(head)

    from napari_unet.core.device import describe_device
    from napari_unet.core.inference import predict_probabilities, predict_whole
    from napari_unet.core.progress import run_to_end

    device = torch.device("cuda")
    name = describe_device(device)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    net = UNet(config).to(device).eval().to(memory_format=torch.channels_last)
    rows = ["| batch | ms / image (bf16) | TFLOP/s | of peak |", "| --- | --- | --- | --- |"]
    for batch in (1, 8, 32) if not quick else (8,):
        x = torch.randn(batch, 1, size, size, device=device).to(memory_format=torch.channels_last)

        def step(x: torch.Tensor = x) -> None:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                net(x)

        seconds = _timeit(step, 5 if quick else 20) / batch
        tflops = flops / seconds / 1e12
        share = f"{tflops / peak:.0%}" if peak else "n/a"
        rows.append(f"| {batch} | {seconds * 1e3:.2f} | {tflops:.0f} | {share} |")

    train_net = UNet(config).to(device).train().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(train_net.parameters(), lr=1e-3, momentum=0.99)
    batch = 8
    x = torch.randn(batch, 1, size, size, device=device).to(memory_format=torch.channels_last)
    target = torch.randint(0, 2, (batch, config.output_size(size), config.output_size(size)))
    target = target.to(device)

    def train_step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(train_net(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = _timeit(train_step, 3 if quick else 10)
    train_tflops = 3 * flops * batch / seconds / 1e12
    rows_train = [
        "| samples/s (batch 8) | TFLOP/s (3x forward) | of peak |",
        "| --- | --- | --- |",
        f"| {batch / seconds:.1f} | {train_tflops:.0f} | "
        f"{f'{train_tflops / peak:.0%}' if peak else 'n/a'} |",
    ]

    big = 2048 if quick else 4096
    image = np.random.default_rng(0).random((big, big), dtype=np.float32)
    model = TrainedModel(UNet(preset_config("fast")))
    run_to_end(predict_probabilities(model, image[:512, :512], device="cuda"))
    t0 = time.perf_counter()
    whole = predict_whole(model, image, device="cuda")
    t_whole = time.perf_counter() - t0
    t0 = time.perf_counter()
    tiled = run_to_end(predict_probabilities(model, image, device="cuda"))
    t_tiled = time.perf_counter() - t0
    rows_tile = [
        "| image | one pass (s) | tiled, automatic tile (s) | ratio | max difference |",
        "| --- | --- | --- | --- | --- |",
        f"| {big}² fast preset | {t_whole:.3f} | {t_tiled:.3f} | {t_tiled / t_whole:.2f} | "
        f"{float(np.abs(whole - tiled).max()):.1e} |",
    ]
    return "\n".join(
        [
            *head,
            "",
            f"Device: {name}.",
            "",
            "Forward, paper preset:",
            "",
            *rows,
            "",
            "Training step, paper preset, SGD:",
            "",
            *rows_train,
            "",
            *rows_tile,
        ]
    )


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
