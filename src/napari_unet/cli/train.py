"""``napari-unet train``: train a U-Net on annotated images and write a model file.

Example::

    napari-unet train cells.tif --labels cells_labels.tif --out model.pt --minutes 3

Images, labels and optional region masks are read with :func:`napari_unet.cli.files.read_image`
(TIFF, PNG, NPY, zarr). Progress goes to stderr as one line updated in place (a new line every
10% when stderr is not a terminal). Ctrl-C once stops after the current step and still writes
the model; a second Ctrl-C aborts.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from napari_unet.cli import UsageError

__all__ = ["ProgressLine", "add_parser", "run"]

logger = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` sub-command.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The command line's sub-parsers.

    Returns
    -------
    argparse.ArgumentParser
        The ``train`` parser.
    """
    parser = subparsers.add_parser(
        "train",
        help="train a U-Net on annotated images and write a model file",
        description=(
            "Train a U-Net on images and their instance labels (0 = background, k = cell k) "
            "and write one .pt model file. Stacks (Z, Y, X) are sets of 2D images; slices "
            "without labels are ignored unless a region marks them as annotated."
        ),
    )
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
    parser.add_argument("--out", required=True, type=Path, help="model file to write (.pt)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--iterations", type=int, metavar="N", help="steps (default: 400)")
    budget.add_argument("--minutes", type=float, metavar="M", help="train for M minutes")
    parser.add_argument(
        "--preset",
        choices=["fast", "paper"],
        default="fast",
        help="fast: small net, Adam (default); paper: Ronneberger et al. 2015, SGD momentum "
        "0.99, 572 px tiles",
    )
    parser.add_argument(
        "--init",
        type=Path,
        metavar="MODEL",
        help="continue training this model file (fine-tuning) instead of starting afresh",
    )
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)"
    )
    parser.add_argument("--seed", type=int, help="random seed (same seed, same model on CPU)")
    parser.add_argument(
        "--channel-axis", type=int, metavar="AXIS", help="channel axis of multichannel images"
    )
    parser.add_argument("--rgb", action="store_true", help="images are RGB(A), colour last")
    parser.add_argument(
        "--patch", type=int, metavar="PX", help="patch edge in pixels (default: preset's)"
    )
    parser.add_argument("--batch", type=int, metavar="N", help="patches per step")
    parser.add_argument("--lr", type=float, metavar="RATE", help="learning rate")
    parser.add_argument("--optimizer", choices=["adam", "sgd"], help="default: preset's")
    parser.add_argument(
        "--no-border-weights", action="store_true", help="no extra weight between touching cells"
    )
    parser.add_argument(
        "--no-augment", action="store_true", help="no augmentation (not recommended)"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress line, only the final summary"
    )
    return parser


def _read_all(paths: list[str]) -> list[Any]:
    from napari_unet.cli.files import read_image

    return [read_image(p) for p in paths]


def _settings(args: argparse.Namespace) -> Any:
    from napari_unet.core.training import TrainSettings

    overrides: dict[str, Any] = {"device": args.device, "seed": args.seed, "rgb": args.rgb}
    if args.channel_axis is not None:
        overrides["channel_axis"] = args.channel_axis
    if args.iterations is not None:
        overrides.update(iterations=args.iterations, minutes=None)
    if args.minutes is not None:
        overrides.update(iterations=None, minutes=args.minutes)
    for name, key in (
        ("patch", "patch_size"),
        ("batch", "batch_size"),
        ("lr", "learning_rate"),
        ("optimizer", "optimizer"),
    ):
        if getattr(args, name) is not None:
            overrides[key] = getattr(args, name)
    if args.no_border_weights:
        overrides["border_weights"] = False
    if args.no_augment:
        overrides.update(elastic=False, flips=False, affine=False, intensity=False)
    settings = TrainSettings.for_preset(args.preset, **overrides)
    settings.validate()
    return settings


def _format_time(seconds: float) -> str:
    seconds = max(round(seconds), 0)
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressLine:
    """A terminal progress bar on one stderr line, updated in place (no dependency).

    Parameters
    ----------
    stream : file-like
        Where to write (stderr).
    width : int
        Characters of the bar itself.
    min_interval : float
        Seconds between redraws on a terminal.
    """

    def __init__(self, stream: TextIO, width: int = 24, min_interval: float = 0.1) -> None:
        self.stream = stream
        self.width = width
        self.min_interval = min_interval
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last = 0.0
        self._decile = -1
        self._drawn = False

    def text(self, event: Any) -> str:
        """The line for a :class:`~napari_unet.core.training.TrainEvent`."""
        progress = event.progress
        if progress is None:
            bar = f"iteration {event.iteration}"
        else:
            filled = round(progress * self.width)
            bar = "[" + "#" * filled + "." * (self.width - filled) + "]"
            if event.iterations:
                bar += f" {event.iteration}/{event.iterations}"
            else:
                bar += f" {event.iteration} it"
        parts = [bar, f"loss {event.loss:.4f}"]
        if event.best_validation is not None:
            parts.append(f"val IoU {event.best_validation:.3f}")
        parts.append(f"{event.samples_per_second:.1f} patches/s")
        eta = ""
        if progress:
            eta = f", ~{_format_time(event.elapsed * (1 - progress) / progress)} left"
        parts.append(f"{_format_time(event.elapsed)}{eta}")
        return "  ".join(parts)

    def update(self, event: Any) -> None:
        """Show ``event`` (throttled)."""
        now = time.monotonic()
        if self.tty:
            if now - self._last < self.min_interval and event.progress != 1.0:
                return
            self._last = now
            self.stream.write("\r\x1b[K" + self.text(event))
            self._drawn = True
        else:
            decile = int((event.progress or 0.0) * 10)
            if decile == self._decile and event.iteration % 100:
                return
            self._decile = decile
            self.stream.write(self.text(event) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the line."""
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


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
    out = Path(args.out)
    if not out.parent.exists():
        raise UsageError(f"--out: folder does not exist: {out.parent}")
    if out.is_dir():
        raise UsageError(f"--out must be a file name, got a folder: {out}")
    settings = _settings(args)
    from napari_unet.core.model_files import load_model, save_model
    from napari_unet.core.training import describe_run, train

    model = load_model(args.init) if args.init is not None else None
    images = _read_all(args.images)
    labels = _read_all(args.labels)
    regions = None
    if args.region is not None:
        regions = [r != 0 for r in _read_all(args.region)]

    stop = threading.Event()
    previous = None

    def on_interrupt(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(
            "\nnapari-unet train: stopping after this step (Ctrl-C again to abort)",
            file=sys.stderr,
            flush=True,
        )

    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, on_interrupt)
    progress = None if args.quiet else ProgressLine(sys.stderr)
    try:
        run_ = train(images, labels, regions, settings=settings, model=model, stop=stop)
        while True:
            try:
                event = next(run_)
            except StopIteration as finished:
                result = finished.value
                break
            if progress is not None:
                progress.update(event)
    finally:
        if progress is not None:
            progress.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    path = save_model(result, out)
    print(f"saved {path}: {describe_run(result)}")
    return 0
