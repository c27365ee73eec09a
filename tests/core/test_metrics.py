from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.training.metrics import (
    average_precision,
    iou,
    iou_matrix,
    match_instances,
)


def test_iou_of_masks():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True  # 8 pixels
    b[1:3] = True  # 8 pixels, 4 shared
    assert iou(a, b) == pytest.approx(4 / 12)
    assert iou(a, a) == 1.0
    assert iou(np.zeros(3), np.zeros(3)) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        iou(a, b[:3])


def test_iou_matrix_hand_made():
    true = np.array(
        [
            [1, 1, 1, 0, 2, 2],
            [1, 1, 1, 0, 2, 2],
        ]
    )
    pred = np.array(
        [
            [9, 9, 0, 0, 4, 4],
            [9, 9, 0, 4, 4, 4],
        ]
    )
    m, t_ids, p_ids = iou_matrix(true, pred)
    assert t_ids.tolist() == [1, 2]
    assert p_ids.tolist() == [4, 9]
    # 1 vs 9: 4 / 6; 2 vs 4: 4 / 5; no other overlaps.
    np.testing.assert_allclose(m, [[0.0, 4 / 6], [4 / 5, 0.0]])


def test_iou_matrix_without_background_and_empty():
    m, t, p = iou_matrix(np.array([[1, 2]]), np.array([[3, 3]]))
    np.testing.assert_allclose(m, [[0.5], [0.5]])
    m, t, p = iou_matrix(np.zeros((3, 3), int), np.zeros((3, 3), int))
    assert m.shape == (0, 0) and t.size == 0 and p.size == 0


def test_perfect_prediction_with_other_label_values():
    true = np.zeros((10, 10), np.int32)
    true[1:4, 1:4] = 1
    true[5:9, 5:9] = 2
    pred = np.where(true == 1, 7, np.where(true == 2, 3, 0))
    m = match_instances(true, pred, 0.9)
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)
    assert m.average_precision == 1.0
    assert sorted(m.pairs) == [(1, 7), (2, 3)]
    assert m.mean_matched_iou == 1.0


def test_merged_prediction_counts_one_match_and_one_miss():
    # Two touching true cells predicted as one object: the larger cell matches at 0.5.
    true = np.zeros((4, 10), np.int32)
    true[:, 0:6] = 1  # 24 px
    true[:, 6:10] = 2  # 16 px
    pred = (true > 0).astype(np.int32)
    m = match_instances(true, pred, 0.5)
    assert (m.tp, m.fp, m.fn) == (1, 0, 1)
    assert m.pairs == ((1, 1),)
    assert m.mean_matched_iou == pytest.approx(24 / 40)
    assert m.average_precision == pytest.approx(0.5)
    assert m.precision == 1.0 and m.recall == 0.5
    assert m.f1 == pytest.approx(2 / 3)
    # At 0.75 the merged object matches nothing.
    m = match_instances(true, pred, 0.75)
    assert (m.tp, m.fp, m.fn) == (0, 1, 2)
    assert m.average_precision == 0.0


def test_split_prediction_and_false_positive():
    true = np.zeros((6, 12), np.int32)
    true[:, :8] = 1  # 48 px
    pred = np.zeros_like(true)
    pred[:, :5] = 1  # 30 px: IoU 30/48 = 0.625
    pred[:, 5:8] = 2  # 18 px: IoU 18/48
    pred[0:2, 10:12] = 3  # on background
    m = match_instances(true, pred, 0.5)
    assert (m.tp, m.fp, m.fn) == (1, 2, 0)
    assert m.average_precision == pytest.approx(1 / 3)
    assert m.mean_matched_iou == pytest.approx(0.625)


def test_matching_is_one_to_one_and_maximises_matches_at_low_threshold():
    # Below 0.5 a greedy choice of the best IoU would take (t1, p1) and leave t2 unmatched;
    # the assignment matches both.
    true = np.array([[1, 1, 1, 1, 2, 2, 0, 0]])
    pred = np.array([[0, 1, 1, 1, 1, 1, 2, 2]])
    m, _, _ = iou_matrix(true, pred)
    # t1: p1 3/6, p2 0; t2: p1 2/5, p2 0
    np.testing.assert_allclose(m, [[0.5, 0.0], [0.4, 0.0]])
    r = match_instances(true, pred, 0.3)
    assert r.tp == 1 and r.pairs == ((1, 1),)  # one predicted object cannot serve two cells
    true = np.array([[1, 1, 2, 2, 2, 0]])
    pred = np.array([[1, 1, 1, 2, 2, 2]])
    # t1-p1 2/5, t2-p1 1/6, t2-p2 2/4: both pairs reach 0.4
    r = match_instances(true, pred, 0.4)
    assert r.tp == 2 and sorted(r.pairs) == [(1, 1), (2, 2)]


def test_average_precision_thresholds_and_datasets():
    true = np.zeros((4, 10), np.int32)
    true[:, 0:6] = 1
    true[:, 6:10] = 2
    merged = (true > 0).astype(np.int32)
    ap = average_precision(true, merged, [0.5, 0.75])
    np.testing.assert_allclose(ap, [0.5, 0.0])
    assert average_precision(true, merged, 0.5) == pytest.approx(0.5)
    # Counts are summed over images: (1 + 2) TP of (2 + 2) objects, 1 FN.
    ap = average_precision([true, true], [merged, true], [0.5])
    np.testing.assert_allclose(ap, [3 / 4])
    # Nothing to find and nothing found: perfect.
    empty = np.zeros((3, 3), int)
    assert average_precision(empty, empty, 0.5) == 1.0
    # Nothing found: zero.
    assert average_precision(true, np.zeros_like(true), 0.5) == 0.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        iou_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="integer instance labels"):
        iou_matrix(np.zeros((2, 2), float), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match=">= 0"):
        iou_matrix(-np.ones((2, 2), int), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="threshold"):
        match_instances(np.zeros((2, 2), int), np.zeros((2, 2), int), 0.0)
    with pytest.raises(ValueError, match="thresholds"):
        average_precision(np.ones((2, 2), int), np.ones((2, 2), int), [1.5])
    with pytest.raises(ValueError, match="same number"):
        average_precision([np.ones((2, 2), int)], [], 0.5)
    with pytest.raises(ValueError, match="both be arrays"):
        average_precision(np.ones((2, 2), int), [np.ones((2, 2), int)], 0.5)


def test_boolean_masks_are_one_instance():
    m = match_instances(np.ones((3, 3), bool), np.ones((3, 3), bool))
    assert (m.tp, m.fp, m.fn) == (1, 0, 0)


def test_window_counts_score_what_lies_mostly_inside():
    from napari_unet.core.training.metrics import window_counts

    true = np.zeros((6, 12), np.int32)
    true[1:4, 0:3] = 1  # inside, found
    true[1:4, 4:7] = 2  # half inside (columns 4-5 of 4-6 in the window), missed
    true[1:4, 9:12] = 3  # outside, missed: not counted
    pred = np.zeros_like(true)
    pred[1:4, 0:3] = 7
    pred[4:6, 0:2] = 8  # inside, matches nothing: a false positive
    pred[0, 8:12] = 9  # outside, matches nothing: not counted
    window = np.zeros(true.shape, bool)
    window[:, :6] = True
    assert window_counts(true, pred, window) == (1, 1, 1)
    # a cell cut by the window's edge is matched whole
    shifted = np.where(true == 2, 5, 0)
    assert window_counts(np.where(true == 2, 2, 0), shifted, window) == (1, 0, 0)
    assert window_counts(true, pred, np.zeros_like(window)) == (0, 0, 0)
