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
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.cli import UsageError
from napari_unet.cli.options import add_channel_layout, add_command, add_device, add_output

__all__ = ["DESCRIPTION", "HELP", "add_parser", "run"]

logger = logging.getLogger(__name__)

_WRITABLE = (".tif", ".tiff", ".npy", ".zarr")
#: Target edge of an output zarr chunk (rounded to whole tile strides).
CHUNK = 1024
#: Seconds between two progress lines in the log.
LOG_EVERY = 5.0

#: the line in ``napari-unet --help``
HELP = "segment an image or a stack into instance labels with a trained model"
DESCRIPTION = (
    "Segment a 2D image, a multichannel image or a (Z, Y, X) stack with a trained "
    "napari-unet model: exact overlap-tile inference (the result equals one whole-image "
    "pass), threshold, connected components, cells grown back across the training gap, "
    "small objects dropped; labels are unique across the stack. A .zarr input is read "
    "lazily and a .zarr output written chunk by chunk."
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``predict`` sub-command to ``subparsers`` and return its parser."""
    parser = add_command(subparsers, "predict", help=HELP, description=DESCRIPTION)
    parser.add_argument("model", type=Path, metavar="MODEL", help="model file (.pt)")
    parser.add_argument(
        "input", type=Path, metavar="INPUT", help="image (.tif, .tiff, .png, .npy or .zarr)"
    )
    add_output(
        parser,
        metavar="LABELS",
        help="where to write the int32 labels (.tif, .tiff, .npy or .zarr)",
    )
    parser.add_argument(
        "--probabilities",
        type=Path,
        metavar="OUT",
        help="also write the float32 foreground probability (.tif, .tiff, .npy or .zarr)",
    )
    _add_tiling(parser)
    _add_labelling(parser)
    add_channel_layout(parser)
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help=(
            "run on a dask.distributed cluster at this address (e.g. tcp://host:8786); "
            "a zarr input must be readable by the workers at the same path"
        ),
    )
    return parser


def _add_tiling(parser: argparse.ArgumentParser) -> None:
    """``--tile``, ``--batch``, ``--device`` and ``--tta``: how the network runs."""
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
    add_device(parser)
    parser.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: mean over the 8 flips and 90-degree rotations (8x time)",
    )


def _add_labelling(parser: argparse.ArgumentParser) -> None:
    """``--threshold`` and ``--min-size``: from probabilities to labels."""
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


# ----------------------------------------------------------------------------------------------
# What one run needs, and its outputs
# ----------------------------------------------------------------------------------------------


@dataclass
class _Job:
    """One prediction: the model, the image, the tiling, the labelling and the outputs."""

    model: Any
    image: Any
    plan: Any
    #: channel_axis, rgb, device and tta, as the core functions take them
    options: dict[str, Any]
    threshold: float
    min_size: int
    labels: Any = None
    probabilities: Any = None

    def chunks(self) -> tuple[int, int]:
        """``(Y, X)`` edge of an output zarr chunk: about :data:`CHUNK`, whole tile strides."""
        return _chunk(self.plan.layout.y), _chunk(self.plan.layout.x)

    def write_probabilities(self, z: int, rows: tuple, cols: tuple, data: np.ndarray) -> None:
        """Write a rectangle of slice ``z``'s probabilities, if they are wanted."""
        if self.probabilities is not None:
            index = (slice(*rows), slice(*cols))
            self.probabilities[(z, *index) if self.plan.stack else index] = data


def _chunk(axis: Any) -> int:
    if axis.count == 1:
        return axis.size
    return min(axis.size, axis.stride * max(1, CHUNK // axis.stride))


@contextmanager
def _output(path: Path, shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...]) -> Iterator:
    """An output array that lands at ``path`` whole when the block ends without an error.

    A ``.zarr`` output is written chunk by chunk into a temporary store beside ``path``
    (:func:`~napari_unet.core.atomic.atomic_path`); other formats are kept in memory and written
    at the end (:func:`~napari_unet.cli.files.write_image`, atomic too).
    """
    from napari_unet.cli.files import write_image
    from napari_unet.core.atomic import atomic_path

    if path.suffix.lower() != ".zarr":
        array = np.zeros(shape, dtype)
        yield array
        write_image(path, array)
        return
    import zarr

    with atomic_path(path, folder=True) as tmp:
        yield zarr.open_array(str(tmp), mode="w", shape=shape, chunks=chunks, dtype=dtype)


def _check_out_path(path: Path, option: str) -> None:
    if path.suffix.lower() not in _WRITABLE:
        raise UsageError(f"{option} must end in {', '.join(_WRITABLE)}, got {path.name!r}")
    if not path.parent.exists():
        raise FileNotFoundError(f"folder for {option} does not exist: {path.parent}")


def _check_args(args: argparse.Namespace) -> None:
    """Raise UsageError (or FileNotFoundError) on options that cannot work, before any work."""
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


def _plan_job(args: argparse.Namespace) -> _Job:
    """Read the model and the image, check the image's layout and plan the tiling."""
    from napari_unet.cli.files import read_image
    from napari_unet.core.inference import DEFAULT_MIN_SIZE, prediction_plan
    from napari_unet.core.layout import image_layout
    from napari_unet.core.model_files import load_model

    model = load_model(args.model)
    image = read_image(args.input)
    layout = {"channel_axis": args.channel_axis, "rgb": args.rgb}
    image_layout(image.shape, **layout, what=str(args.input), channel_option="--channel-axis")
    plan = prediction_plan(
        model, image, tile=args.tile, batch_size=args.batch, device=args.device, **layout
    )
    min_size = args.min_size
    if min_size is None:
        min_size = int(model.training.get("min_size", DEFAULT_MIN_SIZE))
    options = {**layout, "device": args.device, "tta": args.tta}
    return _Job(model, image, plan, options, args.threshold, min_size)


# ----------------------------------------------------------------------------------------------
# Local run
# ----------------------------------------------------------------------------------------------


class _ProgressLog:
    """Logs tile progress every :data:`LOG_EVERY` seconds and counts the labelled objects."""

    def __init__(self) -> None:
        self.last = 0.0
        self.n_objects = 0

    def __call__(self, event: Any) -> None:
        if event.stage == "labels":
            self.n_objects = max(self.n_objects, int(event.item.labels.max(initial=0)))
            return
        now = time.perf_counter()
        if event.done == event.total or now - self.last > LOG_EVERY:
            self.last = now
            logger.info("%d of %d tiles", event.done, event.total)


def _run_local(job: _Job) -> int:
    """Segment in this process; the number of objects."""
    from napari_unet.core.inference import segment
    from napari_unet.core.progress import run_to_end

    log = _ProgressLog()
    work = segment(
        job.model,
        job.image,
        threshold=job.threshold,
        min_size=job.min_size,
        tile=job.plan.tile,
        batch_size=job.plan.batch_size,
        out=job.labels,
        probabilities_out=job.probabilities,
        **job.options,
    )
    run_to_end(work, log)
    return log.n_objects


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


def _submit(client: Any, job: _Job, ref: Any) -> tuple[dict[Any, tuple], dict[int, int]]:
    """One task per output chunk of every slice: futures -> (z, rows, cols); chunks per slice."""
    model_ref = client.scatter(job.model, broadcast=True)
    options = {**job.options, "tile": job.plan.tile, "batch_size": job.plan.batch_size}
    h, w = job.plan.layout.y.size, job.plan.layout.x.size
    cy, cx = job.chunks()
    regions = [
        ((y, min(y + cy, h)), (x, min(x + cx, w))) for y in range(0, h, cy) for x in range(0, w, cx)
    ]
    futures: dict[Any, tuple] = {}
    for z in range(job.plan.n_slices):
        norm = client.submit(_normalization_task, model_ref, ref, z, job.options, pure=False)
        for rows, cols in regions:
            fut = client.submit(
                _region_task, model_ref, ref, z, rows, cols, norm, options, pure=False
            )
            futures[fut] = (z, rows, cols)
    return futures, {z: len(regions) for z in range(job.plan.n_slices)}


def _run_distributed(address: str, job: _Job, input_path: Path) -> int:
    """Segment on a dask.distributed cluster; the number of objects.

    Every output chunk is a task; slices are labelled here, in slice order (so the numbering
    is the local run's), as soon as all their chunks have arrived.
    """
    from dask.distributed import Client, as_completed

    from napari_unet.cli.files import is_zarr_path
    from napari_unet.core.inference import StackLabeller

    labeller = StackLabeller(threshold=job.threshold, gap=job.model.gap, min_size=job.min_size)
    shape = (job.plan.layout.y.size, job.plan.layout.x.size)
    client = Client(address)
    try:
        logger.info("running on the dask cluster at %s", address)
        ref = str(input_path) if is_zarr_path(input_path) else client.scatter(np.asarray(job.image))
        futures, pending = _submit(client, job, ref)
        buffers: dict[int, np.ndarray] = {}
        next_z = 0
        for fut in as_completed(list(futures)):
            z, rows, cols = futures.pop(fut)
            data = fut.result()
            job.write_probabilities(z, rows, cols, data)
            buffers.setdefault(z, np.empty(shape, np.float32))[slice(*rows), slice(*cols)] = data
            pending[z] -= 1
            while next_z in pending and pending[next_z] == 0:  # label in slice order
                job.labels[next_z if job.plan.stack else ...] = labeller(buffers.pop(next_z))
                next_z += 1
    finally:
        client.close()
    return labeller.n_objects


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Segment ``args.input`` and write the outputs; 0 on success.

    Unreadable or unsuitable input and unwritable output paths raise ``ValueError``,
    ``UsageError`` or ``FileNotFoundError`` (one line on stderr, exit code 2).
    """
    _check_args(args)
    job = _plan_job(args)
    plan = job.plan
    chunks = (1, *job.chunks()) if plan.stack else job.chunks()
    logger.info(
        "%s: %s, %d tile(s) of %dx%d per slice, batch %d, on %s",
        args.input,
        " x ".join(map(str, plan.shape)),
        plan.layout.count,
        *plan.tile,
        plan.batch_size,
        plan.device,
    )
    started = time.perf_counter()
    with ExitStack() as outputs:  # labels land first, then the probabilities
        if args.probabilities is not None:
            job.probabilities = outputs.enter_context(
                _output(args.probabilities, plan.shape, "float32", chunks)
            )
        job.labels = outputs.enter_context(_output(args.out, plan.shape, "int32", chunks))
        if args.scheduler:
            n_objects = _run_distributed(args.scheduler, job, args.input)
        else:
            n_objects = _run_local(job)
    print(
        f"wrote {args.out}: {' x '.join(map(str, plan.shape))} int32, {n_objects} objects "
        f"in {time.perf_counter() - started:.1f} s"
        + (f"; probabilities in {args.probabilities}" if args.probabilities else "")
    )
    return 0
