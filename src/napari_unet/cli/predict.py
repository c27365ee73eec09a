"""``napari-unet predict``: segment images or stacks with a trained model, headless.

The image is tiled exactly (see :mod:`napari_unet.core.inference.predict`): the result equals one
whole-image pass. A zarr or OME-Zarr input is read lazily, tile by tile; a ``.zarr`` output is
written chunk by chunk (its chunks follow the tile layout), into a temporary store that is
renamed into place at the end, so a crash never leaves half an output. ``--labels-into NAME``
writes the labels into an OME-Zarr input's ``labels/`` group (:mod:`napari_unet.cli.ngff`).

One input with ``--out FILE`` writes that file. Several inputs (files, folders, glob patterns)
with ``--out FOLDER`` are a batch (:mod:`napari_unet.cli.batch`): outputs named after the
inputs, one progress bar over the images, a failing image reported in one line and the others
done; the exit code is then 1 if any failed. The channel layout (``--channel-axis``, ``--rgb``)
comes, when not given, from the file (OME-Zarr's ``c`` axis) or from the model's training
settings when the image has that layout.

With ``--scheduler ADDRESS`` the work runs on a dask.distributed cluster: every output chunk of
the probability map is a task (:func:`napari_unet.core.inference.predict_region`, with the tile
layout and each slice's normalisation fixed up front, so the chunks put together equal the
local run), and the client labels each slice as its chunks arrive. Workers read a zarr input
from its path (it must be reachable from them); other inputs are sent to them.
"""

from __future__ import annotations

import argparse
import glob
import logging
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from tqdm import tqdm

from napari_unet.cli import EXIT_FAILED, UsageError
from napari_unet.cli.options import (
    add_channel_layout,
    add_device,
    add_options,
    add_output,
    check_output_path,
    given_fields,
)

#: The --runtime choices (core.inference.runtimes.RUNTIMES; not imported here: no torch for --help).
RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")

__all__ = ["DESCRIPTION", "HELP", "ProgressBars", "add_arguments", "run"]

logger = logging.getLogger(__name__)

_WRITABLE = (".tif", ".tiff", ".npy", ".zarr")
#: the label image name ``--labels-into`` takes when given without one
DEFAULT_LABELS_NAME = "unet"

