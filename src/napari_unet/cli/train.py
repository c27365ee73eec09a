"""``napari-unet train``: train a U-Net on annotated images and write a model file.

Example::

    napari-unet train cells.tif --labels cells_labels.tif --out model.pt --minutes 3

Images, labels and optional region masks are read with :func:`napari_unet.cli.files.read_image`
(TIFF, PNG, NPY, zarr). Every training setting is an option (see
:class:`~napari_unet.core.training.TrainSettings`). Progress goes to stderr as a tqdm bar.
Ctrl-C (or SIGTERM, as a scheduler sends) once stops after the current step and still writes
the model and a checkpoint; a second Ctrl-C aborts. Checkpoints (``--checkpoint``, by default the
model's name with ``.ckpt``) are also written every ``--checkpoint-minutes``;
``napari-unet train IMAGE... --labels LABELS... --out MODEL --resume CHECKPOINT`` continues such
a run with its settings (``--iterations``, ``--minutes`` and ``--device`` may change).

Under ``torchrun`` (``torchrun --standalone --nproc_per_node N -m napari_unet train ...``) every
process runs this command; they train one model data-parallel
(:mod:`napari_unet.core.training.distributed`) and rank 0 alone shows progress and writes files.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from napari_unet.cli import UsageError
from napari_unet.cli.options import (
    add_channel_layout,
    add_dataclass_options,
    add_device,
    add_output,
    add_preset,
    add_volume,
    check_output_path,
    given_fields,
    volume_sampling,
)

__all__ = ["DESCRIPTION", "HELP", "ProgressLine", "add_arguments", "run"]

logger = logging.getLogger(__name__)


#: the line in ``napari-unet --help``
HELP = "train a U-Net on annotated images and write a model file"
DESCRIPTION = (
    "Train a U-Net on images and their instance labels (0 = background, k = cell k) "
    "and write one .pt model file. Stacks (Z, Y, X) are sets of 2D images; slices "
    "without labels are ignored unless a region marks them as annotated. With --mode classes "
    "the labels are scribbles of a semantic segmentation (0 = not painted, k = class k): only "
    "painted pixels are learnt, and the model predicts the class of every pixel. With --ndim 3 "
    "(or --scale Z Y X) a (Z, Y, X) image is one volume and a 3D network is trained on it: "
    "only its labelled slices (or the --region) count, and --scale is stored with the model."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train`` arguments: its files, then one option per training setting."""
    from napari_unet.core.training import TrainSettings

    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument(
        "--labels",
        nargs="+",
        required=True,
        metavar="LABELS",
        help="label files, one per image, of the image's spatial shape",
    )
    parser.add_argument(
        "--region",
        nargs="+",
        metavar="MASK",
        help="masks of the annotated area (non-zero = annotated), one per image; "
        "nothing is learnt outside them",
    )
    add_output(parser, metavar="MODEL", help="model file to write (.pt)")
    parser.add_argument(
        "--init",
        type=Path,
        metavar="MODEL",
        help="continue training this model file (.pt, or a bioimage.io .zip this project "
        "exported) or bundled model ('nuclei': 2D fluorescence nuclei) instead of starting "
        "afresh (with the fine-tuning defaults of TrainSettings.for_preset); the model as given "
        "competes for the best checkpoint on the held-out part",
    )
    parser.add_argument(
        "--class-names",
        nargs="+",
        metavar="NAME",
        help="with --mode classes: the names of classes 1, 2, ... stored with the model "
        "(default: 'class 1', 'class 2', ...)",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="CHECKPOINT",
        help="continue the run this checkpoint was written by (same images and labels; its "
        "settings, except --iterations, --minutes and --device)",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        metavar="PATH",
        help="checkpoint file, written every --checkpoint-minutes and at Ctrl-C/SIGTERM "
        "(default: the model's name with .ckpt)",
    )
    parser.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=10.0,
        metavar="M",
        help="minutes between checkpoints; 0: only when stopped (default: 10)",
    )
    add_preset(parser)
    add_device(parser)
    add_channel_layout(parser)
    add_volume(parser, what="each labelled slice a 2D training image")
    budget = parser.add_mutually_exclusive_group()
    add_dataclass_options(budget, TrainSettings, only=_BUDGET)
    add_dataclass_options(parser, TrainSettings, skip=_OWN_BLOCKS | _BUDGET, defaults=_BY_PRESET)
    parser.add_argument(
        "--no-augment", action="store_true", help="no augmentation (not recommended)"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress line, only the final summary"
    )


