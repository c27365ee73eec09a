"""Exact overlap-tile inference over numpy, dask and zarr arrays, and instance segmentation.

- :mod:`.predict`: the public entry points (:func:`predict_probabilities`, :func:`segment`, ...);
  the long ones are generators of progress events (:class:`napari_unet.core.progress.Step`)
  that return their result: ``run_to_end(segment(model, image))``.
- :mod:`.tiling`: tile geometry on the pooling grid, mirror indices, tile size from memory.
- :mod:`.plan`: :class:`Plan`, the tile shape and batch size for an image on a device.
- :mod:`.source`: lazy reads of an image as 2D multichannel slices.
- :mod:`.runner`: the network on a device (eval copy, precision, TTA, out-of-memory test).
- :mod:`.runtimes`: where the network runs: torch, or on the CPU a graph exported to ONNX
  Runtime or OpenVINO (cached per model content, torch fallback).
- :mod:`.engine`: the tile loop with its reader thread and out-of-memory fallback.
- :mod:`.postprocess`: probabilities -> instance labels, unique across a stack; class ids and
  objects per class for a model of the classes mode.
- :mod:`.linking`: a 2D model's slice objects of a stack linked into 3D objects by overlap.
"""

from .engine import Cancelled
from .linking import (
    DEFAULT_LINK_OVERLAP,
    LINK_MEASURES,
    SliceLinker,
    check_link_threshold,
    link_slices,
)
from .plan import Plan
from .postprocess import (
    DEFAULT_MIN_CONFIDENCE,
    DEFAULT_MIN_SIZE,
    DEFAULT_THRESHOLD,
    PostProcessing,
    StackLabeller,
    class_ids,
    class_objects,
    model_labeller,
    postprocessing_defaults,
    probabilities_to_labels,
    seed_levels,
    split_seeds,
)
from .predict import (
    SliceLabels,
    predict_probabilities,
    predict_region,
    predict_whole,
    prediction_plan,
    probability_shape,
    segment,
    slice_normalization,
)
from .runner import class_probabilities, foreground_probability
from .runtimes import RUNTIMES, available_runtimes, describe_runtime

__all__ = [
    "DEFAULT_LINK_OVERLAP",
    "DEFAULT_MIN_CONFIDENCE",
    "DEFAULT_MIN_SIZE",
    "DEFAULT_THRESHOLD",
    "LINK_MEASURES",
    "RUNTIMES",
    "Cancelled",
    "Plan",
    "PostProcessing",
    "SliceLabels",
    "SliceLinker",
    "StackLabeller",
    "available_runtimes",
    "check_link_threshold",
    "class_ids",
    "class_objects",
    "class_probabilities",
    "describe_runtime",
    "foreground_probability",
    "link_slices",
    "model_labeller",
    "postprocessing_defaults",
    "predict_probabilities",
    "predict_region",
    "predict_whole",
    "prediction_plan",
    "probabilities_to_labels",
    "probability_shape",
    "seed_levels",
    "segment",
    "slice_normalization",
    "split_seeds",
]
