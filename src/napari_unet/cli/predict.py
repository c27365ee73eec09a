"""``napari-unet predict``: segment an image or a stack with a trained model, headless.

The image is tiled exactly (see :mod:`napari_unet.core.inference.predict`): the result equals one
whole-image pass. A zarr input is read lazily, tile by tile; a ``.zarr`` output is written chunk
by chunk (its chunks follow the tile layout), into a temporary store that is renamed into place
at the end, so a crash never leaves half an output.

With ``--scheduler ADDRESS`` the work runs on a dask.distributed cluster: every output chunk of
the probability map is a task (:func:`napari_unet.core.inference.predict_region`, with the tile
layout and each slice's normalisation fixed up front, so the chunks put together equal the
local run), and the client labels each slice as its chunks arrive. Workers read a zarr input
from its path (it must be reachable from them); other inputs are sent to them.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.cli import UsageError

__all__ = ["add_parser", "run"]

logger = logging.getLogger(__name__)

_WRITABLE = (".tif", ".tiff", ".npy", ".zarr")
#: Target edge of an output zarr chunk (rounded to whole tile strides).
CHUNK = 1024


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``predict`` sub-command.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The command line's sub-parsers.

    Returns
    -------
    argparse.ArgumentParser
        The ``predict`` parser.
    """
    parser = subparsers.add_parser(
        "predict",
        help="segment an image or a stack into instance labels with a trained model",
        description=(
            "Segment a 2D image, a multichannel image or a (Z, Y, X) stack with a trained "
            "napari-unet model: exact overlap-tile inference (the result equals one whole-image "
            "pass), threshold, connected components, cells grown back across the training gap, "
            "small objects dropped; labels are unique across the stack. A .zarr input is read "
            "lazily and a .zarr output written chunk by chunk."
        ),
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="model file (.pt)")
    parser.add_argument(
        "input", type=Path, metavar="INPUT", help="image (.tif, .tiff, .png, .npy or .zarr)"
    )
    parser.add_argument(
        "--out",
        "-o",
        type=Path,
        required=True,
        metavar="LABELS",
        help="where to write the int32 labels (.tif, .tiff, .npy or .zarr)",
    )
    parser.add_argument(
        "--probabilities",
        type=Path,
        metavar="OUT",
        help="also write the float32 foreground probability (.tif, .tiff, .npy or .zarr)",
    )
    parser.add_argument(
        "--tile",
        type=int,
        metavar="N",
        help=(
            "edge of the INPUT tile in pixels, halo included, rounded up to the nearest size "
            "the network accepts (default: the largest tile the memory at hand holds)"
        ),
    )
    parser.add_argument(
        "--batch", type=int, metavar="N", help="tiles per forward pass (default: from memory)"
    )
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)"
    )
    parser.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: mean over the 8 flips and 90-degree rotations (8x time)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="foreground where the probability exceeds this (default: 0.5)",
    )
    parser.add_argument(
        "--min-size",
        type=int,
        metavar="PIXELS",
        help="drop objects smaller than this (default: the model's, else 16 pixels)",
    )
    parser.add_argument(
        "--channel-axis",
        type=int,
        metavar="AXIS",
        help="axis of the channels in a multichannel image (e.g. 0 for (C, Y, X))",
    )
    parser.add_argument(
        "--rgb", action="store_true", help="the last axis holds RGB(A) colour channels"
    )
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help=(
            "run on a dask.distributed cluster at this address (e.g. tcp://host:8786); "
            "a zarr input must be readable by the workers at the same path"
        ),
    )
    return parser


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------