#: TrainSettings fields with an option block shared with other commands
_OWN_BLOCKS = frozenset({"preset", "device", "channel_axis", "rgb", "spatial_dims", "voxel_size"})
_BUDGET = frozenset({"iterations", "minutes"})
#: defaults that depend on the preset, as the help states them
_BY_PRESET = {
    "patch_size": "128; --mode classes: 64; paper: 388",
    "batch_size": "4; --mode classes: 8; paper: 1",
    "optimizer": "adam; paper: sgd",
}


def _read_all(paths: list[str]) -> list[Any]:
    from napari_unet.cli.files import read_image

    return [read_image(p) for p in paths]


#: settings a resumed run may change
_RESUMABLE = frozenset({"iterations", "minutes", "device"})


def _resumed_settings(args: argparse.Namespace, checkpoint: Any) -> Any:
    """The checkpoint's settings with a new budget or device; UsageError for other changes."""
    from dataclasses import fields, replace

    from napari_unet.core.training import TrainSettings

    saved = checkpoint.settings
    given = given_fields(args, TrainSettings)
    if args.no_augment:
        given.update(elastic=False, flips=False, affine=False, intensity=False)
    flags = {f.name: f.metadata.get("flags", ()) for f in fields(TrainSettings)}
    for name, value in given.items():
        if name not in _RESUMABLE and getattr(saved, name) != value:
            option = ([*flags[name], "--" + name.replace("_", "-")])[0]
            raise UsageError(
                f"{option} {value} differs from the checkpoint's {getattr(saved, name)}: a "
                "resumed run keeps its settings (only --iterations, --minutes and --device "
                "may change)"
            )
    budget: dict[str, Any] = {}
    if args.iterations is not None:
        budget = {"iterations": args.iterations, "minutes": None}
    if args.minutes is not None:
        budget = {"iterations": None, "minutes": args.minutes}
    # --device defaults to auto: a resumed run keeps its own device unless another is given
    device = saved.device if args.device == "auto" else args.device
    settings = replace(saved, device=device, **budget)
    settings.validate()
    return settings


