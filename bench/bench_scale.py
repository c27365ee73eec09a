"""Training past one process (issue #16): peak memory at scale, samples/s of 1 and 2 processes.

Usage::

    python bench/bench_scale.py memory [--slices 100] [--size 2048] [--folder DIR]
    python bench/bench_scale.py speed [--iterations 40] [--rounds 2] [--device cpu]

``memory`` writes ``--slices`` annotated ``--size``² slices (touching cells, uint16 image and
int32 labels) to two zarr stores in ``--folder`` (kept for the next run), then in a fresh process
reads them as the command line does (lazily, through dask) and prepares and trains 3 steps with
the default settings; a thread samples ``/proc/self/status`` to report the peak resident memory
(``VmHWM``), and the peaks of its anonymous and file-backed parts (memory-mapped prepared data
are file pages the system can drop).

``speed`` trains the fast preset (batch 4 per process, 128 px patches, no validation) on one
512² image: 1 process with 1 thread, 1 process with 2 threads, and 2 processes of 1 thread under
``torchrun`` (gloo), and prints the patches per second of the whole run (all processes) over the
steps after the first 10. The variants run interleaved, ``--rounds`` times; the median is shown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


# ---------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------


def make_data(folder: Path, slices: int, size: int) -> tuple[Path, Path]:
    """Annotated slices in two zarr stores (made once: 4 distinct slices, rolled)."""
    import zarr

    from napari_unet.sample_data import make_touching_cells

    image_path, labels_path = folder / "image.zarr", folder / "labels.zarr"
    if (folder / "done.json").exists():
        done = json.loads((folder / "done.json").read_text())
        if done == {"slices": slices, "size": size}:
            return image_path, labels_path
    n_cells = max(4, size * size // 2800)
    base = [make_touching_cells((size, size), n_cells=n_cells, seed=s) for s in range(4)]
    chunks = (1, min(size, 512), min(size, 512))
    image = zarr.create_array(
        image_path, shape=(slices, size, size), chunks=chunks, dtype="u2", overwrite=True
    )
    labels = zarr.create_array(
        labels_path, shape=(slices, size, size), chunks=chunks, dtype="i4", overwrite=True
    )
    for z in range(slices):
        im, lab = base[z % 4]
        shift = (37 * z) % size
        image[z] = np.roll(im, shift, axis=1)
        labels[z] = np.roll(lab, shift, axis=1)
    (folder / "done.json").write_text(json.dumps({"slices": slices, "size": size}))
    return image_path, labels_path


class PeakMemory:
    """Samples this process's resident memory (``/proc/self/status``) every ``interval`` s."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> dict[str, int]:
        values = {}
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in ("RssAnon", "RssFile", "VmRSS", "VmHWM"):
                    values[key] = int(line.split()[1]) * 1024
        return values

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, value in self._read().items():
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], value)
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak["VmHWM"] = self._read()["VmHWM"]


def memory_child(folder: Path) -> dict[str, float]:
    """Read the zarr stores as the CLI does, prepare and train 3 steps; the memory figures."""
    from napari_unet.cli.files import read_image
    from napari_unet.core.training import TrainSettings, run_training

    with PeakMemory() as peak:
        t0 = time.perf_counter()
        images = read_image(str(folder / "image.zarr"))
        labels = read_image(str(folder / "labels.zarr"))
        times: list[float] = []
        settings = TrainSettings(iterations=3, device="cpu", seed=0)
        model = run_training(
            images, labels, settings=settings, callback=lambda e: times.append(time.perf_counter())
        )
        end = time.perf_counter()
    gib = {key: value / 2**30 for key, value in peak.peak.items()}
    return {
        "slices": int(images.shape[0]),
        "size": int(images.shape[-1]),
        "prepare_s": times[0] - t0,
        "steps_s": end - times[0],
        "peak_rss_gib": gib["VmHWM"],
        "peak_anon_gib": gib["RssAnon"],
        "peak_file_gib": gib["RssFile"],
        "annotated_pixels": model.training["summary"]["annotated_pixels"],
    }


def memory(args: argparse.Namespace) -> None:
    folder = Path(args.folder or tempfile.mkdtemp(prefix="bench-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    make_data(folder, args.slices, args.size)
    print(f"data in {folder} ({time.perf_counter() - t0:.0f} s to make)", flush=True)
    child = [sys.executable, __file__, "memory-child", "--folder", str(folder)]
    out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    dense = result["annotated_pixels"] * 8 / 2**30
    print(
        "| slices | size | peak resident (VmHWM) | anonymous | file-backed | prepare | 3 steps "
        "| one int64 per annotated pixel would be |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {result['slices']} | {result['size']}² | {result['peak_rss_gib']:.2f} GiB "
        f"| {result['peak_anon_gib']:.2f} GiB | {result['peak_file_gib']:.2f} GiB "
        f"| {result['prepare_s']:.0f} s | {result['steps_s']:.1f} s | {dense:.2f} GiB |"
    )


# ---------------------------------------------------------------------------------------------
# speed
# ---------------------------------------------------------------------------------------------


def speed_child(iterations: int, device: str) -> None:
    """Train on one 512² image (under torchrun or alone); rank 0 prints patches/s as JSON."""
    import torch

    from napari_unet.core.training import TrainSettings, run_training
    from napari_unet.core.training.distributed import process_group
    from napari_unet.sample_data import make_touching_cells

    image, labels = make_touching_cells((512, 512), n_cells=100, seed=0)
    settings = TrainSettings(
        iterations=iterations, device=device, seed=0, validation_fraction=0.0, batch_size=4
    )
    with process_group(device) as group:
        times: list[float] = []
        run_training(
            image, labels, settings=settings, callback=lambda e: times.append(time.perf_counter())
        )
        if group.main:
            warm = 10
            steps = len(times) - warm
            rate = steps * settings.batch_size * group.world_size / (times[-1] - times[warm])
            print(
                json.dumps(
                    {
                        "processes": group.world_size,
                        "threads": torch.get_num_threads(),
                        "rate": rate,
                    }
                )
            )


def _run_variant(processes: int, threads: int, iterations: int, device: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE.parent / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    child = [__file__, "speed-child", "--iterations", str(iterations), "--device", device]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += ["--nproc_per_node", str(processes), *child]
    else:
        command = [sys.executable, *child]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["rate"])


def speed(args: argparse.Namespace) -> None:
    variants = [(1, 1), (1, 2), (2, 1)] if args.device == "cpu" else [(1, 1)]
    rates: dict[tuple[int, int], list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for processes, threads in variants:
            rate = _run_variant(processes, threads, args.iterations, args.device)
            rates[(processes, threads)].append(rate)
    print("| processes x threads | patches/s (all processes) | rounds |")
    print("| --- | --- | --- |")
    for (processes, threads), values in rates.items():
        text = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {processes} x {threads} | {statistics.median(values):.1f} | {text} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["memory", "memory-child", "speed", "speed-child"])
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.what == "memory":
        memory(args)
    elif args.what == "memory-child":
        print(json.dumps(memory_child(args.folder)))
    elif args.what == "speed":
        from _machine import machine_table

        print(machine_table())
        speed(args)
    else:
        speed_child(args.iterations, args.device)


if __name__ == "__main__":
    main()
