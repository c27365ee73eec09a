"""The classes mode: scribble targets, class weights, per-class IoU, model files, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.core.model import TrainedModel, UNet, UNetConfig, check_mode
from napari_unet.core.model_files import ModelFileError, load_model, save_model
from napari_unet.core.targets import IGNORE, class_balance_weights, class_targets
from napari_unet.core.training import TrainSettings, prepare_samples, run_training, train
from napari_unet.core.training.data import TargetSpec
from napari_unet.core.training.metrics import class_iou
from napari_unet.core.training.validation import hold_out

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_classes(n_classes: int = 3, names=("bg", "a", "b")) -> TrainedModel:
    torch.manual_seed(0)
    net = UNet(UNetConfig(depth=2, base_channels=4, n_classes=n_classes))
    return TrainedModel(net, mode="classes", class_names=names)


def _scribbled(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Three vertical bands of different brightness, a few strokes on each."""
    rng = np.random.default_rng(0)
    image = rng.normal(0, 0.3, (size, size)).astype(np.float32)
    third = size // 3
    image[:, third : 2 * third] += 2
    image[:, 2 * third :] += 4
    labels = np.zeros((size, size), np.uint8)
    for k in range(3):
        labels[4:-4:6, k * third + 3 : (k + 1) * third - 3] = k + 1
    return image, labels


def _settings(**kw) -> TrainSettings:
    base = {
        "mode": "classes",
        "iterations": 3,
        "patch_size": 32,
        "batch_size": 2,
        "device": "cpu",
        "seed": 0,
    }
    return TrainSettings(**{**base, **kw})


# -- targets ---------------------------------------------------------------------------------


def test_class_targets_learn_painted_pixels_only_with_balanced_weights():
    labels = np.array([[1, 1, 1, 0], [0, 3, 0, 0]])
    t = class_targets(labels, 3)
    assert t.classes.tolist() == [[0, 0, 0, IGNORE], [IGNORE, 2, IGNORE, IGNORE]]
    # 4 painted pixels, K = 3: class 1 has 3 pixels -> 4 / 9, class 3 has 1 -> 4 / 3
    np.testing.assert_allclose(t.weights, [[4 / 9, 4 / 9, 4 / 9, 0], [0, 4 / 3, 0, 0]], rtol=1e-6)


def test_class_targets_respect_the_region_and_can_be_unbalanced():
    labels = np.array([[1, 2, 2, 1]])
    region = np.array([[True, True, True, False]])
    t = class_targets(labels, 2, region=region, class_balance=False)
    assert t.classes.tolist() == [[0, 1, 1, IGNORE]]
    assert t.weights.tolist() == [[1, 1, 1, 0]]


def test_class_balance_weights():
    np.testing.assert_allclose(class_balance_weights(np.array([30, 10, 0])), [40 / 90, 4 / 3, 1])
    assert class_balance_weights(np.array([5, 1]), class_balance=False).tolist() == [1, 1]


def test_class_iou_against_a_hand_count():
    truth = np.array([[1, 1, 2, 0], [3, 3, 2, 2]])
    pred = np.array([[1, 2, 2, 3], [3, 1, 2, 0]])
    # class 1: inter 1, union {t: 2 + p: 2 - 1} = 3; class 2: inter 2, union 3 + 2 - 2 + 1 miss
    # (pred 0 at a true 2) = 4; class 3: inter 1, union 2 + 1 - 1 = 2 (pred 3 at t 0 unscored)
    np.testing.assert_allclose(class_iou(truth, pred, 3), [1 / 3, 2 / 4, 1 / 2])
    assert np.isnan(class_iou(np.array([1]), np.array([1]), 2)[1])


# -- bad input -------------------------------------------------------------------------------


def test_one_class_only_is_a_clear_error():
    image, labels = _scribbled()
    labels[labels > 1] = 0
    with pytest.raises(ValueError, match="one class only"):
        next(train(image, labels, settings=_settings()))


def test_a_value_above_255_is_a_clear_error():
    image, labels = _scribbled()
    labels = labels.astype(np.int32)
    labels[0, 0] = 300
    with pytest.raises(ValueError, match=r"value 300.*1 to 255"):
        next(train(image, labels, settings=_settings()))


def test_scribbles_of_another_shape_are_a_clear_error():
    image, labels = _scribbled()
    with pytest.raises(ValueError, match=r"shape \(64, 60\).*\(64, 64\)"):
        next(train(image, labels[:, :60], settings=_settings()))


def test_inputs_are_not_modified():
    image, labels = _scribbled()
    before = image.copy(), labels.copy()
    run_training(image, labels, settings=_settings(iterations=1), model=_tiny_classes())
    np.testing.assert_array_equal(image, before[0])
    np.testing.assert_array_equal(labels, before[1])


# -- samples and hold-out ----------------------------------------------------------------------


