"""Segmenting image files: one file, or many (a folder batch), into label files.

Shared by ``napari-unet predict`` and the Segment widget's "Segment folder…"; nothing here
imports the command line's argument parsing or napari.

- :func:`collect_inputs` expands files, folders and glob patterns into image paths;
  :func:`batch_targets` names the outputs after the inputs (``<stem>_labels.tif``, or
  ``<stem>_labels.zarr`` for zarr inputs).
- :func:`plan_file` reads one image (lazily for zarr and OME-Zarr), works out its channel layout
  (:func:`channel_layout`: what the caller says, else the file's metadata, else the model's
  training settings when the image has that layout) and plans the tiling; :func:`open_outputs`
  makes the outputs, which land whole or not at all; :func:`run_local` segments.
- :func:`segment_files` does all of that for every target, one after the other, as a generator
  of progress events (:mod:`napari_unet.core.progress`): a file that fails is reported in its
  :class:`FileResult` and the others are done.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.cli.files import ImageFile, is_zarr_path

__all__ = [
    "CHUNK",
    "FileJob",
    "FileResult",
    "PredictSettings",
    "Runner",
    "Target",
    "batch_targets",
    "channel_layout",
    "collect_inputs",
    "open_outputs",
    "output_array",
    "plan_file",
    "run_local",
    "segment_file",
    "segment_files",
    "stem",
]

logger = logging.getLogger(__name__)

#: image files a folder is searched for (zarr stores are found by their metadata)
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
#: what the project writes beside its inputs; never taken as inputs from a folder
OUTPUT_SUFFIXES = ("_labels", "_probabilities")
#: target edge of an output zarr chunk (rounded to whole tile strides)
CHUNK = 1024
#: the errors a file can fail with while the others go on
FILE_ERRORS = (ValueError, OSError, MemoryError, RuntimeError)


@dataclass(frozen=True)
class PredictSettings:
    """How every file is segmented (as :func:`napari_unet.core.inference.segment` takes it).

    Attributes
    ----------
    channel_axis : int, optional
        Axis of the channels; None: from the file's metadata or the model's training settings.
    rgb : bool
        The last axis holds RGB(A) channels; False: from the model's training settings.
    tile, batch_size : int, optional
        Input tile edge (halo included) and tiles per pass; None: from the memory at hand.
    device : str
        ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or ``'mps'``.
    tta : bool
        Test-time augmentation.
    runtime : str
        Where the network runs: 'auto', 'torch', 'onnxruntime' or 'openvino'.
    threshold : float, optional
        Foreground where the probability exceeds this; None: the model's (else 0.5).
    min_size : int, optional
        Objects smaller than this are dropped; None: the model's (else 16).
    min_confidence : float, optional
        Objects whose highest probability is lower are dropped; None: the model's (else 0.98).
    link_slices : float, optional
        Link the 2D objects of a stack's slices into 3D objects when they overlap by at least
        this (intersection over the smaller object, see
        :func:`napari_unet.core.inference.link_slices`); None: no linking.
    """

    channel_axis: int | None = None
    rgb: bool = False
    tile: int | None = None
    batch_size: int | None = None
    device: str = "auto"
    tta: bool = False
    runtime: str = "auto"
    threshold: float | None = None
    min_size: int | None = None
    min_confidence: float | None = None
    link_slices: float | None = None


@dataclass(frozen=True)
class Target:
    """One input image and where its results go.

    Attributes
    ----------
    source : pathlib.Path
        The image.
    labels : pathlib.Path, optional
        The label file (``.tif``, ``.tiff``, ``.npy`` or ``.zarr``).
    labels_into : str, optional
        Instead: the name of a label image to write into the source OME-Zarr's ``labels/``.
    probabilities : pathlib.Path, optional
        Also write the foreground probability here (the ``(K, ...)`` class probabilities for
        a model of the classes mode).
    """

    source: Path
    labels: Path | None = None
    labels_into: str | None = None
    probabilities: Path | None = None

    @property
    def destination(self) -> str:
        """Where the labels go, for messages."""
        if self.labels_into is not None:
            return f"{self.source}/labels/{self.labels_into}"
        return str(self.labels)

    def exists(self) -> bool:
        """Whether the outputs are there already (for ``--skip-existing``)."""
        from napari_unet.cli.ngff import is_ome_zarr, label_names

        if self.labels_into is not None:
            there = is_ome_zarr(self.source) and self.labels_into in label_names(self.source)
        else:
            there = self.labels is not None and self.labels.exists()
        return there and (self.probabilities is None or self.probabilities.exists())


@dataclass(frozen=True)
class FileResult:
    """How one target ended.

    Attributes
    ----------
    target : Target
        The target.
    status : str
        ``'written'``, ``'skipped'`` (outputs already there) or ``'failed'``.
    message : str
        What went wrong (one line), or a summary of what was written.
    n_objects : int
        Objects labelled.
    """

    target: Target
    status: str
    message: str = ""
    n_objects: int = 0


# ----------------------------------------------------------------------------------------------
# Inputs and output names
# ----------------------------------------------------------------------------------------------


def stem(path: str | os.PathLike[str]) -> str:
    """The name of an image without its suffixes (``cells.ome.zarr`` -> ``cells``).

    Examples
    --------
    >>> stem("data/cells.ome.zarr"), stem("a.b.tif"), stem("img.OME.TIFF")
    ('cells', 'a.b', 'img')
    """
    name = Path(path).name
    for suffix in (".ome.zarr", ".ome.tiff", ".ome.tif", ".zarr", *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _is_image(path: Path) -> bool:
    if path.name.startswith("."):
        return False
    if is_zarr_path(path):
        return path.is_dir()
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _folder_images(folder: Path) -> list[Path]:
    """The images directly in ``folder``, sorted; the project's own outputs left out."""
    found = [p for p in sorted(folder.iterdir()) if _is_image(p)]
    ours = [p for p in found if stem(p).endswith(OUTPUT_SUFFIXES)]
    if ours:
        logger.info("%s: leaving out %d label/probability file(s)", folder, len(ours))
    return [p for p in found if p not in ours]