class _Output:
    """An output array: numpy (written at the end) or a zarr store (written chunk by chunk into
    a temporary store that replaces the destination at the end)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...]):
        self.path = path
        self.zarr = path.suffix.lower() == ".zarr"
        self.tmp: Path | None = None
        if self.zarr:
            import zarr

            self.tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
            self.array: Any = zarr.open_array(
                str(self.tmp), mode="w", shape=shape, chunks=chunks, dtype=dtype
            )
        else:
            self.array = np.zeros(shape, dtype)

    def commit(self) -> None:
        """Put the finished output in place."""
        if not self.zarr:
            from napari_unet.cli.files import write_image

            write_image(self.path, self.array)
            return
        assert self.tmp is not None
        old = None
        if self.path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.old.", dir=self.path.parent))
            os.replace(self.path, old / "store")
        os.replace(self.tmp, self.path)
        self.tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        """Remove a temporary store left by a failure."""
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def _check_out_path(path: Path, option: str) -> None:
    if path.suffix.lower() not in _WRITABLE:
        raise UsageError(f"{option} must end in {', '.join(_WRITABLE)}, got {path.name!r}")
    if not path.parent.exists():
        raise FileNotFoundError(f"folder for {option} does not exist: {path.parent}")


def _chunk(size: int, stride: int, count: int) -> int:
    if count == 1:
        return size
    return min(size, stride * max(1, CHUNK // stride))


# ----------------------------------------------------------------------------------------------
# Distributed run
# ----------------------------------------------------------------------------------------------


def _open_on_worker(ref: Any) -> Any:
    if isinstance(ref, str):
        from napari_unet.cli.files import read_image

        return read_image(ref)
    return ref


def _normalization_task(model: Any, ref: Any, z: int, options: dict[str, Any]) -> Any:
    from napari_unet.core.inference import slice_normalization

    return slice_normalization(
        model, _open_on_worker(ref), z, channel_axis=options["channel_axis"], rgb=options["rgb"]
    )


def _region_task(
    model: Any,
    ref: Any,
    z: int,
    rows: tuple[int, int],
    cols: tuple[int, int],
    normalization: Any,
    options: dict[str, Any],
) -> np.ndarray:
    from napari_unet.core.inference import predict_region

    return predict_region(
        model,
        _open_on_worker(ref),
        z=z,
        rows=rows,
        cols=cols,
        normalization=normalization,
        **options,
    )


def _run_distributed(
    address: str,
    model: Any,
    image: Any,
    input_path: Path,
    plan: Any,
    chunks: tuple[int, int],
    options: dict[str, Any],
    write_prob: Callable[[int, tuple[int, int], tuple[int, int], np.ndarray], None],
    slice_ready: Callable[[int, np.ndarray], None],
) -> None:
    from dask.distributed import Client, as_completed

    from napari_unet.cli.files import is_zarr_path

    client = Client(address)
    try:
        logger.info("running on the dask cluster at %s", address)
        model_ref = client.scatter(model, broadcast=True)
        ref = str(input_path) if is_zarr_path(input_path) else client.scatter(np.asarray(image))
        norm_options = {"channel_axis": options["channel_axis"], "rgb": options["rgb"]}
        h, w = plan.layout.y.size, plan.layout.x.size
        futures = {}
        pending_chunks = {}
        for z in range(plan.n_slices):
            norm = client.submit(_normalization_task, model_ref, ref, z, norm_options, pure=False)
            regions = [
                ((y, min(y + chunks[0], h)), (x, min(x + chunks[1], w)))
                for y in range(0, h, chunks[0])
                for x in range(0, w, chunks[1])
            ]
            pending_chunks[z] = len(regions)
            for rows, cols in regions:
                fut = client.submit(
                    _region_task, model_ref, ref, z, rows, cols, norm, options, pure=False
                )
                futures[fut] = (z, rows, cols)
        buffers: dict[int, np.ndarray] = {}
        complete: set[int] = set()
        next_z = 0
        for fut in as_completed(list(futures)):
            z, rows, cols = futures.pop(fut)
            data = fut.result()
            write_prob(z, rows, cols, data)
            buf = buffers.setdefault(z, np.empty((h, w), np.float32))
            buf[rows[0] : rows[1], cols[0] : cols[1]] = data
            pending_chunks[z] -= 1
            if pending_chunks[z] == 0:
                complete.add(z)
            while next_z in complete:  # label in slice order: the same numbering as locally
                slice_ready(next_z, buffers.pop(next_z))
                next_z += 1
    finally:
        client.close()


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Segment the input and write the outputs.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments of the ``predict`` sub-command.

    Returns
    -------
    int
        0 on success.

    Raises
    ------
    ValueError, UsageError, FileNotFoundError
        On unreadable or unsuitable input, or an unwritable output path.
    """
    from napari_unet.cli.files import read_image
    from napari_unet.core.inference import (
        DEFAULT_MIN_SIZE,
        prediction_plan,
        probabilities_to_labels,
        segment,
    )
    from napari_unet.core.model_files import load_model
    from napari_unet.core.progress import run_to_end

    _check_out_path(args.out, "--out")
    if args.probabilities is not None:
        _check_out_path(args.probabilities, "--probabilities")
        if args.probabilities.resolve() == args.out.resolve():
            raise UsageError("--probabilities and --out must be different files")
    for name in ("tile", "batch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be a positive integer, got {value}")
    if not 0.0 <= args.threshold < 1.0:
        raise UsageError(f"--threshold must be in [0, 1), got {args.threshold}")
    if args.min_size is not None and args.min_size < 0:
        raise UsageError(f"--min-size must be 0 or more, got {args.min_size}")

    model = load_model(args.model)
    image = read_image(args.input)
    options = {
        "channel_axis": args.channel_axis,
        "rgb": args.rgb,
        "device": args.device,
        "tta": args.tta,
    }
    plan = prediction_plan(
        model, image, tile=args.tile, batch_size=args.batch, **_without(options, "tta")
    )
    min_size = args.min_size
    if min_size is None:
        min_size = int(model.training.get("min_size", DEFAULT_MIN_SIZE))
    lay = plan.layout
    yx_chunks = (
        _chunk(lay.y.size, lay.y.stride, lay.y.count),
        _chunk(lay.x.size, lay.x.stride, lay.x.count),
    )
    chunks = (1, *yx_chunks) if plan.stack else yx_chunks
    logger.info(
        "%s: %s, %d tile(s) of %dx%d per slice, batch %d, on %s",
        args.input,
        " x ".join(map(str, plan.shape)),
        lay.count,
        *plan.tile,
        plan.batch_size,
        plan.device,
    )

    outputs = [_Output(args.out, plan.shape, "int32", chunks)]
    if args.probabilities is not None:
        outputs.append(_Output(args.probabilities, plan.shape, "float32", chunks))
    labels_out = outputs[0].array
    prob_out = outputs[1].array if len(outputs) > 1 else None
    started = time.perf_counter()
    next_label = 1
    try:
        if args.scheduler:

            def write_prob(z: int, rows: tuple, cols: tuple, data: np.ndarray) -> None:
                if prob_out is not None:
                    index = (slice(*rows), slice(*cols))
                    prob_out[(z, *index) if plan.stack else index] = data

            def slice_ready(z: int, prob: np.ndarray) -> None:
                nonlocal next_label
                labels = probabilities_to_labels(
                    prob,
                    threshold=args.threshold,
                    gap=model.gap,
                    min_size=min_size,
                    start_label=next_label,
                )
                if labels.size and labels.max() >= next_label:
                    next_label = int(labels.max()) + 1
                if plan.stack:
                    labels_out[z] = labels
                else:
                    labels_out[...] = labels

            region_options = {
                **options,
                "tile": plan.tile,
                "batch_size": plan.batch_size,
            }
            _run_distributed(
                args.scheduler,
                model,
                image,
                args.input,
                plan,
                yx_chunks,
                region_options,
                write_prob,
                slice_ready,
            )
        else:
            last = [0.0]

            def progress(event: Any) -> None:
                nonlocal next_label
                if event.stage == "labels":
                    labels = event.item.labels
                    next_label = max(next_label, int(labels.max(initial=0)) + 1)
                    return
                now = time.perf_counter()
                if event.done == event.total or now - last[0] > 5:
                    last[0] = now
                    logger.info("%d of %d tiles", event.done, event.total)

            run_to_end(
                segment(
                    model,
                    image,
                    threshold=args.threshold,
                    min_size=min_size,
                    tile=plan.tile,
                    batch_size=plan.batch_size,
                    out=labels_out,
                    probabilities_out=prob_out,
                    **options,
                ),
                progress,
            )
        for output in outputs:
            output.commit()
    finally:
        for output in outputs:
            output.discard()
    n_objects = next_label - 1
    print(
        f"wrote {args.out}: {' x '.join(map(str, plan.shape))} int32, {n_objects} objects "
        f"in {time.perf_counter() - started:.1f} s"
        + (f"; probabilities in {args.probabilities}" if args.probabilities else "")
    )
    return 0


def _without(options: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in keys}