#: the line in ``napari-unet --help``
HELP = "segment images or stacks into instance labels (or class ids) with a trained model"
DESCRIPTION = (
    "Segment 2D images, multichannel images or (Z, Y, X) stacks with a trained napari-unet "
    "model: exact overlap-tile inference (the result equals one whole-image pass), threshold, "
    "connected components, cells grown back across the training gap, small objects dropped; "
    "labels are unique across a stack. One INPUT with --out FILE writes that file; several "
    "INPUTs (files, folders, quoted glob patterns) with --out FOLDER write <name>_labels.tif "
    "(.zarr for zarr inputs) for each, and a failing image is reported while the others are "
    "done (exit code 1 if any failed). zarr and OME-Zarr inputs are read lazily; "
    "--labels-into writes the labels into an OME-Zarr input's labels/ group. A model trained "
    "with --mode classes writes the class id 1..K of every pixel (uint8) instead, and "
    "--probabilities the (K, ...) class probabilities."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``predict`` arguments: inputs, outputs, how the network runs, labelling, volumes."""
    from napari_unet.core.inference import DEFAULT_LINK_OVERLAP

    add_options(parser, _INPUTS)
    add_output(
        parser,
        metavar="LABELS",
        required=False,
        help="where to write the int32 labels (uint8 class ids for a classes model): a .tif, "
        ".tiff, .npy or .zarr file for one INPUT, a folder for several (<name>_labels.tif, "
        "or .zarr for zarr inputs)",
    )
    add_options(parser, _OUTPUTS)
    add_device(parser)
    add_options(parser, _RUNNING)
    add_options(parser, _LABELLING)
    parser.add_argument(
        "--link-slices",
        type=float,
        nargs="?",
        const=DEFAULT_LINK_OVERLAP,
        metavar="MIN_OVERLAP",
        help="a 2D model on a (Z, Y, X) stack: link the objects of consecutive slices into 3D "
        "objects where they overlap by at least MIN_OVERLAP of the smaller one (default "
        f"{DEFAULT_LINK_OVERLAP}; cellpose calls it stitching)",
    )
    add_channel_layout(parser)
    add_options(parser, _VOLUME_AND_CLUSTER)


#: the positional arguments: the model and the images
_INPUTS: dict[str, dict[str, Any]] = {
    "model": {
        "type": Path,
        "metavar": "MODEL",
        "help": "model file (.pt), bioimage.io package (.zip) exported by napari-unet, or the "
        "name of a bundled model: nuclei (2D fluorescence nuclei)",
    },
    "inputs": {
        "type": Path,
        "nargs": "+",
        "metavar": "INPUT",
        "help": "images (.tif, .tiff, .png, .npy, .zarr, OME-Zarr), folders of them, or glob "
        "patterns in quotes ('data/*.tif')",
    },
}
#: the outputs besides --out
_OUTPUTS: dict[str, dict[str, Any]] = {
    "--labels-into": {
        "nargs": "?",
        "const": DEFAULT_LABELS_NAME,
        "metavar": "NAME",
        "help": "write the labels into each OME-Zarr INPUT's labels/NAME (default NAME: "
        f"{DEFAULT_LABELS_NAME}), as the OME-NGFF spec says; --out is then not needed",
    },
    "--probabilities": {
        "type": Path,
        "metavar": "OUT",
        "help": "also write the float32 foreground probability ((K, ...) class probabilities "
        "for a classes model): a .tif, .tiff, .npy or .zarr file for one INPUT, a folder for "
        "several (<name>_probabilities.tif)",
    },
    "--skip-existing": {
        "action": "store_true",
        "help": "leave out the INPUTs whose outputs exist already",
    },
}
#: how the network runs (with --device)
_RUNNING: dict[str, dict[str, Any]] = {
    "--tile": {
        "type": int,
        "metavar": "N",
        "help": "edge of the INPUT tile in pixels, halo included, rounded up to the nearest size "
        "the network accepts (default: the largest tile the memory at hand holds)",
    },
    "--batch": {
        "type": int,
        "dest": "batch_size",
        "metavar": "N",
        "help": "tiles per forward pass (default: from memory)",
    },
    "--runtime": {
        "choices": RUNTIMES,
        "default": "auto",
        "help": "what runs the network: auto (on the CPU an ONNX graph in ONNX Runtime, about 2x "
        "faster than torch; torch on a GPU), torch, onnxruntime or openvino (default: auto)",
    },
    "--tta": {
        "action": "store_true",
        "help": "test-time augmentation: mean over the 8 flips and 90-degree rotations (8x time)",
    },
}
#: from probabilities to labels (with --link-slices)
_LABELLING: dict[str, dict[str, Any]] = {
    "--threshold": {
        "type": float,
        "help": "foreground where the probability exceeds this (default: the model's, chosen "
        "on its validation part, else 0.5)",
    },
    "--min-size": {
        "type": int,
        "metavar": "PIXELS",
        "help": "drop objects smaller than this (default: the model's, else 16 pixels)",
    },
    "--min-confidence": {
        "type": float,
        "metavar": "P",
        "help": "drop objects whose highest probability is under this, 0 keeps all (default: "
        "the model's, else 0.98)",
    },
}
#: the voxel size, and where the work runs
_VOLUME_AND_CLUSTER: dict[str, dict[str, Any]] = {
    "--scale": {
        "type": float,
        "nargs": "+",
        "metavar": "S",
        "help": "voxel size of the images (Z Y X for a 3D model, as a napari layer's scale): "
        "checked against the voxel size the model was trained at; images of another voxel "
        "size are refused (resample them first). A 3D model segments a (Z, Y, X) INPUT as one "
        "volume, a 2D model slice by slice",
    },
    "--scheduler": {
        "metavar": "ADDRESS",
        "help": "run on a dask.distributed cluster at this address (e.g. tcp://host:8786); a "
        "zarr input must be readable by the workers at the same path",
    },
}


# ----------------------------------------------------------------------------------------------
# What to do: one file, or a batch
# ----------------------------------------------------------------------------------------------


def _check_out_path(path: Path, option: str) -> None:
    hint = " (or name a folder when several inputs are given)"
    check_output_path(path, option, _WRITABLE, hint=hint)


def _check_args(args: argparse.Namespace) -> None:
    """Raise UsageError on options that cannot work, before any work."""
    for option, value in (("--tile", args.tile), ("--batch", args.batch_size)):
        if value is not None and value < 1:
            raise UsageError(f"{option} must be a positive integer, got {value}")
    if args.threshold is not None and not 0.0 <= args.threshold < 1.0:
        raise UsageError(f"--threshold must be in [0, 1), got {args.threshold}")
    if args.min_size is not None and args.min_size < 0:
        raise UsageError(f"--min-size must be 0 or more, got {args.min_size}")
    if args.min_confidence is not None and not 0.0 <= args.min_confidence < 1.0:
        raise UsageError(f"--min-confidence must be in [0, 1), got {args.min_confidence}")
    if args.link_slices is not None and not 0.0 < args.link_slices <= 1.0:
        raise UsageError(f"--link-slices must be in (0, 1], got {args.link_slices}")
    if args.out is None and args.labels_into is None:
        raise UsageError("say where the labels go: --out, or --labels-into for OME-Zarr inputs")


def _check_mode(model: Any, args: argparse.Namespace) -> None:
    """UsageError for the options of instances given with a model of the classes mode, and
    for --link-slices with a 3D model."""
    if args.link_slices is not None and getattr(model.config, "spatial_dims", 2) == 3:
        raise UsageError(
            f"--link-slices links the slice objects of a 2D model; {args.model} is a 3D model, "
            "whose objects are 3D already"
        )
    if model.mode != "classes":
        return
    names = ("threshold", "min_size", "min_confidence", "link_slices")
    given = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is not None]
    if given:
        raise UsageError(
            f"{' and '.join(given)} apply to a 'cells' model; {args.model} is a 'classes' model "
            f"({', '.join(model.class_names)}), which writes the most probable class of each "
            "pixel"
        )


def _check_scale(model: Any, args: argparse.Namespace) -> None:
    """UsageError for a ``--scale`` that does not suit the model (length, values, voxel size)."""
    from napari_unet.core.model import check_image_voxel_size

    if model.config.spatial_dims == 3 and args.scheduler:
        raise UsageError("--scheduler runs 2D models; a 3D model predicts in this process")
    try:
        check_image_voxel_size(model.config, args.scale, "--scale")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _is_folder(path: Path) -> bool:
    """Whether an output path names a folder of outputs (not a file or a zarr store)."""
    from napari_unet.cli.files import is_zarr_path

    if path.is_dir():
        return not is_zarr_path(path)
    return not path.suffix


def _single_target(args: argparse.Namespace) -> Any:
    """The target of a one-image run, or None for a batch.

    One INPUT that is a file or a store, with ``--out`` a file (or the OME-Zarr input itself,
    meaning ``--labels-into``), or with ``--labels-into`` alone.
    """
    from napari_unet.cli.batch import Target
    from napari_unet.cli.files import is_zarr_path

    if len(args.inputs) != 1:
        return None
    source: Path = args.inputs[0]
    if source.is_dir() and not is_zarr_path(source):
        return None
    if not source.exists() and glob.has_magic(str(source)):
        return None
    out: Path | None = args.out
    into = args.labels_into
    if out is not None and out.exists() and out.resolve() == source.resolve():
        out, into = None, into or DEFAULT_LABELS_NAME  # --out image.ome.zarr: into its labels/
    if out is not None and into is not None:
        raise UsageError("--labels-into writes into the input: give it without --out")
    if out is not None and _is_folder(out):
        return None
    if out is not None:
        _check_out_path(out, "--out")
    if args.probabilities is not None:
        _check_out_path(args.probabilities, "--probabilities")
        if out is not None and args.probabilities.resolve() == out.resolve():
            raise UsageError("--probabilities and --out must be different files")
    return Target(source, out, into, args.probabilities)


def _output_folder(path: Path | None, option: str) -> Path | None:
    """``path`` as a folder of outputs, made if missing; UsageError if it names a file."""
    if path is None:
        return None
    if not _is_folder(path):
        raise UsageError(f"{option} must be a folder when several inputs are given, got {path}")
    if not path.parent.exists():
        raise FileNotFoundError(f"folder for {option} does not exist: {path.parent}")
    path.mkdir(exist_ok=True)
    return path


def _batch_targets(args: argparse.Namespace) -> list[Any]:
    """The targets of a batch run: every image of the INPUTs, outputs named after them."""
    from napari_unet.cli.batch import batch_targets, collect_inputs

    if args.out is not None and args.labels_into is not None:
        raise UsageError("--labels-into writes into each input: give it without --out")
    sources = collect_inputs(args.inputs)
    return batch_targets(
        sources,
        _output_folder(args.out, "--out"),
        probabilities_dir=_output_folder(args.probabilities, "--probabilities"),
        labels_into=args.labels_into,
    )


def _settings(args: argparse.Namespace) -> Any:
    from napari_unet.cli.batch import PredictSettings

    return PredictSettings(**given_fields(args, PredictSettings))  # one option per field


# ----------------------------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------------------------


class ProgressBars:
    """tqdm bars on stderr: the images of a batch, and the tiles of the current image (a second
    bar on a terminal, the images bar's text in a log).

    Parameters
    ----------
    n_images : int, optional
        Images in the batch; None for a one-image run (the tile bar only).
    stream : file-like
        Where the bars go (stderr).
    """

    def __init__(self, n_images: int | None, stream: TextIO) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.batch = n_images is not None
        self.images = None if n_images is None else self._bar(n_images, "images", "image", 0)
        self.tiles: tqdm | None = None
        self.name = ""

    def _bar(self, total: int | None, desc: str, unit: str, position: int) -> tqdm:
        return tqdm(
            total=total,
            desc=desc,
            unit=unit,
            file=self.stream,
            position=position,
            leave=position == 0,
            dynamic_ncols=self.tty,
            mininterval=0.1 if self.tty else 10.0,
        )

    def update(self, event: Any) -> None:
        """Show one event of :func:`napari_unet.cli.batch.segment_files` (or of the core)."""
        if event.stage == "file":
            self.name = event.item.source.name
        elif event.stage == "tiles" and self.images is not None and not self.tty:
            # in a log file, nested bars are noise: the tiles go into the images bar's text
            self.images.set_postfix_str(f"{self.name}: tile {event.done}/{event.total}", False)
        elif event.stage == "tiles":
            if self.tiles is None:
                self.tiles = self._bar(event.total, self.name or "tiles", "tile", int(self.batch))
            self.tiles.update(event.done - self.tiles.n)
        elif event.stage == "labels" and self.tiles is not None and event.total > 1:
            self.tiles.set_postfix_str(f"{event.done}/{event.total} slices labelled")
        elif event.stage == "files":
            self._end_image(event.item)

    def _end_image(self, result: Any) -> None:
        if self.tiles is not None:
            self.tiles.close()
            self.tiles = None
        target = result.target
        if result.status == "failed":
            line = f"napari-unet predict: {target.source}: error: {result.message}"
            tqdm.write(line, file=sys.stderr)
        elif result.status == "skipped":
            tqdm.write(f"skipped {target.source}: {result.message}", file=sys.stdout)
        else:
            tqdm.write(f"wrote {target.destination}: {result.message}", file=sys.stdout)
        if self.images is not None:
            self.images.update(1)

    def close(self) -> None:
        """End the bars."""
        for bar in (self.tiles, self.images):
            if bar is not None:
                bar.close()


# ----------------------------------------------------------------------------------------------
# Local runs
# ----------------------------------------------------------------------------------------------


def _run_one(model: Any, target: Any, settings: Any, runner: Any) -> int:
    """Segment one image into its outputs; 0."""
    from napari_unet.cli.batch import open_outputs, plan_file
    from napari_unet.core.progress import run_to_end

    job = plan_file(model, target, settings)
    plan = job.plan
    logger.info(
        "%s: %s, %d tile(s) of %s per %s, batch %d, on %s",
        target.source,
        " x ".join(map(str, plan.shape)),
        plan.layout.count,
        "x".join(map(str, plan.tile)),
        "volume" if len(plan.tile) == 3 else "slice",
        plan.batch_size,
        plan.device,
    )
    started = time.perf_counter()
    bars = ProgressBars(None, sys.stderr)
    bars.name = target.source.name
    try:
        with open_outputs(job):
            n_objects = run_to_end(runner(job, None), bars.update)
    finally:
        bars.close()
    print(
        f"wrote {target.destination}: {job.describe(n_objects)} in "
        f"{time.perf_counter() - started:.1f} s"
        + (f"; probabilities in {target.probabilities}" if target.probabilities else "")
    )
    return 0


def _run_batch(model: Any, targets: list[Any], settings: Any, runner: Any, skip: bool) -> int:
    """Segment every target; 0, or :data:`~napari_unet.cli.EXIT_FAILED` if any failed."""
    from napari_unet.cli.batch import segment_files
    from napari_unet.core.progress import run_to_end

    started = time.perf_counter()
    bars = ProgressBars(len(targets), sys.stderr)
    try:
        work = segment_files(model, targets, settings, skip_existing=skip, run=runner)
        results = run_to_end(work, bars.update)
    finally:
        bars.close()
    counts = {s: sum(r.status == s for r in results) for s in ("written", "skipped", "failed")}
    print(
        f"{len(results)} image(s) in {time.perf_counter() - started:.1f} s: "
        f"{counts['written']} written, {counts['skipped']} skipped, {counts['failed']} failed"
    )
    return EXIT_FAILED if counts["failed"] else 0


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


def _submit(client: Any, job: Any, ref: Any) -> tuple[dict[Any, tuple], dict[int, int]]:
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


def _run_distributed(address: str, job: Any) -> int:
    """Segment ``job`` on a dask.distributed cluster; the number of objects.

    Every output chunk is a task; slices are labelled here, in slice order (so the numbering
    is the local run's), as soon as all their chunks have arrived.
    """
    from dask.distributed import Client, as_completed

    from napari_unet.cli.batch import link_objects
    from napari_unet.cli.files import is_zarr_path
    from napari_unet.core.inference import model_labeller, probability_shape

    label = model_labeller(job.model, *job.post)
    shape = probability_shape(job.model, (job.plan.layout.y.size, job.plan.layout.x.size))
    source = job.target.source
    client = Client(address)
    try:
        logger.info("running on the dask cluster at %s", address)
        if is_zarr_path(source):
            ref = str(source)
        else:
            ref = client.scatter(np.asarray(job.image.data))
        futures, pending = _submit(client, job, ref)
        buffers: dict[int, np.ndarray] = {}
        next_z = 0
        for fut in as_completed(list(futures)):
            z, rows, cols = futures.pop(fut)
            data = fut.result()
            job.write_probabilities(z, rows, cols, data)
            buf = buffers.setdefault(z, np.empty(shape, np.float32))
            buf[..., slice(*rows), slice(*cols)] = data
            pending[z] -= 1
            while next_z in pending and pending[next_z] == 0:  # label in slice order
                job.labels[next_z if job.plan.stack else ...] = label(buffers.pop(next_z))
                next_z += 1
    finally:
        client.close()
    if job.classes:
        return len(np.unique(job.labels[...]))
    linked = link_objects(job)
    return label.n_objects if linked is None else linked  # a StackLabeller (cells mode)


def _cluster_runner(address: str) -> Any:
    """A runner (see :data:`napari_unet.cli.batch.Runner`) on the cluster at ``address``."""

    def run(job: Any, stop: Any = None) -> Any:
        yield from ()  # the cluster reports no progress per tile
        return _run_distributed(address, job)

    return run


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Segment the inputs and write the outputs.

    Returns
    -------
    int
        0 on success; for several inputs, :data:`~napari_unet.cli.EXIT_FAILED` (1) if any
        failed (each failure has its line on stderr).

    Raises
    ------
    UsageError, ValueError, FileNotFoundError
        On unreadable or unsuitable input (one image) and unusable options (exit code 2).
    """
    from napari_unet.bioimageio import load_model_or_package
    from napari_unet.cli.batch import run_local

    _check_args(args)
    single = _single_target(args)
    targets = [single] if single is not None else _batch_targets(args)
    settings = _settings(args)
    model = load_model_or_package(args.model)
    _check_mode(model, args)
    _check_scale(model, args)
    runner = _cluster_runner(args.scheduler) if args.scheduler else run_local
    if single is not None:
        if args.skip_existing and single.exists():
            print(f"skipped {single.source}: {single.destination} exists")
            return 0
        return _run_one(model, single, settings, runner)
    return _run_batch(model, targets, settings, runner, args.skip_existing)