def collect_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image paths from files, folders and glob patterns, in order, each once.

    Parameters
    ----------
    inputs : sequence of str or path-like
        Files (taken as they are, even when missing: reading them reports it), zarr stores,
        folders (the ``.tif``, ``.tiff``, ``.png``, ``.npy`` files and zarr stores directly in
        them) and glob patterns (``'data/*.tif'``, ``'**'`` for sub-folders).

    Returns
    -------
    list of pathlib.Path
        The images.

    Raises
    ------
    ValueError
        If a folder holds no image or a pattern matches none.
    """
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir() and not is_zarr_path(p):
            found = _folder_images(p)
            what = f"folder {p}"
        elif not p.exists() and glob.has_magic(str(item)):
            found = [Path(m) for m in sorted(glob.glob(str(item), recursive=True))]
            found = [m for m in found if _is_image(m)]
            what = f"pattern {str(item)!r}"
        else:
            found, what = [p], ""
        if not found:
            raise ValueError(
                f"no image in {what}: expected {', '.join(IMAGE_SUFFIXES)} files or zarr stores"
            )
        paths.extend(found)
    unique: dict[Path, Path] = {}
    for p in paths:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def batch_targets(
    sources: Sequence[Path],
    out_dir: Path | None,
    *,
    probabilities_dir: Path | None = None,
    labels_into: str | None = None,
) -> list[Target]:
    """One target per source, its outputs named after it.

    Parameters
    ----------
    sources : sequence of pathlib.Path
        The images.
    out_dir : pathlib.Path, optional
        Where ``<stem>_labels.tif`` (``<stem>_labels.zarr`` for a zarr input) go.
    probabilities_dir : pathlib.Path, optional
        Where ``<stem>_probabilities.tif`` (or ``.zarr``) go, if wanted.
    labels_into : str, optional
        Write the labels into each OME-Zarr input's ``labels/NAME`` instead of ``out_dir``.

    Returns
    -------
    list of Target
        The targets.

    Raises
    ------
    ValueError
        If neither ``out_dir`` nor ``labels_into`` is given, or two inputs share a name.
    """
    if out_dir is None and labels_into is None:
        raise ValueError("say where the labels go: an output folder, or a label image name")
    targets, names = [], {}
    for source in sources:
        suffix = ".zarr" if is_zarr_path(source) else ".tif"
        name = stem(source)
        if name + suffix in names:
            raise ValueError(
                f"{source} and {names[name + suffix]} would both be written as "
                f"{name}_labels{suffix}; give them different names"
            )
        names[name + suffix] = source
        labels = None if labels_into or out_dir is None else out_dir / f"{name}_labels{suffix}"
        prob = None
        if probabilities_dir is not None:
            prob = probabilities_dir / f"{name}_probabilities{suffix}"
        targets.append(Target(source, labels, labels_into, prob))
    return targets


# ----------------------------------------------------------------------------------------------
# One file
# ----------------------------------------------------------------------------------------------


def channel_layout(
    model: Any, image: ImageFile, channel_axis: int | None = None, rgb: bool = False
) -> tuple[int | None, bool, str]:
    """Where an image's channels are: as given, else as its file says, else as in training.

    The model's training settings (``model.training['settings']``: ``channel_axis``, ``rgb``)
    apply only when the image has that layout: an RGB(A) last axis, or a channel axis, of the
    model's number of channels.

    Parameters
    ----------
    model : TrainedModel
        The model.
    image : ImageFile
        The image read, with its file's channel axis if any.
    channel_axis : int, optional
        The caller's channel axis (wins).
    rgb : bool
        The caller says the last axis is RGB(A) (wins).

    Returns
    -------
    channel_axis : int or None
        The channel axis.
    rgb : bool
        Whether the last axis holds RGB(A) channels.
    source : str
        Where the layout came from: ``''`` (the caller, or nothing to find), ``'the file'``
        or ``'the model'``.
    """
    from napari_unet.core.layout import image_layout

    if rgb or channel_axis is not None:
        return channel_axis, bool(rgb), ""
    if image.channel_axis is not None:
        return image.channel_axis, False, "the file"
    n = int(model.config.in_channels)
    settings = (getattr(model, "training", None) or {}).get("settings") or {}
    shape = tuple(image.data.shape)
    if n == 1 or not shape:
        return None, False, ""
    stored_axis, stored_rgb = settings.get("channel_axis"), bool(settings.get("rgb", False))
    if stored_rgb and shape[-1] == n and len(shape) in (3, 4):
        return None, True, "the model"
    if stored_axis is not None and -len(shape) <= int(stored_axis) < len(shape):
        try:
            layout = image_layout(shape, channel_axis=int(stored_axis))
        except ValueError:
            return None, False, ""
        if layout.n_channels == n:
            return layout.channel_axis, False, "the model"
    return None, False, ""


@dataclass
class FileJob:
    """One image to segment: the model, the image, the plan, and the outputs once open.

    Attributes
    ----------
    model : TrainedModel
        The model.
    target : Target
        The image's path and its outputs' paths.
    image : ImageFile
        The image read (lazily for zarr).
    plan : napari_unet.core.inference.Plan
        The tiling.
    options : dict
        ``channel_axis``, ``rgb``, ``device`` and ``tta``, as the core takes them.
    post : napari_unet.core.inference.PostProcessing
        Threshold, minimum size and minimum confidence of the labels.
    labels, probabilities : array-like, optional
        The outputs, set by :func:`open_outputs`.
    link : float, optional
        Link the slice objects of a stack into 3D objects (the smallest overlap); None: no.
    """

    model: Any
    target: Target
    image: ImageFile
    plan: Any
    options: dict[str, Any]
    post: Any
    labels: Any = None
    probabilities: Any = None
    link: float | None = None

    def chunks(self) -> tuple[int, ...]:
        """``(Y, X)`` edge of an output zarr chunk (``(Z, Y, X)`` for a 3D model): about
        :data:`CHUNK`, whole tile strides."""
        return tuple(_chunk(axis) for axis in self.plan.layout.axes)

    @property
    def classes(self) -> bool:
        """Whether the model is of the classes mode (class ids out, ``(K, ...)`` probabilities)."""
        return self.model.mode == "classes"

    def write_probabilities(self, z: int, rows: tuple, cols: tuple, data: np.ndarray) -> None:
        """Write a rectangle of slice ``z``'s probabilities, if they are wanted."""
        if self.probabilities is not None:
            index = (slice(*rows), slice(*cols))
            lead = (slice(None),) if self.classes else ()
            self.probabilities[(*lead, z, *index) if self.plan.stack else (*lead, *index)] = data

    def describe(self, n_objects: int) -> str:
        """What was written, e.g. ``'512 x 512 int32, 40 objects'`` (``uint8, 3 classes``)."""
        shape = " x ".join(map(str, self.plan.shape))
        if self.classes:
            return f"{shape} uint8 class ids, {n_objects} of {self.model.config.n_classes} classes"
        return f"{shape} int32, {n_objects} objects"


