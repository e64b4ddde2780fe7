"""Model registry, weights <-> numpy, and the local train / evaluate loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fl_app.kit.config import RunConfig
from fl_app.kit.data import data_spec, pool
from fl_app.kit.keys import ConfigError
from fl_app.task import MODELS, ArrayDataset, build_model, evaluate, get_weights, set_weights, train

GRAY_8 = (1, 8, 8)
GRAY_28 = (1, 28, 28)
RGB_32 = (3, 32, 32)
VECTOR_60 = (60,)
IMAGE_MODELS = [name for name, model in MODELS.items() if model.images_only]
CPU = torch.device("cpu")
ANY_MODEL = next(iter(MODELS))

SHAPES = [GRAY_8, GRAY_28, RGB_32, VECTOR_60]
CASES = [
    (name, shape)
    for name in MODELS
    for shape in SHAPES
    if not (name in IMAGE_MODELS and len(shape) != 3)
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(("name", "shape"), CASES)
@pytest.mark.parametrize("num_classes", [10, 3])
def test_forward_pass_gives_batch_by_classes(
    name: str, shape: tuple[int, ...], num_classes: int
) -> None:
    model = build_model(name, shape, num_classes, seed=0)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(5, *shape))
    assert out.shape == (5, num_classes)
    assert torch.isfinite(out).all()


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ConfigError, match="'resnet'"):
        build_model("resnet", GRAY_8, 10, seed=0)


@pytest.mark.parametrize("name", list(MODELS))
def test_same_seed_same_weights_other_seed_other_weights(name: str) -> None:
    a = get_weights(build_model(name, GRAY_8, 10, seed=1))
    b = get_weights(build_model(name, GRAY_8, 10, seed=1))
    c = get_weights(build_model(name, GRAY_8, 10, seed=2))
    assert len(a) == len(b) == len(c)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c, strict=True))


def test_building_a_model_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(ANY_MODEL, GRAY_8, 10, seed=5)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", list(MODELS))
def test_get_and_set_weights_round_trip(name: str) -> None:
    source = build_model(name, GRAY_8, 10, seed=1)
    target = build_model(name, GRAY_8, 10, seed=2)
    weights = get_weights(source)
    assert all(isinstance(w, np.ndarray) for w in weights)
    assert len(weights) == len(source.state_dict())
    set_weights(target, [w.copy() for w in weights])
    for x, y in zip(get_weights(target), weights, strict=True):
        assert x.dtype == y.dtype
        assert x.shape == y.shape
        assert np.array_equal(x, y)
    batch = torch.rand(4, *GRAY_8)
    source.eval()
    target.eval()
    with torch.no_grad():
        assert torch.equal(source(batch), target(batch))


def test_set_weights_refuses_a_wrong_number_of_arrays() -> None:
    model = build_model(ANY_MODEL, GRAY_8, 10, seed=0)
    with pytest.raises(ValueError, match="arrays"):
        set_weights(model, get_weights(model)[:-1])


def test_get_weights_is_a_snapshot() -> None:
    # A caller that keeps the weights (the old global model, a client's result) must not
    # see them change when the model trains on.
    model = build_model(ANY_MODEL, GRAY_8, 10, seed=0)
    weights = get_weights(model)
    kept = [w.copy() for w in weights]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert all(np.array_equal(w, k) for w, k in zip(weights, kept, strict=True))


# Training and evaluation on the app's own data (the configured dataset), whatever it is.
SPEC = data_spec(RunConfig())
FITTING = [n for n, m in MODELS.items() if not (m.images_only and len(SPEC.input_shape) != 3)]


def model_for_the_data(name: str) -> torch.nn.Module:
    return build_model(name, SPEC.input_shape, SPEC.num_classes, seed=0)


@pytest.fixture(scope="module")
def subset() -> ArrayDataset:
    clients = pool(RunConfig()).clients
    return clients.subset(np.arange(min(300, len(clients))))


@pytest.mark.parametrize("name", FITTING)
def test_train_lowers_the_training_loss(name: str, subset: ArrayDataset) -> None:
    model = model_for_the_data(name)
    before = evaluate(model, subset, device=CPU)
    last_epoch_loss = train(
        model,
        subset,
        epochs=3,
        batch_size=16,
        learning_rate=0.05,
        momentum=0.9,
        device=CPU,
        seed=0,
    )
    after = evaluate(model, subset, device=CPU)
    assert math.isfinite(last_epoch_loss)
    assert after["loss"] < before["loss"]
    assert after["accuracy"] > before["accuracy"]
    assert 0.0 <= after["accuracy"] <= 1.0


def test_train_is_deterministic_for_a_seed(subset: ArrayDataset) -> None:
    def trained(seed: int) -> list[np.ndarray]:
        model = model_for_the_data(FITTING[0])
        kwargs = {"batch_size": 32, "learning_rate": 0.05, "momentum": 0.9}
        train(model, subset, epochs=1, device=CPU, seed=seed, **kwargs)
        return [w.copy() for w in get_weights(model)]

    a, b, c = trained(1), trained(1), trained(2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c, strict=True))


def test_evaluate_accuracy_is_the_share_of_correct_predictions(
    subset: ArrayDataset,
) -> None:
    model = model_for_the_data(FITTING[0])
    result = evaluate(model, subset, device=CPU, batch_size=7)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(subset.x))
    labels = torch.from_numpy(subset.y)
    assert 0.0 <= result["accuracy"] <= 1.0
    assert result["accuracy"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    expected_loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_evaluate_on_an_empty_dataset_gives_nan() -> None:
    model = build_model(ANY_MODEL, GRAY_8, 10, seed=0)
    empty = ArrayDataset(np.zeros((0, *GRAY_8), np.float32), np.zeros(0, np.int64))
    assert math.isnan(evaluate(model, empty, device=CPU)["loss"])


def test_train_on_an_empty_dataset_gives_nan() -> None:
    model = build_model(ANY_MODEL, GRAY_8, 10, seed=0)
    empty = ArrayDataset(np.zeros((0, *GRAY_8), np.float32), np.zeros(0, np.int64))
    loss = train(
        model, empty, epochs=1, batch_size=4, learning_rate=0.1, momentum=0.0, device=CPU, seed=0
    )
    assert math.isnan(loss)
