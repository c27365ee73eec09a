"""Inference with a model of the classes mode: K class probabilities, class ids, objects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.core.inference import (
    class_ids,
    class_objects,
    predict_probabilities,
    predict_region,
    predict_whole,
    segment,
)
from napari_unet.core.model import TrainedModel, UNet, UNetConfig
from napari_unet.core.progress import run_to_end

pytestmark = pytest.mark.usefixtures("one_thread")


ATOL = 1e-4
K = 3


def _model(padding: str) -> TrainedModel:
    torch.manual_seed(0)
    config = UNetConfig(
        depth=2, base_channels=4, padding=padding, batch_norm=padding == "same", n_classes=K
    )
    net = UNet(config)
    with torch.no_grad():  # logits far enough apart for every class to win somewhere
        net.head.weight.mul_(4)
    if config.batch_norm:
        net.train()
        with torch.no_grad():
            net(torch.randn(2, 1, 64, 64) * 2 + 1)
    return TrainedModel(net.eval(), mode="classes", class_names=("bg", "a", "b"))


@pytest.fixture(scope="module", params=["same", "valid"])
def model(request: pytest.FixtureRequest) -> TrainedModel:
    return _model(request.param)


def _image(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 1000).astype(np.uint16)


def _tile(model: TrainedModel, stride: int) -> int:
    return model.config.admissible_size(2 * model.config.halo + stride)


@pytest.mark.parametrize("runtime", ["torch", "auto"])
def test_tiled_equals_one_whole_pass_for_every_class(model: TrainedModel, runtime: str) -> None:
    image = _image((37, 53))
    whole = predict_whole(model, image, device="cpu", runtime="torch")
    assert whole.shape == (K, 37, 53)
    np.testing.assert_allclose(whole.sum(axis=0), 1.0, atol=1e-5)
    for tile, batch in ((_tile(model, 12), 3), (_tile(model, 20) + 1, 1)):
        tiled = run_to_end(
            predict_probabilities(
                model, image, tile=tile, batch_size=batch, device="cpu", runtime=runtime
            )
        )
        assert tiled.shape == (K, 37, 53) and tiled.dtype == np.float32
        for k in range(K):
            np.testing.assert_allclose(tiled[k], whole[k], atol=ATOL, rtol=0)


def test_stack_probabilities_are_class_first_and_segment_gives_class_ids(model) -> None:
    image = _image((2, 30, 40))
    prob = run_to_end(
        predict_probabilities(model, image, tile=_tile(model, 16), device="cpu", runtime="torch")
    )
    assert prob.shape == (K, 2, 30, 40)
    out = np.zeros((K, 2, 30, 40), np.float32)
    ids = run_to_end(
        segment(
            model,
            image,
            tile=_tile(model, 16),
            device="cpu",
            runtime="torch",
            probabilities_out=out,
        )
    )
    assert ids.dtype == np.uint8 and ids.shape == (2, 30, 40)
    np.testing.assert_array_equal(ids, prob.argmax(axis=0) + 1)
    np.testing.assert_allclose(out, prob, atol=ATOL)
    assert set(np.unique(ids)) <= {1, 2, 3} and len(np.unique(ids)) >= 2


def test_segment_reports_class_probabilities_per_slice(model) -> None:
    image = _image((2, 24, 24))
    items = []
    run_to_end(
        segment(model, image, device="cpu", runtime="torch"),
        lambda e: items.append(e.item) if e.stage == "labels" else None,
    )
    assert [i.z for i in items] == [0, 1]
    assert items[0].probabilities.shape == (K, 24, 24)
    np.testing.assert_array_equal(items[0].labels, class_ids(items[0].probabilities))


def test_region_of_a_classes_model(model) -> None:
    image = _image((40, 33))
    tile = _tile(model, 12)
    full = run_to_end(predict_probabilities(model, image, tile=tile, device="cpu", runtime="torch"))
    part = predict_region(
        model, image, rows=(5, 30), cols=(10, 33), tile=tile, device="cpu", runtime="torch"
    )
    assert part.shape == (K, 25, 23)
    np.testing.assert_allclose(part, full[:, 5:30, 10:33], atol=ATOL)


def test_class_ids_and_objects_per_class():
    prob = np.array([[[0.6, 0.1], [0.2, 0.5]], [[0.4, 0.9], [0.8, 0.5]]])
    assert class_ids(prob).tolist() == [[1, 2], [2, 1]]  # a tie goes to the lower class
    ids = np.array([[1, 2, 2, 1, 2], [1, 1, 1, 1, 2], [2, 1, 1, 2, 2]])
    labels, owner = class_objects(ids, [2])
    assert labels.tolist() == [[0, 1, 1, 0, 2], [0, 0, 0, 0, 2], [3, 0, 0, 2, 2]]
    assert owner.tolist() == [0, 2, 2, 2]
    labels, owner = class_objects(ids, min_size=2)
    assert owner.tolist() == [0, 1, 2, 2]  # the single class-2 pixel at (2, 0) is dropped
    assert labels[2, 0] == 0 and labels[0, 0] == 1
    stack, owner = class_objects(np.stack([ids, ids]), [2], connectivity=2)
    assert stack.max() == 6 and len(owner) == 7  # unique across slices, 8-connected
    with pytest.raises(ValueError, match="integer class ids"):
        class_objects(np.zeros(5, np.float32))
