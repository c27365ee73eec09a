"""Training settings: :class:`TrainSettings`, everything that shapes a training run.

The fields are the single source of the training options: the command line and the Train widget
are built from them. A new setting is one line here: its type and default, and in
:func:`setting` the metadata a form or a command line needs (stored in
``dataclasses.Field.metadata``); its help text is its entry in the docstring of
:class:`TrainSettings`.

Metadata keys (all optional):

``show``
    ``'main'`` (a control in the Train widget's form), ``'advanced'`` (in its collapsed
    advanced section; the default) or ``'hidden'`` (worked out from the data, not a control).
``label``
    Text beside the control; default: the name with spaces.
``min``, ``max``, ``step``
    Bounds and step of a number.
``choices``
    Allowed values of a string.
``none``
    For an optional field (``int | None``), the control value that stands for ``None``.
``group``
    Name of a row of check boxes the control sits in (``'augment'``).
``flags``
    Extra command-line spellings besides ``--field-name`` (e.g. ``('--lr',)``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from ..model import MODES, PRESETS
from ..voxels import check_voxel_size
from .augment import AugmentSettings

__all__ = [
    "ADVANCED",
    "CLASSES_DEFAULTS",
    "FINE_TUNE_DEFAULTS",
    "HIDDEN",
    "MAIN",
    "VOLUME_DEFAULTS",
    "TrainSettings",
    "setting",
]

#: Settings of the ``'fast'`` preset in the classes mode (see :meth:`TrainSettings.for_preset`)
CLASSES_DEFAULTS: dict[str, Any] = {"patch_size": 64, "batch_size": 8}
#: Settings of the ``'fast'`` preset for a 3D network (``spatial_dims=3``, see
#: :meth:`TrainSettings.for_preset`): smaller patches with less context, so that a CPU makes
#: enough steps in minutes, and a higher peak learning rate for those few hundred steps
#: (``bench/bench_3d.py``; see docs/benchmarks.md)
VOLUME_DEFAULTS: dict[str, Any] = {
    "patch_size": 48,
    "context": 8,
    "batch_size": 2,
    "learning_rate": 3e-3,
}
#: Settings where a model is fine-tuned rather than trained afresh (see
#: :meth:`TrainSettings.for_preset`)
#: Empty at present: on a stand-in for the bundled model (trained on 15 train images, fine-tuned
#: on boxes of the other 5; docs/benchmarks.md) neither a lower rate (1e-4) nor frozen batch norm
#: beat the settings of a new network (mean AP@0.5 0.755 and 0.774, within one nucleus).
FINE_TUNE_DEFAULTS: dict[str, Any] = {}

#: ``show`` values of :func:`setting`
MAIN, ADVANCED, HIDDEN = "main", "advanced", "hidden"


def setting(
    default: Any,
    *,
    show: str = ADVANCED,
    label: str | None = None,
    min: float | None = None,
    max: float | None = None,
    step: float | None = None,
    choices: tuple[str, ...] | None = None,
    none: float | None = None,
    group: str | None = None,
    flags: tuple[str, ...] = (),
) -> Any:
    """A dataclass field of :class:`TrainSettings` with the metadata forms need.

    Parameters
    ----------
    default : object
        The default value (immutable).
    show : {'main', 'advanced', 'hidden'}
        Where the Train widget shows the field.
    label : str, optional
        Text beside the control.
    min, max, step : float, optional
        Bounds and step of a number.
    choices : tuple of str, optional
        Allowed values of a string.
    none : float, optional
        Control value that stands for ``None`` in an optional field.
    group : str, optional
        Row of check boxes the control belongs to.
    flags : tuple of str
        Extra command-line spellings.

    Returns
    -------
    dataclasses.Field
        The field, with the given (non-None) metadata.
    """
    if show not in (MAIN, ADVANCED, HIDDEN):
        raise ValueError(f"show must be 'main', 'advanced' or 'hidden', got {show!r}")
    options = {
        "label": label,
        "min": min,
        "max": max,
        "step": step,
        "choices": choices,
        "none": none,
        "group": group,
    }
    metadata = {"show": show, "flags": tuple(flags)}
    metadata.update({k: v for k, v in options.items() if v is not None})
    return field(default=default, metadata=metadata)


@dataclass
class TrainSettings:
    """Everything that shapes a training run; defaults suit the ``fast`` preset on a laptop.

    Parameters
    ----------
    preset : {'fast', 'paper'}
        Network architecture for a new model (ignored when fine-tuning a given model). Use
        :meth:`for_preset` to get the paper's training settings as well.
    mode : {'cells', 'classes'}
        What the labels hold: ``'cells'``, instances (0 = background, k = cell k; the
        network learns foreground with the border weights); ``'classes'``, scribbles of a
        semantic segmentation (0 = not painted, k = class k; only painted pixels count, each
        class weighted by ``n_painted / (K * n_k)``, validation by mean per-class IoU).
    iterations : int, optional
        Stop after this many optimisation steps. ``None``: no limit.
    minutes : float, optional
        Stop after this much time. ``None``: no limit. With neither limit, training runs until
        it is asked to stop.
    patch_size : int
        Edge in pixels of the square area the loss is computed on (the network's output); the
        network's input is this plus the context (``context`` with same padding, what valid
        convolutions need with valid padding), rounded up to the network's grid. Reduced
        automatically when every image is smaller.
    batch_size : int
        Patches per step.
    learning_rate : float
        Peak learning rate; it follows a cosine decay over the planned run.
    optimizer : {'adam', 'sgd'}
        Adam, or SGD with the paper's momentum of 0.99.
    elastic, flips, affine, intensity : bool
        Augmentations: elastic deformation (the paper's strength, control points
        ``elastic_spacing`` px apart), the 8 flips and 90° rotations, small rotation and
        scaling, gain/offset/gamma/noise.
    w0, sigma : float
        Border weight height and width in pixels (paper: 10 and 5).
    class_balance : bool
        Balance background and foreground in the loss.
    border_weights : bool
        Emphasise the background between touching cells.
    gap : int
        Pixels cut from each side of a border between touching cells in the targets.
    device : str
        ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or ``'mps'``.
    seed : int, optional
        Seed for initialisation, patch positions and augmentation; on the CPU the same seed
        gives the same weights. ``None``: a random seed (recorded with the model).
    validation_fraction : float
        Share of the annotated pixels held out to score the model, in [0, 0.5); nothing is
        held out when the annotations are too small to spare it.
    channel_axis : int, optional
        Channel axis of multichannel images.
    rgb : bool
        Images are RGB(A) with colour last.
    schedule : {'cosine', 'constant'}
        Learning-rate schedule over the planned iterations or minutes.
    momentum : float
        Momentum of SGD.
    weight_decay : float
        L2 weight decay.
    validate_every : int, optional
        Iterations between validation scores; ``None``: a tenth of the run (10 to 100).
    elastic_std : float
        Strength of the elastic deformation: the standard deviation in pixels of the
        displacements on the paper's grid (control points 286 px apart; 10 in the paper),
        scaled to ``elastic_spacing`` so that the local stretch is the same.
    elastic_spacing : float
        Pixels between the control points of the elastic deformation.
    amp : bool, optional
        bf16 autocast; ``None``: on for CUDA, off elsewhere.
    channels_last : bool, optional
        Channels-last memory format (channels_last_3d for a 3D network); ``None``: on for
        CUDA, off elsewhere.
    compile : bool
        ``torch.compile`` the network (a start-up cost; measured no gain on the CPU).
    context : int
        Pixels of image (mirrored at the image's edges) around the loss area in the network's
        input with same padding (at most the network's halo), so that no pixel that carries
        loss sees the network's zero padding. 0: the loss covers the whole input. Measured on a
        fast-preset model trained without context, zero padding moves the foreground
        probability by 0.12 on average at the patch's edge, 0.04 at 4 px and 0.02 (the level
        of any far change) from 8 px on: 16 px keep the loss clear of it at 1.56x the pixels of
        the bare patch (128 -> 160 px).
    validation_metric : {'ap', 'iou'}
        What picks the checkpoint on the held-out part: instance AP at IoU 0.5 after
        post-processing, whose probability threshold and minimum object size are chosen there
        too (``'ap'``), or foreground IoU with threshold 0.5 (``'iou'``).
    min_size_fraction : float
        The smallest object kept at inference, as a share of the area of the small annotated
        cells (5th percentile of the completely annotated ones); 0: not learnt (inference's
        default).
    depth : int, optional
        Pooling levels of a new network; None: the preset's (3 for both fast presets, 2D and
        3D; 4 for the paper's). Fewer levels see less context around each pixel (fast 2D
        preset: receptive radius 51 px at depth 3, 107 px at depth 4): with a few painted cells
        a network that sees a whole cell and its neighbours, but not a large part of the image,
        has less to learn by heart (on boxes of 10-20 real nuclei, depth 4 predicted foreground
        in large empty areas it never saw; docs/benchmarks.md). Ignored when fine-tuning (the
        model keeps its architecture).
    freeze_batch_norm : bool
        When fine-tuning a model: keep its batch-norm layers in evaluation mode, so that their
        running statistics stay those of the data the model was trained on and a small
        annotation does not rewrite them (their scale and shift are still trained). Ignored
        for a new network. Off by default (:data:`FINE_TUNE_DEFAULTS`).
    weight_average : float
        Decay of an exponential moving average of the weights and batch-norm statistics
        (``torch.optim.swa_utils``), updated after every step; the average is what is
        validated and kept. 0: off (the network itself).
    spatial_dims : {2, 3}
        2: a 2D network (stacks are sets of 2D slices); 3: a 3D network trained on volumes
        ``(Z, Y, X)``, from their labelled slices (or their regions) only.
    voxel_size : tuple of float, optional
        Voxel size ``(z, y, x)`` of the volumes (a napari layer's ``scale``); it plans the 3D
        network's pooling, the physical distances of border weights, gap and elastic
        deformation, and is stored with the model. None: isotropic.
    """

    preset: str = setting("fast", show=MAIN, choices=tuple(PRESETS))
    mode: str = setting("cells", show=MAIN, choices=MODES)
    iterations: int | None = setting(
        400, show=MAIN, label="iterations (0: no limit)", min=0, max=10_000_000, none=0
    )
    minutes: float | None = setting(
        None, show=MAIN, label="minutes (0: no limit)", min=0.0, max=10080.0, step=1.0, none=0.0
    )
    patch_size: int = setting(
        128, show=MAIN, label="patch size", min=16, max=4096, step=16, flags=("--patch",)
    )
    batch_size: int = setting(4, show=MAIN, label="batch size", min=1, max=1024, flags=("--batch",))
    learning_rate: float = setting(
        1e-3, label="learning rate", min=0.0, max=1.0, step=1e-4, flags=("--lr",)
    )
    optimizer: str = setting("adam", choices=("adam", "sgd"))
    elastic: bool = setting(True, show=MAIN, group="augment")
    flips: bool = setting(True, show=MAIN, group="augment")
    affine: bool = setting(True, show=MAIN, group="augment", label="rotate/scale")
    intensity: bool = setting(True, show=MAIN, group="augment")
    w0: float = setting(10.0, show=MAIN, min=0.0, max=1000.0, step=1.0)
    sigma: float = setting(5.0, show=MAIN, min=0.1, max=200.0, step=0.5)
    class_balance: bool = setting(True, show=MAIN, label="balance classes")
    border_weights: bool = setting(True, label="border weights")
    gap: int = setting(1, min=0, max=16)
    device: str = setting("auto", show=MAIN)
    seed: int | None = setting(None, label="seed (-1: random)", min=-1, max=2**31 - 1, none=-1)
    validation_fraction: float = setting(
        0.1, label="validation fraction", min=0.0, max=0.45, step=0.05
    )
    channel_axis: int | None = setting(None, show=HIDDEN, label="channel axis")
    rgb: bool = setting(False, show=HIDDEN, label="RGB")
    schedule: str = setting("cosine", choices=("cosine", "constant"))
    momentum: float = setting(0.99, min=0.0, max=0.999, step=0.01)
    weight_decay: float = setting(0.0, label="weight decay", min=0.0, max=1.0, step=1e-5)
    validate_every: int | None = setting(
        None, label="validate every (0: auto)", min=0, max=1_000_000, none=0
    )
    elastic_std: float = setting(10.0, label="elastic std (px)", min=0.0, max=100.0, step=1.0)
    elastic_spacing: float = setting(64.0, label="elastic grid (px)", min=8.0, max=1024.0, step=8.0)
    amp: bool | None = setting(None, show=HIDDEN, label="bf16 autocast")
    channels_last: bool | None = setting(None, show=HIDDEN, label="channels last")
    compile: bool = setting(False, label="torch.compile")
    context: int = setting(16, label="context (px)", min=0, max=512, step=8)
    validation_metric: str = setting("ap", label="validation metric", choices=("ap", "iou"))
    min_size_fraction: float = setting(
        0.25, label="min size (x cell area)", min=0.0, max=1.0, step=0.05
    )
    depth: int | None = setting(None, label="network depth (0: preset's)", min=0, max=6, none=0)
    freeze_batch_norm: bool = setting(False, label="freeze batch norm (fine-tuning)")
    weight_average: float = setting(
        0.0, label="weight average (EMA decay, 0: off)", min=0.0, max=0.9999, step=0.001
    )
    spatial_dims: int = setting(2, show=HIDDEN, label="dimensions")
    voxel_size: tuple[float, ...] | None = setting(None, show=HIDDEN, label="voxel size")

    @classmethod
    def for_preset(cls, preset: str, fine_tune: bool = False, **overrides: Any) -> TrainSettings:
        """Settings for a preset: ``'fast'`` (the defaults) or ``'paper'``; for fine-tuning.

        ``'paper'`` follows Ronneberger et al. (2015): SGD with momentum 0.99, one 572 x 572
        input tile per step (388 x 388 output), learning rate 1e-3.

        With ``mode='classes'`` the ``'fast'`` preset takes :data:`CLASSES_DEFAULTS`: scribbles
        carry loss on their painted pixels only, so smaller patches centred on the strokes
        bring more of them per second of training (``bench/bench_classes.py``, 2 minutes on a
        busy 2-core CPU: mean class IoU 0.57 with 64 px patches in batches of 8, 0.38 with the
        128 px patches in batches of 4 of the cells mode).

        With ``spatial_dims=3`` the ``'fast'`` preset takes :data:`VOLUME_DEFAULTS` (in any
        mode): a 3D patch costs its in-plane edge cubed, so a 48 px patch with 8 px of context
        (an input of 28 x 64 x 64 voxels at a z spacing of 2.5) in batches of 2, in the base-8
        network of :data:`~napari_unet.core.model.PRESETS_3D`, makes a step about 10x cheaper
        than a 64 px patch with 16 px of context (40 x 96 x 96) in a base-16 one, and a 6
        minute CPU run several hundred steps (``bench/bench_3d.py``, docs/benchmarks.md); over
        300 steps a peak learning rate of 3e-3 scored 3D AP@0.5 0.41 where 1e-3 scored 0.32.

        ``fine_tune=True`` (a model given to :func:`~napari_unet.core.training.train`, e.g. a
        bundled one) takes :data:`FINE_TUNE_DEFAULTS` (none at present: the candidates measured
        with ``bench/bench_real.py --split train``, a lower learning rate and frozen batch-norm
        statistics, did not beat the defaults; see docs/benchmarks.md).

        Parameters
        ----------
        preset : {'fast', 'paper'}
            The preset.
        fine_tune : bool
            The settings fine-tune a model.
        **overrides
            Any field to change.

        Returns
        -------
        TrainSettings
            The settings.
        """
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        base: dict[str, Any] = {"preset": preset}
        if preset == "paper":
            base.update(optimizer="sgd", batch_size=1, patch_size=388, learning_rate=1e-3)
        elif overrides.get("mode") == "classes":
            base.update(CLASSES_DEFAULTS)
        if preset == "fast" and overrides.get("spatial_dims") == 3:
            base.update(VOLUME_DEFAULTS)
        if fine_tune:
            base.update(FINE_TUNE_DEFAULTS)
        return cls(**{**base, **overrides})

    def validate(self) -> None:
        """Raise ValueError naming the first field with an unusable value."""

        def positive_int(name: str, value: Any, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        positive_int("iterations", self.iterations, allow_none=True)
        if self.minutes is not None and not (
            isinstance(self.minutes, int | float) and self.minutes > 0
        ):
            raise ValueError(f"minutes must be a positive number or None, got {self.minutes!r}")
        positive_int("patch_size", self.patch_size)
        positive_int("batch_size", self.batch_size)
        positive_int("validate_every", self.validate_every, allow_none=True)
        if isinstance(self.context, bool) or not isinstance(self.context, int) or self.context < 0:
            raise ValueError(f"context must be an integer >= 0 pixels, got {self.context!r}")
        if not (isinstance(self.learning_rate, int | float) and self.learning_rate >= 0):
            raise ValueError(f"learning_rate must be a number >= 0, got {self.learning_rate!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.validation_metric not in ("ap", "iou"):
            raise ValueError(
                f"validation_metric must be 'ap' or 'iou', got {self.validation_metric!r}"
            )
        if not (isinstance(self.min_size_fraction, int | float) and self.min_size_fraction >= 0):
            raise ValueError(
                f"min_size_fraction must be a number >= 0, got {self.min_size_fraction!r}"
            )
        positive_int("depth", self.depth, allow_none=True)
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.validation_fraction < 0.5:
            raise ValueError(
                f"validation_fraction must be in [0, 0.5), got {self.validation_fraction!r}"
            )
        if isinstance(self.gap, bool) or not isinstance(self.gap, int) or self.gap < 0:
            raise ValueError(f"gap must be an integer >= 0, got {self.gap!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0
        ):
            raise ValueError(f"seed must be a non-negative integer or None, got {self.seed!r}")
        if not (self.w0 >= 0 and self.sigma > 0):
            raise ValueError(f"w0 must be >= 0 and sigma > 0, got {self.w0!r}, {self.sigma!r}")
        if self.spatial_dims not in (2, 3) or isinstance(self.spatial_dims, bool):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
        if self.voxel_size is not None:
            check_voxel_size(self.voxel_size, self.spatial_dims, "voxel_size")
        self.augment_settings()  # checks elastic_std

    def augment_settings(self) -> AugmentSettings:
        """The augmentation these settings ask for: every field of :class:`AugmentSettings`
        that these settings have (a name in both), the others at their defaults."""
        names = {f.name for f in fields(AugmentSettings)} & {f.name for f in fields(self)}
        return AugmentSettings(**{name: getattr(self, name) for name in names})

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dictionary (stored in model files)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSettings:
        """Settings from :meth:`to_dict` output; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
