"""Training a U-Net from images and annotations.

- :mod:`.settings`: :class:`TrainSettings`, every option of a run.
- :mod:`.data`: images, labels and regions -> normalised samples (targets made as a
  :class:`TargetSpec` says), patch sampling, the minimum object size learnt from the annotated
  cells.
- :mod:`.augment`: batched augmentation on the training device (one sampling grid).
- :mod:`.validation`: the held-out part, and the network scored on it by instance AP, with the
  post-processing (threshold, minimum size) chosen there.
- :mod:`.loop`: :func:`train`, a generator of :class:`TrainEvent` that returns the model.
- :mod:`.metrics`: IoU and average precision with one-to-one instance matching.
- :mod:`.distributed`: data-parallel training under ``torchrun`` (DistributedDataParallel);
  :func:`.train` runs data-parallel when a process group is initialised.
- :mod:`.checkpoint`: checkpoints of a run (weights, optimiser, step, random streams) and
  resuming from one.
- :mod:`.sampling` and :mod:`.store`: compact sampling of annotated positions, patches read
  as drawn, prepared data kept on disk when large.
"""

from .augment import AugmentSettings, augment_batch
from .data import AnnotatedImage, PatchSampler, TargetSpec, prepare_samples
from .loop import TrainEvent, describe_run, preload_training_modules, run_training, train
from .metrics import Matching, average_precision, iou, match_instances
from .settings import TrainSettings
from .validation import NoValidationWarning, ValidationScore, score_network

__all__ = [
    "AnnotatedImage",
    "AugmentSettings",
    "Matching",
    "NoValidationWarning",
    "PatchSampler",
    "TargetSpec",
    "TrainEvent",
    "TrainSettings",
    "ValidationScore",
    "augment_batch",
    "average_precision",
    "describe_run",
    "iou",
    "match_instances",
    "preload_training_modules",
    "prepare_samples",
    "run_training",
    "score_network",
    "train",
]
