"""Average precision of 3D labels: instances matched one-to-one as whole 3D objects."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.inference import link_slices
from napari_unet.core.training.metrics import (
    average_precision,
    iou_matrix,
    match_instances,
    window_counts,
)
from napari_unet.sample_data import make_touching_nuclei_3d


def test_iou_of_3d_boxes_by_hand():
    true = np.zeros((4, 6, 6), np.int32)
    true[0:2, 0:3, 0:3] = 1  # 18 voxels
    true[2:4, 3:6, 3:6] = 2  # 18 voxels
    pred = np.zeros_like(true)
    pred[0:3, 0:3, 0:3] = 7  # 27 voxels, 18 of them in 1
    matrix, true_ids, pred_ids = iou_matrix(true, pred)
    assert true_ids.tolist() == [1, 2] and pred_ids.tolist() == [7]
    np.testing.assert_allclose(matrix, [[18 / 27], [0.0]])
    m = match_instances(true, pred, 0.5)
    assert (m.tp, m.fp, m.fn, m.pairs) == (1, 0, 1, ((1, 7),))
    assert average_precision(true, pred, 0.5) == pytest.approx(0.5)
    assert average_precision(true, pred, 0.75) == 0.0


def test_one_prediction_over_two_nuclei_counts_once():
    true = np.zeros((2, 4, 8), np.int32)
    true[:, :, :4], true[:, :, 4:] = 1, 2
    pred = np.where(true > 0, 5, 0)  # the two nuclei merged: IoU 1/2 with each
    m = match_instances(true, pred, 0.5)
    assert (m.tp, m.fp, m.fn) == (1, 0, 1)  # one-to-one: at most one of them matches


def test_per_slice_labels_score_zero_and_linked_ones_score_high():
    _, volume = make_touching_nuclei_3d((24, 96, 96), 25, spacing=(2.0, 1.0, 1.0), seed=3)
    assert average_precision(volume, volume, [0.5, 0.9]).tolist() == [1.0, 1.0]
    # a 2D model's view: one label per nucleus per slice, unique across the stack
    offsets = (np.arange(volume.shape[0]) * 1000)[:, None, None]
    per_slice = np.where(volume > 0, volume + offsets, 0)
    assert average_precision(volume, per_slice, 0.5) < 0.05  # no slice is half a nucleus
    linked = link_slices(per_slice)
    assert average_precision(volume, linked, 0.5) >= 0.9
    # several volumes: counts summed before the ratio
    both = average_precision([volume, volume], [linked, per_slice], 0.5)
    m1, m2 = match_instances(volume, linked, 0.5), match_instances(volume, per_slice, 0.5)
    tp = m1.tp + m2.tp
    assert both == pytest.approx(tp / (tp + m1.fp + m2.fp + m1.fn + m2.fn))


def test_window_counts_in_3d():
    true = np.zeros((6, 4, 12), np.int32)
    true[0:3, :, 0:4] = 1
    true[3:6, :, 4:8] = 2
    true[:, :, 9:12] = 3
    pred = np.where(true == 3, 0, true) * 4
    window = np.zeros(true.shape, bool)
    window[:, :, :10] = True  # nucleus 3 mostly outside (1 of 3 columns inside)
    assert window_counts(true, pred, window) == (2, 0, 0)
    window[:3] = False  # now nucleus 1 is outside: 2 matched inside, 3 not counted
    assert window_counts(true, pred, window) == (1, 0, 0)
