"""Scoring the network on the held-out part by instances, and the post-processing chosen there."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.core.model import UNetConfig
from napari_unet.core.training import validation
from napari_unet.core.training.data import prepare_samples
from napari_unet.core.training.validation import (
    THRESHOLDS,
    ValidationScore,
    min_size_candidates,
    score_network,
    validation_tiles,
)


class _ProbabilityNet(torch.nn.Module):
    """A stand-in network whose foreground logit is its input: the input says the probability."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x], dim=1)


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p)).astype(np.float32)


def _tiles(prob: np.ndarray, labels: np.ndarray, block: int = 32):
    (s,) = prepare_samples(labels.astype(np.uint8) * 50 + 1, labels)
    s.image = _logit(prob)[None]
    config = UNetConfig(depth=2, base_channels=4)
    return validation_tiles([s], [(0, 16, 16)], block, config)


def _cells():
    labels = np.zeros((64, 64), np.int32)
    labels[20:30, 20:30] = 1
    labels[20:30, 34:44] = 2
    labels[34:44, 22:30] = 3
    return labels


def test_under_confident_network_gets_a_lower_threshold(monkeypatch):
    monkeypatch.setattr(validation, "MIN_TUNING_CELLS", 3)
    labels = _cells()
    prob = np.full(labels.shape, 0.05)
    prob[labels > 0] = 0.45  # every cell below 0.5
    tiles = _tiles(prob, labels)
    net = _ProbabilityNet()
    score = score_network(net, tiles, torch.device("cpu"), gap=0, min_sizes=[4])
    # at 0.5 nothing is found; 0.4 finds every cell (and is preferred to 0.3, found as well),
    # kept only without a confidence filter (a peak of 0.45)
    assert score.ap == 1.0 and score.threshold == 0.4 and score.min_size == 4
    assert score.min_confidence == 0.0
    assert score.iou == 0.0  # foreground IoU at 0.5 sees nothing
    fixed = score_network(net, tiles, torch.device("cpu"), gap=0, min_sizes=[4], thresholds=[0.5])
    assert fixed.ap == 0.0 and fixed.threshold == 0.5
    # too few held-out cells to choose on: the preferred threshold is kept
    assert tiles.n_cells == 3
    monkeypatch.setattr(validation, "MIN_TUNING_CELLS", 4)
    kept = score_network(net, tiles, torch.device("cpu"), gap=0, min_sizes=[4, 2])
    assert (kept.ap, kept.threshold, kept.min_size) == (0.0, 0.5, 4)
    assert kept.min_confidence == validation.CONFIDENCES[0] == 0.98


def test_unsure_false_positives_are_dropped_on_the_held_out_cells(monkeypatch):
    monkeypatch.setattr(validation, "MIN_TUNING_CELLS", 3)
    labels = _cells()
    prob = np.where(labels > 0, 0.99, 0.05)
    prob[40:46, 34:42] = 0.6  # haze: a 48-pixel object of at most 0.6 inside the block
    tiles = _tiles(prob, labels)
    net = _ProbabilityNet()
    score = score_network(net, tiles, torch.device("cpu"), gap=0, min_sizes=[4])
    assert score.ap == 1.0 and score.min_confidence == 0.98 and score.threshold == 0.5
    only = {"min_sizes": [4], "thresholds": [0.5], "confidences": [0.0]}
    kept = score_network(net, tiles, torch.device("cpu"), gap=0, **only)
    assert kept.ap == 0.75  # 3 cells matched, 1 false positive


def test_minimum_size_is_chosen_on_the_held_out_cells(monkeypatch):
    monkeypatch.setattr(validation, "MIN_TUNING_CELLS", 3)
    labels = _cells()
    prob = np.where(labels > 0, 0.9, 0.05)
    prob[40:43, 36:39] = 0.9  # a 9-pixel false positive inside the block
    tiles = _tiles(prob, labels)
    net = _ProbabilityNet()
    score = score_network(net, tiles, torch.device("cpu"), gap=0, min_sizes=[5, 2, 10])
    assert score.ap == 1.0 and score.min_size == 10 and score.threshold == THRESHOLDS[0]
    score = score_network(net, tiles, torch.device("cpu"), gap=0, min_sizes=[5])
    assert score.ap < 1.0  # three cells and one false positive in the block


def test_checkpoints_rank_by_instances_then_pixels():
    a, b = ValidationScore(iou=0.9, ap=0.5), ValidationScore(iou=0.7, ap=0.6)
    assert a.key("ap") < b.key("ap") and a.key("iou") > b.key("iou")
    assert ValidationScore(0.8, 0.6).key("ap") > ValidationScore(0.7, 0.6).key("ap")
    assert ValidationScore(0.8, None).key("ap") == (0.8, -1.0)


def test_min_size_candidates():
    assert min_size_candidates(12, 16) == (12, 6)
    assert min_size_candidates(None, 16) == (16,)
    assert min_size_candidates(1, 16) == (1,)


def test_an_annotation_too_small_to_hold_out_warns() -> None:
    import warnings

    import pytest

    from napari_unet.core.progress import run_to_end
    from napari_unet.core.training import TrainSettings, train

    image = np.zeros((48, 48), np.float32)
    labels = np.zeros((48, 48), np.int32)
    image[10:20, 10:20] = labels[10:20, 10:20] = 1  # one cell: nothing to hold out
    settings = TrainSettings(
        iterations=1, patch_size=32, batch_size=2, device="cpu", seed=0, validation_fraction=0.2
    )
    with pytest.warns(validation.NoValidationWarning, match="too small to hold out 20%") as seen:
        model = run_to_end(train(image, labels, settings=settings))
    assert [w.message.block for w in seen if isinstance(w.message, Warning)] == [32]
    assert model.training["summary"]["validation_blocks"] == 0
    with warnings.catch_warnings():  # no validation asked for: no warning
        warnings.simplefilter("error", validation.NoValidationWarning)
        run_to_end(
            train(
                image,
                labels,
                settings=TrainSettings(
                    iterations=1, patch_size=32, batch_size=2, device="cpu", validation_fraction=0.0
                ),
            )
        )


@pytest.mark.parametrize(("unsure", "chosen"), [(1, 0.98), (2, 0.0)])
def test_confidence_off_only_when_it_finds_more_than_one_more_cell(monkeypatch, unsure, chosen):
    monkeypatch.setattr(validation, "MIN_TUNING_CELLS", 3)
    labels = _cells()
    prob = np.where(labels > 0, 0.99, 0.05)
    for value in range(1, unsure + 1):
        prob[labels == value] = 0.9  # a real cell the default confidence drops
    tiles = _tiles(prob, labels)
    net = _ProbabilityNet()
    score = score_network(net, tiles, torch.device("cpu"), gap=0, min_sizes=[4])
    assert tiles.n_cells == 3 and score.min_confidence == chosen
    # one cell of three lost is within the noise of three held-out cells; two are not
    assert score.ap == pytest.approx((3 - unsure) / 3 if chosen else 1.0)
