"""The one voxel-size check (core.voxels): the same rule and messages for models and targets."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.model import UNetConfig
from napari_unet.core.targets import check_sampling
from napari_unet.core.voxels import check_voxel_size


def test_values_come_back_as_floats():
    assert check_voxel_size(np.array([2, 1, 1]), 3) == (2.0, 1.0, 1.0)
    assert check_voxel_size((np.float32(0.5), 0.25)) == (0.5, 0.25)
    assert check_voxel_size(None, 3) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            (1.0, 1.0),
            "voxel_size must have 3 values (z, y, x), one spacing per axis of 3D data, "
            "got 2: (1.0, 1.0)",
        ),
        (
            (2.0, 0.0, 1.0),
            "voxel_size must hold finite spacings > 0 (positive finite numbers, "
            "one per axis (z, y, x)), got (2.0, 0.0, 1.0)",
        ),
        ((True, 1, 1), "voxel_size must hold finite spacings > 0"),
        ("123", "voxel_size must be 3 positive numbers (z, y, x), a sequence of spacings"),
    ],
)
def test_model_and_targets_say_the_same(value, message):
    """UNetConfig and the targets' sampling refuse the same values with the same words."""
    for check in (
        lambda v: UNetConfig(spatial_dims=3, voxel_size=v),
        lambda v: check_sampling(v, 3, name="voxel_size"),
    ):
        with pytest.raises(ValueError) as info:
            check(value)
        assert str(info.value).startswith(message)