def test_samples_keep_the_scribbles_and_the_class_count_is_the_largest_value():
    image, labels = _scribbled()
    labels[labels == 2] = 0  # classes 1 and 3 painted: K = 3
    (sample,) = prepare_samples(image, labels, targets=TargetSpec(mode="classes"))
    np.testing.assert_array_equal(sample.labels, labels)
    assert set(np.unique(sample.classes)) == {0, 2, IGNORE}
    assert sample.n_annotated == np.count_nonzero(labels)


def test_scribble_hold_out_keeps_every_class_for_training():
    image, labels = _scribbled(128)
    samples = prepare_samples(image, labels, targets=TargetSpec(mode="classes"))
    spec = TargetSpec(mode="classes", n_classes=3)
    training, blocks = hold_out(samples, 0.2, 32, np.random.default_rng(1), targets=spec)
    assert blocks
    held = np.zeros(labels.shape, bool)
    for _, y0, x0 in blocks:
        held[y0 : y0 + 32, x0 : x0 + 32] = True
    kept = training[0]
    assert not kept.annotated[held].any()
    share = np.count_nonzero(labels[held]) / np.count_nonzero(labels)
    assert 0 < share <= 0.4
    assert set(np.unique(kept.classes[kept.annotated])) == {0, 1, 2}


# -- training and model files ------------------------------------------------------------------


def test_training_gives_a_classes_model_with_names_and_per_class_validation(tmp_path):
    image, labels = _scribbled(96)
    model = run_training(
        image,
        labels,
        settings=_settings(iterations=4, validate_every=2, validation_fraction=0.2),
        model=_tiny_classes(),
        class_names=["background", "middle"],
    )
    assert model.mode == "classes"
    assert model.config.n_classes == 3
    assert model.class_names == ("background", "middle", "class 3")
    summary = model.training["summary"]
    assert summary["mode"] == "classes"
    assert summary["validation_metric"] == "mean per-class IoU on held-out scribbles"
    per_class = summary["validation_class_iou"]
    assert len(per_class) == 3
    scores = [v for v in per_class if v is not None]
    assert summary["validation"] == pytest.approx(np.mean(scores))
    assert "threshold" not in model.training
    loaded = load_model(save_model(model, tmp_path / "m.pt"))
    assert (loaded.mode, loaded.class_names) == ("classes", model.class_names)


def test_a_new_classes_model_has_as_many_outputs_as_the_largest_class():
    image, labels = _scribbled(64)
    settings = _settings(iterations=1, validation_fraction=0.0)
    model = run_training(image, labels, settings=settings)
    assert model.config.n_classes == 3
    assert model.class_names == ("class 1", "class 2", "class 3")
    assert model.net(torch.zeros(1, 1, 32, 32)).shape == (1, 3, 32, 32)


def test_modes_do_not_mix_when_fine_tuning():
    image, labels = _scribbled()
    cells = TrainedModel(UNet(UNetConfig(depth=2, base_channels=4)))
    with pytest.raises(ValueError, match="needs a 'classes' model, got a 'cells' model"):
        next(train(image, labels, settings=_settings(), model=cells))
    with pytest.raises(ValueError, match="needs a 'cells' model, got a 'classes' model"):
        next(train(image, labels, settings=_settings(mode="cells"), model=_tiny_classes()))
    check_mode(cells, "cells")


def test_more_classes_than_the_fine_tuned_model_is_an_error():
    image, labels = _scribbled()
    with pytest.raises(ValueError, match="class 3 but the model fine-tuned has 2 classes"):
        next(train(image, labels, settings=_settings(), model=_tiny_classes(2, ("a", "b"))))


def test_older_model_files_load_as_cells_models(tmp_path):
    model = TrainedModel(UNet(UNetConfig(depth=2, base_channels=4)))
    path = save_model(model, tmp_path / "old.pt")
    data = torch.load(path, weights_only=True)
    del data["mode"], data["class_names"]
    torch.save(data, path)
    loaded = load_model(path)
    assert (loaded.mode, loaded.class_names) == ("cells", ())


def test_a_cells_model_file_with_more_than_two_classes_is_refused(tmp_path):
    path = save_model(_tiny_classes(), tmp_path / "m.pt")
    data = torch.load(path, weights_only=True)
    data["mode"] = "cells"
    torch.save(data, path)
    with pytest.raises(ModelFileError, match="'cells' model must have 2 output classes, got 3"):
        load_model(path)


def test_the_fast_preset_takes_smaller_patches_for_scribbles():
    classes = TrainSettings.for_preset("fast", mode="classes")
    assert (classes.patch_size, classes.batch_size) == (64, 8)
    assert TrainSettings.for_preset("fast", mode="classes", patch_size=96).patch_size == 96
    cells = TrainSettings.for_preset("fast")
    assert (cells.patch_size, cells.batch_size) == (128, 4)
    assert TrainSettings.for_preset("paper", mode="classes").patch_size == 388


def test_too_few_scribbles_to_validate_say_so_in_their_words():
    from napari_unet.core.training.validation import NoValidationWarning

    image, labels = _scribbled(32)
    settings = _settings(iterations=1, patch_size=16)
    with pytest.warns(NoValidationWarning, match="touched by scribbles.*paint more strokes"):
        run_training(image, labels, settings=settings, model=_tiny_classes())