def _chunk(axis: Any) -> int:
    if axis.count == 1:
        return axis.size
    return min(axis.size, axis.stride * max(1, CHUNK // axis.stride))


def plan_file(model: Any, target: Target, settings: PredictSettings) -> FileJob:
    """Read the image, work out its channel layout and plan the tiling.

    Parameters
    ----------
    model : TrainedModel
        The model.
    target : Target
        The image and its outputs.
    settings : PredictSettings
        How to segment.

    Returns
    -------
    FileJob
        The job, outputs not open yet.

    Raises
    ------
    ValueError, FileNotFoundError
        If the image cannot be read or does not suit the model.
    """
    from napari_unet.cli.files import open_image
    from napari_unet.core.inference import postprocessing_defaults, prediction_plan
    from napari_unet.core.layout import image_layout

    image = open_image(target.source)
    if target.labels_into is not None and image.ome is None:
        raise ValueError(
            f"{target.source} is not an OME-Zarr image: labels can be written into OME-Zarr "
            "images only"
        )
    axis, rgb, source = channel_layout(model, image, settings.channel_axis, settings.rgb)
    if source:
        where = "the last axis (RGB)" if rgb else f"axis {axis}"
        logger.info("%s: channels on %s, as in %s", target.source, where, source)
    layout = {"channel_axis": axis, "rgb": rgb}
    what = str(target.source)
    image_layout(image.data.shape, **layout, what=what, channel_option="--channel-axis")
    plan = prediction_plan(
        model,
        image.data,
        tile=settings.tile,
        batch_size=settings.batch_size,
        device=settings.device,
        **layout,
    )
    post = postprocessing_defaults(
        model.training, settings.threshold, settings.min_size, settings.min_confidence
    )
    options = {
        **layout,
        "device": settings.device,
        "tta": settings.tta,
        "runtime": settings.runtime,
    }
    return FileJob(model, target, image, plan, options, post, link=settings.link_slices)


@contextmanager
def output_array(
    path: Path, shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...]
) -> Iterator[Any]:
    """An output array that lands at ``path`` whole when the block ends without an error.

    Parameters
    ----------
    path : pathlib.Path
        A ``.zarr`` store, written chunk by chunk into a temporary store beside ``path``
        (:func:`~napari_unet.core.atomic.atomic_path`), or a ``.tif``/``.tiff``/``.npy`` file,
        kept in memory and written at the end (:func:`~napari_unet.cli.files.write_image`).
    shape : tuple of int
        Its shape.
    dtype : str
        Its dtype.
    chunks : tuple of int
        zarr chunks.

    Yields
    ------
    numpy.ndarray or zarr.Array
        The array to fill.
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


@contextmanager
def open_outputs(job: FileJob) -> Iterator[FileJob]:
    """Open ``job``'s outputs; they land when the block ends without an error (labels first,
    then the probabilities), and nothing is left of them on an error.

    Parameters
    ----------
    job : FileJob
        The job; its ``labels`` and ``probabilities`` are set inside the block.

    Yields
    ------
    FileJob
        ``job``.
    """
    from napari_unet.cli.ngff import labels_into
    from napari_unet.core.inference import probability_shape

    plan, target = job.plan, job.target
    chunks = (1, *job.chunks()) if plan.stack else job.chunks()
    with ExitStack() as outputs:
        if target.probabilities is not None:
            shape = probability_shape(job.model, plan.shape)
            prob_chunks = (1, *chunks) if job.classes else chunks
            job.probabilities = outputs.enter_context(
                output_array(target.probabilities, shape, "float32", prob_chunks)
            )
        if target.labels_into is not None:
            opened = labels_into(job.image.ome, target.labels_into, job.chunks())
        else:
            dtype = "uint8" if job.classes else "int32"
            opened = output_array(target.labels, plan.shape, dtype, chunks)
        job.labels = outputs.enter_context(opened)
        yield job


def run_local(job: FileJob, stop: threading.Event | None = None) -> Generator[Any, None, int]:
    """Segment ``job`` in this process, into its open outputs.

    Parameters
    ----------
    job : FileJob
        The job, outputs open.
    stop : threading.Event, optional
        Set it to stop after the current tile (:class:`~napari_unet.core.inference.Cancelled`).

    Yields
    ------
    Step
        The core's events: ``'tiles'`` and ``'labels'`` (see
        :func:`napari_unet.core.inference.segment`).

    Returns
    -------
    int
        The number of objects (classes mode: the number of classes found).
    """
    from napari_unet.core.inference import segment

    n_objects, found = 0, set()
    work = segment(
        job.model,
        job.image.data,
        **job.post._asdict(),
        tile=job.plan.tile,
        batch_size=job.plan.batch_size,
        out=job.labels,
        probabilities_out=job.probabilities,
        stop=stop,
        **job.options,
    )
    for event in work:
        if event.stage == "labels":
            n_objects = max(n_objects, int(event.item.labels.max(initial=0)))
            found.update(np.unique(event.item.labels).tolist() if job.classes else ())
        yield event
    if job.classes:
        return len(found)
    linked = link_objects(job)
    return n_objects if linked is None else linked


def link_objects(job: FileJob) -> int | None:
    """Link the slice objects of a job's labelled stack into 3D objects, in place.

    Parameters
    ----------
    job : FileJob
        A job whose labels are written (``job.link`` set for linking).

    Returns
    -------
    int or None
        The number of 3D objects; None when nothing was linked (no ``link``, a 2D image, or a
        model of the classes mode).
    """
    if job.link is None or job.classes or not job.plan.stack:
        return None
    from napari_unet.core.inference import SliceLinker

    return SliceLinker(job.link).link_stack(job.labels, job.labels)


#: how a job runs: (job, stop) -> generator of events that returns the number of objects
Runner = Callable[[FileJob, "threading.Event | None"], Generator[Any, None, int]]


def segment_file(
    model: Any,
    target: Target,
    settings: PredictSettings,
    *,
    stop: threading.Event | None = None,
    run: Runner = run_local,
) -> Generator[Any, None, FileResult]:
    """Segment one image file into its outputs.

    Parameters
    ----------
    model, target, settings
        The model, the image with its outputs, and how to segment, as for :func:`plan_file`.
    stop : threading.Event, optional
        Set it to stop after the current tile.
    run : callable
        How the job runs (:func:`run_local`, or a cluster's runner).

    Yields
    ------
    Step
        The core's progress events.

    Returns
    -------
    FileResult
        ``'written'``, with the number of objects.

    Raises
    ------
    ValueError, FileNotFoundError, RuntimeError, MemoryError, OSError, Cancelled
        As reading, the core and writing raise them; no output is left behind.
    """
    job = plan_file(model, target, settings)
    with open_outputs(job):
        n_objects = yield from run(job, stop)
    return FileResult(target, "written", job.describe(n_objects), n_objects)


def segment_files(
    model: Any,
    targets: Sequence[Target],
    settings: PredictSettings,
    *,
    skip_existing: bool = False,
    stop: threading.Event | None = None,
    run: Runner = run_local,
) -> Generator[Any, None, list[FileResult]]:
    """Segment several image files, one after the other; a file that fails does not stop the
    others.

    Parameters
    ----------
    model : TrainedModel
        The model.
    targets : sequence of Target
        The images and their outputs.
    settings : PredictSettings
        How to segment.
    skip_existing : bool
        Leave out targets whose outputs are there already.
    stop : threading.Event, optional
        Set it to stop after the current tile (raises
        :class:`~napari_unet.core.inference.Cancelled`; files done stay written).
    run : callable
        How each job runs (:func:`run_local`, or a cluster's runner).

    Yields
    ------
    Step
        ``Step(i, n, 'file', item=target)`` as file ``i`` (0-based) of ``n`` starts, the core's
        ``'tiles'`` and ``'labels'`` events for it, and ``Step(i + 1, n, 'files',
        item=FileResult)`` when it has ended.

    Returns
    -------
    list of FileResult
        One per target, in order.
    """
    from napari_unet.cli import error_line
    from napari_unet.core.inference import Cancelled
    from napari_unet.core.progress import Step

    results: list[FileResult] = []
    n = len(targets)
    for i, target in enumerate(targets):
        yield Step(i, n, "file", target)
        if skip_existing and target.exists():
            result = FileResult(target, "skipped", f"{target.destination} exists")
        else:
            try:
                result = yield from segment_file(model, target, settings, stop=stop, run=run)
            except Cancelled:
                raise
            except FILE_ERRORS as exc:
                logger.info("%s failed", target.source, exc_info=True)
                result = FileResult(target, "failed", error_line(exc))
        results.append(result)
        yield Step(i + 1, n, "files", result)
    return results
