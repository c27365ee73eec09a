"""Training targets from instance labels: label checks, the gap, the border-weight map.

What the loss learns from a user's painting (Ronneberger et al. 2015, eq. 2), for 2D images and
3D volumes alike (a volume's voxel size is ``sampling=(z, y, x)``):

- :mod:`.labels`: instance labels and annotated regions are checked here; one label value on
  several separate regions is split into one label per region.
- :mod:`.gap`: the background gap cut between touching cells, and growing instances back.
- :mod:`.terms`: the two terms of eq. 2, class balance and the border term.
- :mod:`.weight_map`: the whole map, per image or per slice, and the training targets.
- :mod:`.live`: the map kept up to date while the user paints.
- :mod:`.classes`: targets of the classes mode (scribbles, class-balanced painted pixels).
"""

from .classes import (
    MAX_CLASSES,
    check_class_labels,
    class_balance_weights,
    class_targets,
    painted_classes,
)
from .gap import axis_gaps, cut_gap, grow_instances, touching_gap
from .labels import (
    SplitLabelsWarning,
    check_labels,
    check_labels_sampling,
    check_region,
    check_sampling,
    split_components,
)
from .live import BorderWeightMap, Box, update_border_weights
from .terms import BORDER_TOLERANCE, border_radius, class_weights, pixel_sampling
from .weight_map import (
    BACKGROUND,
    FOREGROUND,
    IGNORE,
    TrainingTargets,
    border_weight_map,
    border_weight_stack,
    training_targets,
)

__all__ = [
    "BACKGROUND",
    "BORDER_TOLERANCE",
    "FOREGROUND",
    "IGNORE",
    "MAX_CLASSES",
    "BorderWeightMap",
    "Box",
    "SplitLabelsWarning",
    "TrainingTargets",
    "axis_gaps",
    "border_radius",
    "border_weight_map",
    "border_weight_stack",
    "check_class_labels",
    "check_labels",
    "check_labels_sampling",
    "check_region",
    "check_sampling",
    "class_balance_weights",
    "class_targets",
    "class_weights",
    "cut_gap",
    "grow_instances",
    "painted_classes",
    "pixel_sampling",
    "split_components",
    "touching_gap",
    "training_targets",
    "update_border_weights",
]
