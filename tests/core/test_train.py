from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_unet.core.model import TrainedModel, UNet, UNetConfig
from napari_unet.core.model_files import load_model, save_model
from napari_unet.core.targets import IGNORE
from napari_unet.core.training import TrainEvent, TrainSettings, run_training, train
from napari_unet.core.training import settings as settings_module
from napari_unet.core.training.loop import weighted_cross_entropy
from napari_unet.sample_data import make_touching_cells

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(seed: int = 0, **config) -> TrainedModel:
    torch.manual_seed(seed)
    return TrainedModel(UNet(UNetConfig(**{"depth": 2, "base_channels": 4, **config})))


def _settings(**kw) -> TrainSettings:
    base = {"iterations": 4, "patch_size": 32, "batch_size": 2, "device": "cpu", "seed": 0}
    return TrainSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def cells():
    return make_touching_cells((64, 64), n_cells=8, seed=3)


def _drain(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as done:
            return events, done.value


def _params(model: TrainedModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.net.named_parameters()}


def test_weighted_cross_entropy_ignores_unannotated_pixels():
    logits = torch.tensor([[[[2.0, 0.0, 5.0]], [[0.0, 1.0, -5.0]]]])  # (1, 2, 1, 3)
    classes = torch.tensor([[[0, 1, IGNORE]]])
    weights = torch.tensor([[[1.0, 3.0, 0.0]]])
    loss = weighted_cross_entropy(logits, classes, weights)
    p0 = torch.softmax(logits[0, :, 0, 0], 0)[0]
    p1 = torch.softmax(logits[0, :, 0, 1], 0)[1]
    expected = (-torch.log(p0) - 3 * torch.log(p1)) / 2
    torch.testing.assert_close(loss, expected)
    # whatever the logits at the ignored pixel, the loss and its gradient there are 0
    logits.requires_grad_(True)
    weighted_cross_entropy(logits, classes, weights).backward()
    assert torch.all(logits.grad[..., 2] == 0)


def test_events_and_result(cells):
    image, labels = cells
    events, model = _drain(train(image, labels, settings=_settings(iterations=5), model=_tiny()))
    assert [e.iteration for e in events] == [1, 2, 3, 4, 5]
    e = events[-1]
    assert isinstance(e, TrainEvent)
    assert e.iterations == 5 and e.progress == 1.0
    assert e.device.startswith("CPU")
    assert e.loss > 0 and e.learning_rate > 0 and e.elapsed > 0 and e.samples_per_second > 0
    assert [x.elapsed for x in events] == sorted(x.elapsed for x in events)
    assert isinstance(model, TrainedModel)
    assert not model.net.training
    assert next(model.net.parameters()).device.type == "cpu"
    assert model.config == _tiny().config
    assert model.normalization == {"method": "percentile", "low": 1.0, "high": 99.8}
    assert model.gap == 1
    summary = model.training["summary"]
    assert summary["iterations_done"] == 5 and summary["stopped"] is False
    assert model.training["settings"]["patch_size"] == 32
    with torch.no_grad():
        out = model.net(torch.zeros(1, 1, 64, 64))
    assert out.shape == (1, 2, 64, 64)


def test_loss_falls():
    image, labels = make_touching_cells((64, 64), n_cells=8, seed=1)
    settings = _settings(
        iterations=60,
        batch_size=4,
        learning_rate=1e-2,
        schedule="constant",
        elastic=False,
        affine=False,
        intensity=False,
        validation_fraction=0.0,
    )
    events, _ = _drain(train(image, labels, settings=settings, model=_tiny(base_channels=8)))
    losses = np.array([e.loss for e in events])
    assert losses[-10:].mean() < 0.6 * losses[:5].mean()


def test_stop_request_ends_with_a_usable_model(cells):
    image, labels = cells
    stop = threading.Event()
    settings = _settings(iterations=None)  # no limit: only the stop request ends it
    gen = train(image, labels, settings=settings, model=_tiny(), stop=stop)
    seen = []
    while True:
        try:
            event = next(gen)
        except StopIteration as done:
            model = done.value
            break
        seen.append(event.iteration)
        assert event.iterations is None and event.progress is None
        if event.iteration == 3:
            stop.set()
    assert seen == [1, 2, 3]
    assert model.training["summary"] == {**model.training["summary"], "iterations_done": 3}
    assert model.training["summary"]["stopped"] is True
    with torch.no_grad():
        assert torch.isfinite(model.net(torch.zeros(1, 1, 32, 32))).all()
    # asked to stop before the first step: no step, still a model
    stop = threading.Event()
    stop.set()
    events, model = _drain(train(image, labels, settings=settings, model=_tiny(), stop=stop))
    assert events == [] and isinstance(model, TrainedModel)


def test_minutes_limit(cells):
    image, labels = cells
    settings = _settings(iterations=None, minutes=1e-9)
    events, model = _drain(train(image, labels, settings=settings, model=_tiny()))
    assert events == [] and model.training["summary"]["iterations_done"] == 0


def test_fine_tuning_starts_from_the_given_weights(cells):
    image, labels = cells
    given = _tiny(seed=5)
    given.gap = 2
    given.normalization = {"method": "percentile", "low": 2.0, "high": 99.0}
    before = _params(given)
    _, tuned = _drain(train(image, labels, settings=_settings(learning_rate=0.0), model=given))
    after = _params(tuned)
    assert all(torch.equal(before[k], after[k]) for k in before)  # lr 0: still the given weights
    assert tuned.gap == 2 and tuned.normalization == given.normalization
    assert tuned.config == given.config
    # with a real learning rate the weights move, and the given model is left as it was
    _, tuned = _drain(train(image, labels, settings=_settings(learning_rate=1e-2), model=given))
    assert not all(torch.equal(before[k], v) for k, v in _params(tuned).items())
    assert all(torch.equal(before[k], v) for k, v in _params(given).items())
    assert "fine_tuned_from" in tuned.training
    # a model trained further beats a fresh one on its first batch
    settings = _settings(iterations=40, learning_rate=1e-2, validation_fraction=0.0)
    trained = run_training(image, labels, settings=settings, model=_tiny(seed=1))
    first = _settings(iterations=1, schedule="constant", learning_rate=0.0, seed=7)
    (cont,), _ = _drain(train(image, labels, settings=first, model=trained))
    (fresh,), _ = _drain(train(image, labels, settings=first, model=_tiny(seed=1)))
    assert cont.loss < fresh.loss


def test_fine_tuning_checks_channels(cells):
    image, labels = cells
    with pytest.raises(ValueError, match="the model expects 2"):
        next(train(image, labels, settings=_settings(), model=_tiny(in_channels=2)))


def test_same_seed_same_weights_on_cpu(cells):
    image, labels = cells
    settings = _settings(seed=11, preset="fast", patch_size=16)
    runs = [run_training(image, labels, settings=settings) for _ in range(2)]
    a, b = (r.net.state_dict() for r in runs)
    assert runs[0].config.base_channels == 16  # the fast preset, initialised from the seed
    assert all(torch.equal(a[k], b[k]) for k in a)
    settings.seed = 12
    c = run_training(image, labels, settings=settings).net.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_seeded_run_with_dropout_is_reproducible_and_leaves_global_rng_alone(cells):
    image, labels = cells
    model = _tiny(dropout=0.5)
    state = torch.get_rng_state()
    runs = [run_training(image, labels, settings=_settings(seed=2), model=model) for _ in range(2)]
    a, b = (r.net.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(torch.get_rng_state(), state)
    run_training(image, labels, settings=_settings(seed=None), model=model)
    run_training(image, labels, settings=_settings(seed=None, iterations=1, patch_size=16))
    assert torch.equal(torch.get_rng_state(), state)


def test_validation_score_and_best_model(monkeypatch):
    from napari_unet.core.training import validation

    monkeypatch.setattr(validation, "MIN_TUNING_CELLS", 1)  # the 3 held-out cells suffice
    image, labels = make_touching_cells((128, 128), n_cells=24, seed=4)
    settings = _settings(iterations=6, validate_every=2, learning_rate=1e-2)
    events, model = _drain(train(image, labels, settings=settings, model=_tiny()))
    scores = [e.validation for e in events]
    assert scores[0] is None and scores[2] is None
    assert all(0.0 <= s <= 1.0 for s in scores[1::2])
    summary = model.training["summary"]
    assert summary["validation_blocks"] >= 1
    assert summary["validation"] == max(scores[1::2])
    assert events[-1].best_validation == summary["validation"]
    assert summary["best_iteration"] in (2, 4, 6)
    # too little annotation to hold any out: no score
    small_image, small_labels = make_touching_cells((40, 40), n_cells=4, seed=4)
    events, model = _drain(train(small_image, small_labels, settings=_settings(), model=_tiny()))
    assert all(e.validation is None for e in events)
    assert model.training["summary"]["validation"] is None


def test_valid_padding_multichannel_stack_with_region():
    image, labels = make_touching_cells((64, 64), n_cells=8, seed=2)
    two = np.stack([image, image // 2])  # (C, Y, X)
    stack = np.stack([two, two])  # (Z, C, Y, X)
    lab = np.stack([labels, np.zeros_like(labels)])
    region = np.zeros(lab.shape, bool)
    region[0, 8:56, 8:56] = True
    model = _tiny(in_channels=2, padding="valid", batch_norm=False)
    settings = _settings(channel_axis=1, patch_size=16)
    events, result = _drain(train(stack, lab, region, settings=settings, model=model))
    assert len(events) == 4 and all(np.isfinite(e.loss) for e in events)
    summary = result.training["summary"]
    assert summary["n_images"] == 1
    assert summary["output_size"] >= 16
    assert result.config.output_size(summary["input_size"]) == summary["output_size"]


def test_small_image_is_mirrored_up_to_the_patch():
    image, labels = make_touching_cells((24, 20), n_cells=2, seed=0)
    events, model = _drain(train(image, labels, settings=_settings(patch_size=64), model=_tiny()))
    assert len(events) == 4
    # reduced to what the image needs: 24 px on the depth-2 net's grid of 4, plus its context
    summary = model.training["summary"]
    assert summary["output_size"] == 24 and summary["context"] == 16
    assert summary["input_size"] == 24 + 2 * 16
    # the context never exceeds the network's halo (24 px for the depth-2 net)
    settings = _settings(patch_size=64, context=40)
    model = run_training(image, labels, settings=settings, model=_tiny())
    assert model.training["summary"]["context"] == 24


def test_bad_inputs_fail_before_training(cells):
    image, labels = cells
    bad = image.astype(np.float32)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        next(train(bad, labels, settings=_settings()))
    with pytest.raises(ValueError, match="no annotated cell"):
        next(train(image, np.zeros_like(labels), settings=_settings()))
    with pytest.raises(ValueError, match="shape"):
        next(train(image, labels[:10], settings=_settings()))
    with pytest.raises(ValueError, match="optimizer"):
        next(train(image, labels, settings=_settings(optimizer="rmsprop")))
    with pytest.raises(ValueError, match="iterations"):
        next(train(image, labels, settings=_settings(iterations=0)))
    with pytest.raises(ValueError, match="preset"):
        next(train(image, labels, settings=_settings(preset="huge")))
    with pytest.raises(ValueError, match="device"):
        next(train(image, labels, settings=_settings(device="tpu")))
    with pytest.raises(ValueError, match="batch_size >= 2 or a larger patch_size"):
        next(train(image, labels, settings=_settings(batch_size=1, patch_size=8, context=0)))
    with pytest.raises(ValueError, match="never end"):
        run_training(image, labels, settings=_settings(iterations=None))


def test_sgd_and_presets(cells):
    image, labels = cells
    paper = TrainSettings.for_preset("paper")
    assert (paper.optimizer, paper.batch_size, paper.patch_size) == ("sgd", 1, 388)
    assert TrainSettings.for_preset("fast") == TrainSettings()
    settings = _settings(optimizer="sgd", learning_rate=1e-2)
    events, _ = _drain(train(image, labels, settings=settings, model=_tiny()))
    assert len(events) == 4


def test_depth_setting_builds_a_shallower_new_network_and_is_checked(cells, monkeypatch):
    image, labels = cells
    from napari_unet.core import model as model_module

    monkeypatch.setitem(model_module.PRESETS["fast"], "base_channels", 4)  # tiny and quick
    new = run_training(image, labels, settings=_settings(iterations=1, depth=2))
    assert (new.config.depth, new.config.base_channels) == (2, 4)
    assert new.config.halo < model_module.preset_config("fast").halo
    assert new.training["settings"]["depth"] == 2
    tuned = run_training(image, labels, settings=_settings(iterations=1, depth=1), model=_tiny())
    assert tuned.config.depth == 2  # fine-tuning keeps the model's architecture
    with pytest.raises(ValueError, match="depth must be a positive integer, got 0"):
        TrainSettings(depth=0).validate()


def test_trained_model_saves_and_loads(cells, tmp_path):
    image, labels = cells
    model = run_training(image, labels, settings=_settings(), model=_tiny())
    loaded = load_model(save_model(model, tmp_path / "m.pt"))
    assert loaded.training == model.training
    assert "seed_threshold" not in model.training  # 2D: seeds halfway between threshold and 1
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.net(x), model.net(x))
    assert TrainSettings.from_dict(loaded.training["settings"]).seed == 0


def test_run_training_callback(cells):
    image, labels = cells
    seen = []
    run_training(
        image, labels, settings=_settings(iterations=3), model=_tiny(), callback=seen.append
    )
    assert [e.iteration for e in seen] == [1, 2, 3]


def test_events_follow_the_progress_protocol(cells):
    from napari_unet.core.progress import ProgressEvent

    image, labels = cells
    events, _ = _drain(train(image, labels, settings=_settings(iterations=2), model=_tiny()))
    assert all(isinstance(e, ProgressEvent) for e in events)
    assert [(e.done, e.total, e.stage) for e in events] == [(1, 2, "training"), (2, 2, "training")]


def test_the_loss_area_sees_image_context_not_zero_padding(cells):
    image, labels = cells
    # the fast preset (same padding): the input is the loss area plus 16 px of image per side
    fast = run_training(image, labels, settings=_settings(preset="fast", iterations=1))
    summary = fast.training["summary"]
    assert (summary["output_size"], summary["context"], summary["input_size"]) == (32, 16, 64)
    # context 0: the loss covers the whole input (its border pixels see the zero padding)
    settings = _settings(preset="fast", iterations=1, context=0)
    summary = run_training(image, labels, settings=settings).training["summary"]
    assert summary["input_size"] == summary["output_size"] == 32
    with pytest.raises(ValueError, match="context"):
        next(train(image, labels, settings=_settings(context=-1)))


def test_too_few_held_out_cells_keep_the_last_model():
    image, labels = make_touching_cells((128, 128), n_cells=24, seed=4)
    settings = _settings(iterations=6, validate_every=2, learning_rate=1e-2)
    events, model = _drain(train(image, labels, settings=settings, model=_tiny()))
    summary = model.training["summary"]
    assert summary["validation_cells"] == 3 and summary["checkpoint"] == "last"
    assert summary["best_iteration"] == 6
    assert summary["validation"] == events[-1].validation == events[-1].best_validation
    # the IoU ablation chooses whatever the number of cells (as before the AP selection)
    settings = _settings(
        iterations=6, validate_every=2, learning_rate=1e-2, validation_metric="iou"
    )
    events, model = _drain(train(image, labels, settings=settings, model=_tiny()))
    summary = model.training["summary"]
    assert summary["checkpoint"] == "best"
    assert summary["validation"] == max(e.validation for e in events if e.validation is not None)


def test_checkpoint_threshold_and_min_size_chosen_on_held_out_instances(monkeypatch):
    from napari_unet.core.training import validation
    from napari_unet.core.training.validation import THRESHOLDS

    monkeypatch.setattr(validation, "MIN_TUNING_CELLS", 1)  # the 3 held-out cells suffice

    image, labels = make_touching_cells((128, 128), n_cells=24, seed=4)
    settings = _settings(iterations=6, validate_every=2, learning_rate=1e-2)
    events, model = _drain(train(image, labels, settings=settings, model=_tiny()))
    summary, record = model.training["summary"], model.training
    assert summary["validation_metric"] == "instance AP@0.5 on held-out annotations"
    measured = [e for e in events if e.validation is not None]
    assert [e.iteration for e in measured] == [2, 4, 6]
    assert all(e.validation == e.validation_ap and 0 <= e.validation_iou <= 1 for e in measured)
    assert summary["validation_ap"] == summary["validation"] == max(e.validation for e in measured)
    # the post-processing that scored best is stored with the model
    assert record["threshold"] in THRESHOLDS
    base = summary["min_size_annotation"]
    assert base >= 1 and record["min_size"] in (base, max(base // 2, 1))
    # without a held-out part: the minimum size learnt from the annotated cells
    small_image, small_labels = make_touching_cells((40, 40), n_cells=4, seed=4)
    small = run_training(small_image, small_labels, settings=_settings(), model=_tiny())
    assert small.training["summary"]["validation"] is None
    assert small.training["threshold"] == 0.5
    assert small.training["min_size"] == small.training["summary"]["min_size_annotation"] >= 1
    # the pixel-IoU ablation: checkpoints by IoU, threshold 0.5, nothing tuned
    settings = _settings(iterations=4, validate_every=2, validation_metric="iou")
    model = run_training(image, labels, settings=settings, model=_tiny())
    summary = model.training["summary"]
    assert summary["validation"] == summary["validation_iou"]
    assert model.training["threshold"] == 0.5 and model.training["min_size"] == base
    settings = _settings(iterations=2, min_size_fraction=0.0, validation_fraction=0.0)
    assert run_training(image, labels, settings=settings).training["min_size"] == 16


def test_one_label_on_separate_cells_is_split_before_training(cells):
    from napari_unet.core.targets import SplitLabelsWarning

    image, labels = cells
    merged = np.where(labels > 0, (labels % 2) + 1, 0)  # two label values for eight cells
    with pytest.warns(SplitLabelsWarning) as record:
        model = run_training(image, merged, settings=_settings(iterations=1), model=_tiny())
    assert record[0].message.values == 2
    assert model.training["summary"]["split_cells"] == record[0].message.cells >= 4


@pytest.fixture(scope="module")
def many_cells():
    """An image with enough cells that a 40% hold-out has >= 10 of them, and a tiny model
    trained on it (the starting point of the fine-tuning tests)."""
    image, labels = make_touching_cells((160, 160), n_cells=60, seed=4)
    settings = _settings(iterations=60, learning_rate=1e-2, validation_fraction=0.4)
    start = run_training(image, labels, settings=settings, model=_tiny())
    return image, labels, start


def _state(model: TrainedModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.net.state_dict().items()}


def test_fine_tuning_that_cannot_help_returns_the_starting_weights(many_cells):
    image, labels, start = many_cells
    before = _state(start)
    # a learning rate that wrecks the network: the starting model, validated before the first
    # step, stays the best checkpoint, weights and batch-norm statistics exactly
    settings = _settings(iterations=20, learning_rate=0.5, validation_fraction=0.4)
    settings.validate_every = 10
    tuned = run_training(image, labels, settings=settings, model=start)
    summary = tuned.training["summary"]
    assert summary["validation_cells"] >= 10 and summary["checkpoint"] == "best"
    assert summary["best_iteration"] == 0
    assert summary["validation_last"] < summary["validation"]
    after = _state(tuned)
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(before[k], v) for k, v in _state(start).items())  # left as it was


def test_fine_tuning_defaults_and_frozen_batch_norm(many_cells, monkeypatch):
    image, labels, start = many_cells
    before = _state(start)
    small = {"iterations": 6, "patch_size": 32, "batch_size": 2, "device": "cpu", "seed": 0}
    assert TrainSettings.for_preset("fast", fine_tune=True, **small) == TrainSettings(**small)
    tuning = {"learning_rate": 1e-4, "freeze_batch_norm": True}
    monkeypatch.setattr(settings_module, "FINE_TUNE_DEFAULTS", tuning)
    tuned_settings = TrainSettings.for_preset("fast", fine_tune=True, **small)
    assert (tuned_settings.learning_rate, tuned_settings.freeze_batch_norm) == (1e-4, True)
    assert TrainSettings.for_preset("fast", fine_tune=True, learning_rate=0.0).learning_rate == 0
    # learning rate 0 with frozen statistics: the starting model, whatever the checkpoint
    frozen = run_training(
        image, labels, settings=replace(tuned_settings, learning_rate=0.0), model=start
    )
    assert all(torch.equal(before[k], v) for k, v in _state(frozen).items())
    # a real rate: weights move, running statistics stay; without freezing they move too
    tuned_settings = replace(tuned_settings, learning_rate=1e-2, validation_fraction=0.0)
    moved = _state(run_training(image, labels, settings=tuned_settings, model=start))
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(before[k], moved[k]) for k in stats)
    assert not all(torch.equal(before[k], moved[k]) for k in before if k not in stats)
    loose = replace(tuned_settings, freeze_batch_norm=False)
    moved = _state(run_training(image, labels, settings=loose, model=start))
    assert not any(torch.equal(before[k], moved[k]) for k in stats if k.endswith("mean"))
    # a new network is never frozen (its statistics are learnt from the data)
    fresh = _state(run_training(image, labels, settings=tuned_settings))
    assert not all(torch.equal(fresh[k], torch.zeros_like(fresh[k])) for k in fresh if "mean" in k)


def test_preload_imports_what_the_first_optimiser_needs():
    # a fresh process: after the preload, creating the first optimiser imports nothing more
    code = (
        "import sys, torch\n"
        "from napari_unet.core.training import preload_training_modules\n"
        "preload_training_modules()\n"
        "before = set(sys.modules)\n"
        "torch.optim.Adam(torch.nn.Conv2d(1, 2, 3).parameters())\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_weight_average_is_the_moving_average_of_the_steps(cells):
    image, labels = cells
    runs = {}
    for steps, decay in ((1, 0.0), (2, 0.0), (2, 0.75)):
        settings = _settings(iterations=steps, validation_fraction=0.0, weight_average=decay)
        runs[steps, decay] = run_training(image, labels, settings=settings, model=_tiny())
    first, second = runs[1, 0.0].net.state_dict(), runs[2, 0.0].net.state_dict()
    averaged = runs[2, 0.75].net.state_dict()
    floats = [k for k, v in first.items() if v.is_floating_point()]
    assert any("running_mean" in k for k in floats)  # batch-norm statistics averaged too
    for key in floats:  # the first step's weights, then 0.75 old + 0.25 new
        torch.testing.assert_close(averaged[key], 0.75 * first[key] + 0.25 * second[key])
    assert not torch.allclose(averaged[floats[0]], second[floats[0]])
    assert runs[2, 0.75].training["settings"]["weight_average"] == 0.75