def _settings(args: argparse.Namespace) -> Any:
    from napari_unet.core.training import TrainSettings

    overrides = given_fields(args, TrainSettings)
    overrides.update(device=args.device, rgb=args.rgb, channel_axis=args.channel_axis)
    try:
        ndim, sampling = volume_sampling(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    overrides.update(spatial_dims=ndim, voxel_size=sampling if ndim == 3 else None)
    if args.iterations is not None:
        overrides["minutes"] = None
    if args.minutes is not None:
        overrides["iterations"] = None
    if args.no_augment:
        overrides.update(elastic=False, flips=False, affine=False, intensity=False)
    overrides.pop("preset", None)
    # fine-tuning (--init) starts from its own defaults (FINE_TUNE_DEFAULTS)
    settings = TrainSettings.for_preset(args.preset, fine_tune=args.init is not None, **overrides)
    settings.validate()
    return settings


class ProgressLine:
    """Training progress on stderr as a tqdm bar: iterations, loss, best validation, speed.

    Parameters
    ----------
    stream : file-like
        Where to write (stderr).
    metric : str
        Short name of the run's validation metric
        (:func:`~napari_unet.core.training.loop.metric_label`), e.g. ``'AP'`` (``val AP``).
    """

    def __init__(self, stream: TextIO, metric: str = "AP") -> None:
        self.stream = stream
        self.metric = metric
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.bar: tqdm | None = None

    def postfix(self, event: Any) -> str:
        """The text after the bar for a :class:`~napari_unet.core.training.TrainEvent`."""
        parts = [f"loss {event.loss:.4f}"]
        if event.best_validation is not None:
            parts.append(f"val {self.metric} {event.best_validation:.3f}")
        parts.append(f"{event.samples_per_second:.1f} patches/s")
        return ", ".join(parts)

    def update(self, event: Any) -> None:
        """Show ``event``; tqdm throttles the redraws (every 10 s when not on a terminal)."""
        if self.bar is None:
            self.bar = tqdm(
                total=event.iterations,
                desc="training",
                unit="it",
                file=self.stream,
                dynamic_ncols=self.tty,
                mininterval=0.1 if self.tty else 10.0,
            )
        self.bar.set_postfix_str(self.postfix(event), refresh=False)
        self.bar.update(event.iteration - self.bar.n)

    def close(self) -> None:
        """End the bar (showing the last state)."""
        if self.bar is not None:
            self.bar.close()


def _check_files(args: argparse.Namespace) -> None:
    """One label file (and mask) per image, and a writable ``--out``; else UsageError."""
    if len(args.labels) != len(args.images):
        raise UsageError(
            f"--labels needs one file per image: got {len(args.images)} image(s) and "
            f"{len(args.labels)} label file(s)"
        )
    if args.region is not None and len(args.region) != len(args.images):
        raise UsageError(
            f"--region needs one mask per image: got {len(args.images)} image(s) and "
            f"{len(args.region)} mask(s)"
        )
    out = check_output_path(args.out, "--out")
    if args.class_names and args.mode != "classes":
        raise UsageError("--class-names needs --mode classes")
    if args.resume is not None and args.init is not None:
        raise UsageError("--resume continues a run (its model included); --init cannot go with it")
    if args.checkpoint_minutes < 0:
        raise UsageError(f"--checkpoint-minutes must be >= 0, got {args.checkpoint_minutes:g}")
    ckpt = _checkpoint_path(args)
    if ckpt.resolve() == out.resolve():
        raise UsageError(f"--checkpoint must differ from --out, got {ckpt} for both")
    check_output_path(ckpt, "--checkpoint")


def _resumed_names(checkpointing: Any) -> list[str] | None:
    """The class names a resumed run was given, if any."""
    resume = checkpointing.resume
    return list(resume.class_names) or None if resume is not None else None


def _checkpoint_path(args: argparse.Namespace) -> Path:
    """``--checkpoint``, else the model's name with ``.ckpt``."""
    return args.checkpoint if args.checkpoint is not None else Path(args.out).with_suffix(".ckpt")


def _checkpointing(args: argparse.Namespace) -> tuple[Any, Any]:
    """The run's settings and its :class:`Checkpointing` (resuming when ``--resume``)."""
    from napari_unet.core.training.checkpoint import Checkpointing, load_checkpoint

    resume = load_checkpoint(args.resume) if args.resume is not None else None
    settings = _settings(args) if resume is None else _resumed_settings(args, resume)
    minutes = args.checkpoint_minutes or None
    return settings, Checkpointing(_checkpoint_path(args), minutes=minutes, resume=resume)


def run(args: argparse.Namespace) -> int:
    """Run ``napari-unet train``.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments.

    Returns
    -------
    int
        0 on success.
    """
    _check_files(args)
    settings, checkpointing = _checkpointing(args)
    from napari_unet.core.training.distributed import process_group

    with process_group(settings.device) as group:
        if not group.main:  # rank 0 speaks for all
            logging.getLogger("napari_unet").setLevel(logging.ERROR)
            warnings.simplefilter("ignore")
        return _train(args, settings, checkpointing, group.main)


def _train(args: argparse.Namespace, settings: Any, checkpointing: Any, main: bool) -> int:
    """Read the files, train (stopping at Ctrl-C or SIGTERM), write the model on rank 0."""
    from napari_unet.bioimageio import load_model_or_package
    from napari_unet.core.model_files import save_model
    from napari_unet.core.training import describe_run, run_training
    from napari_unet.core.training.loop import metric_label

    model = load_model_or_package(args.init) if args.init is not None else None
    if checkpointing.resume is not None:
        model = checkpointing.resume.base_model()
    images = _read_all(args.images)
    labels = _read_all(args.labels)
    regions = None
    if args.region is not None:
        regions = [r != 0 for r in _read_all(args.region)]

    stop = threading.Event()
    previous: dict[int, Any] = {}

    def on_interrupt(signum: int, frame: Any) -> None:
        if stop.is_set():
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return  # torchrun follows a Ctrl-C with SIGTERM: the same request
        stop.set()
        if main:
            print(
                "\nnapari-unet train: stopping after this step (Ctrl-C again to abort)",
                file=sys.stderr,
                flush=True,
            )

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, on_interrupt)
    progress = None if args.quiet or not main else ProgressLine(sys.stderr, metric_label(settings))
    try:
        result = run_training(
            images,
            labels,
            regions,
            settings=settings,
            model=model,
            stop=stop,
            callback=None if progress is None else progress.update,
            class_names=args.class_names or _resumed_names(checkpointing),
            checkpoint=checkpointing,
        )
    finally:
        if progress is not None:
            progress.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if main:
        path = save_model(result, Path(args.out))
        print(f"saved {path}: {describe_run(result)}")
    return 0
