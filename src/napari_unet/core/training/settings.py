"""Training settings: :class:`TrainSettings`, everything that shapes a training run.

The fields are the single source of the training options: the command line and the Train widget
are built from them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ..model import PRESETS
from .augment import AugmentSettings

__all__ = ["TrainSettings"]


@dataclass
class TrainSettings:
    """Everything that shapes a training run; defaults suit the ``fast`` preset on a laptop.

    Parameters
    ----------
    preset : {'fast', 'paper'}
        Network architecture for a new model (ignored when fine-tuning a given model). Use
        :meth:`for_preset` to get the paper's training settings as well.
    iterations : int, optional
        Stop after this many optimisation steps. ``None``: no limit.
    minutes : float, optional
        Stop after this much time. ``None``: no limit. With neither limit, training runs until
        it is asked to stop.
    patch_size : int
        Edge in pixels of the square area the loss is computed on (the network's output); the
        network's input is this, rounded up to the network's grid, plus the context valid
        convolutions need. Reduced automatically when every image is smaller.
    batch_size : int
        Patches per step.
    learning_rate : float
        Peak learning rate; it follows a cosine decay over the planned run.
    optimizer : {'adam', 'sgd'}
        Adam, or SGD with the paper's momentum of 0.99.
    elastic, flips, affine, intensity : bool
        Augmentations: elastic deformation (3x3 grid, std ``elastic_std`` px), the 8 flips and
        90° rotations, small rotation and scaling, gain/offset/gamma/noise.
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
        Standard deviation of the elastic displacements in pixels.
    amp : bool, optional
        bf16 autocast; ``None``: on for CUDA, off elsewhere.
    channels_last : bool, optional
        Channels-last memory format; ``None``: on for CUDA, off elsewhere.
    compile : bool
        ``torch.compile`` the network (a start-up cost; measured no gain on the CPU).
    """

    preset: str = "fast"
    iterations: int | None = 400
    minutes: float | None = None
    patch_size: int = 128
    batch_size: int = 4
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    elastic: bool = True
    flips: bool = True
    affine: bool = True
    intensity: bool = True
    w0: float = 10.0
    sigma: float = 5.0
    class_balance: bool = True
    border_weights: bool = True
    gap: int = 1
    device: str = "auto"
    seed: int | None = None
    validation_fraction: float = 0.1
    channel_axis: int | None = None
    rgb: bool = False
    schedule: str = "cosine"
    momentum: float = 0.99
    weight_decay: float = 0.0
    validate_every: int | None = None
    elastic_std: float = 10.0
    amp: bool | None = None
    channels_last: bool | None = None
    compile: bool = False

    @classmethod
    def for_preset(cls, preset: str, **overrides: Any) -> TrainSettings:
        """Settings for a preset: ``'fast'`` (the defaults) or ``'paper'``.

        ``'paper'`` follows Ronneberger et al. (2015): SGD with momentum 0.99, one 572 x 572
        input tile per step (388 x 388 output), learning rate 1e-3.

        Parameters
        ----------
        preset : {'fast', 'paper'}
            The preset.
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
        positive_int("iterations", self.iterations, allow_none=True)
        if self.minutes is not None and not (
            isinstance(self.minutes, int | float) and self.minutes > 0
        ):
            raise ValueError(f"minutes must be a positive number or None, got {self.minutes!r}")
        positive_int("patch_size", self.patch_size)
        positive_int("batch_size", self.batch_size)
        positive_int("validate_every", self.validate_every, allow_none=True)
        if not (isinstance(self.learning_rate, int | float) and self.learning_rate >= 0):
            raise ValueError(f"learning_rate must be a number >= 0, got {self.learning_rate!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
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
        self.augment_settings()  # checks elastic_std

    def augment_settings(self) -> AugmentSettings:
        """The augmentation these settings ask for."""
        return AugmentSettings(
            elastic=self.elastic,
            elastic_std=self.elastic_std,
            flips=self.flips,
            affine=self.affine,
            intensity=self.intensity,
        )

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dictionary (stored in model files)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSettings:
        """Settings from :meth:`to_dict` output; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
