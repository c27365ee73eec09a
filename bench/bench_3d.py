"""3D volumes: quality after a short CPU training, and 3D inference speed.

Usage::

    python bench/bench_3d.py                 # train 6 minutes, score, time inference
    python bench/bench_3d.py --minutes 2     # a shorter run
    python bench/bench_3d.py --iterations 300 --quality-only   # a fixed number of steps
    python bench/bench_3d.py --speed-only    # only the inference speed (Mvoxel/s)

On a shared CPU run it with ``OMP_NUM_THREADS=1``: with other jobs on the cores, one torch thread
made a 3D training step about 8x faster than two here (3D convolutions' backward pass).

Quality: a synthetic training volume of touching nuclei with anisotropic z
(:func:`napari_unet.sample_data.make_touching_nuclei_3d`, voxel 2.5 x 1 x 1) is annotated on every
third slice only (the rest is unlabelled, as a user would paint a few slices); a 3D fast-preset
network is trained on it with the 3D default settings (``TrainSettings.for_preset('fast',
spatial_dims=3)``) for ``--minutes`` (or ``--iterations``) on the CPU and scored on a second
volume (another seed) with full ground truth by 3D AP@0.5 (one-to-one matching of 3D objects).
Beside it a
3D Otsu threshold + distance-transform watershed (in physical units) as a classical reference.

Speed: the 3D fast network (untrained weights) predicts a 40 x 160 x 160 volume through
:func:`napari_unet.core.inference.predict_probabilities` (exact tiling, best of 2), in megavoxels
per second, with the default runtime and with torch.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

from napari_unet.core.inference import predict_probabilities, segment
from napari_unet.core.model import TrainedModel, UNet, preset_config
from napari_unet.core.progress import run_to_end
from napari_unet.core.training import TrainSettings, run_training
from napari_unet.core.training.metrics import average_precision
from napari_unet.sample_data import make_touching_nuclei_3d

SPACING = (2.5, 1.0, 1.0)
TRAIN_SHAPE = (32, 128, 128)
TEST_SHAPE = (40, 160, 160)


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def otsu_watershed(image: np.ndarray) -> np.ndarray:
    """3D Otsu foreground split by a watershed on the distance transform (physical units)."""
    fg = image > threshold_otsu(image)
    dist = ndi.distance_transform_edt(fg, sampling=SPACING)
    peaks = (dist == ndi.maximum_filter(dist, size=(3, 7, 7))) & (dist > 2.0)
    markers, _ = ndi.label(peaks)
    return watershed(-dist, markers, mask=fg).astype(np.int32)


def quality(
    minutes: float | None, patch: int | None = None, iterations: int | None = None
) -> list[str]:
    """Train on a sparsely annotated volume for ``minutes`` (or ``iterations`` steps); 3D
    AP@0.5 on another volume.

    The settings are the 3D defaults of the fast preset (``TrainSettings.for_preset('fast',
    spatial_dims=3)``); ``patch`` overrides their in-plane patch size.
    """
    image, labels = make_touching_nuclei_3d(TRAIN_SHAPE, n_nuclei=40, spacing=SPACING, seed=0)
    sparse = np.zeros_like(labels)
    sparse[::3] = labels[::3]
    test, truth = make_touching_nuclei_3d(TEST_SHAPE, n_nuclei=60, spacing=SPACING, seed=1)
    given = {} if patch is None else {"patch_size": patch}
    settings = TrainSettings.for_preset(
        "fast",
        minutes=None if iterations else minutes,
        iterations=iterations or None,
        device="cpu",
        seed=0,
        spatial_dims=3,
        voxel_size=SPACING,
        **given,
    )
    t0 = time.perf_counter()
    model = run_training(image, sparse, settings=settings)
    trained = time.perf_counter() - t0
    pred = run_to_end(segment(model, test, device="cpu"))
    ap = float(average_precision(truth, pred, 0.5))
    ap_otsu = float(average_precision(truth, otsu_watershed(test), 0.5))
    summary = model.training["summary"]
    return [
        "| method | 3D AP@0.5 | objects (truth) | training |",
        "| --- | --- | --- | --- |",
        f"| U-Net 3D fast (base {model.config.base_channels}), "
        f"{int(np.count_nonzero(sparse.any(axis=(1, 2))))} of {TRAIN_SHAPE[0]} slices annotated "
        f"| {ap:.3f} | {int(pred.max())} ({int(truth.max())}) | {trained / 60:.1f} min, "
        f"{summary['iterations_done']} iterations of batches of {settings.batch_size} x "
        f"{summary['input_size']} px patches (context {summary['context']} px) |",
        f"| 3D Otsu + watershed | {ap_otsu:.3f} | - | - |",
    ]


def speed() -> list[str]:
    """Mvoxel/s of the 3D fast network over a 40 x 160 x 160 volume."""
    model = TrainedModel(UNet(preset_config("fast", spatial_dims=3, voxel_size=SPACING)).eval())
    volume = np.random.default_rng(0).random(TEST_SHAPE).astype(np.float32)
    rows = ["| runtime | seconds | Mvoxel/s |", "| --- | --- | --- |"]
    for runtime in ("auto", "torch"):
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            run_to_end(predict_probabilities(model, volume, device="cpu", runtime=runtime))
            best = min(best, time.perf_counter() - t0)
        rows.append(f"| {runtime} | {best:.1f} | {volume.size / best / 1e6:.2f} |")
    return rows


def main() -> None:
    """Run the benchmark and print markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="training time (default 6)")
    parser.add_argument(
        "--patch", type=int, default=None, help="in-plane patch (default: the 3D default)"
    )
    parser.add_argument(
        "--iterations", type=int, default=None, help="train this many steps instead of minutes"
    )
    parser.add_argument("--speed-only", action="store_true", help="only the inference speed")
    parser.add_argument("--quality-only", action="store_true", help="no inference speed")
    args = parser.parse_args()
    print(f"machine: {_load()} at the start")
    if not args.speed_only:
        print("\n".join(quality(args.minutes, args.patch, args.iterations)))
        print(f"machine: {_load()} after training")
    if not args.quality_only:
        print("\n".join(speed()))
    print(f"machine: {_load()} at the end")


if __name__ == "__main__":
    main()
