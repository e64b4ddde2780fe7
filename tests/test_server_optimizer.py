"""The optional part ``server-optimizer``: the server's FedAvgM step on every rule's
aggregate (:mod:`strategies.server_optimizer`), its velocity in the state and checkpoints,
its knobs and config keys."""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import pytest

import strategies
from fl_app.kit.config import RunConfig
from fl_app.kit.keys import ConfigError
from fl_app.parts.server_optimizer_keys import ServerOptimizerKeys
from strategies.core.options import ServerOptions
from strategies.core.state import StrategyState
from strategies.server_optimizer import FLOWER_CLASSES, OPTIMIZERS, adaptive_step, server_step
from tests.fakes import updates_of
from tests.halves import HALVES
from tests.test_config import assert_bounds_refused, assert_one_line_error
from tests.test_strategies import GLOBAL, A, B, assert_model

# ---- server_step --------------------------------------------------------------------


def test_server_step_identity_returns_the_same_object():
    average = [np.array([3.0, 5.0]), np.array([[1.0]])]
    originals = [layer.copy() for layer in average]
    global_model = [np.array([1.0, 1.0]), np.array([[9.0]])]
    out, velocity = server_step(average, global_model, None, learning_rate=1.0, momentum=0.0)
    assert out is average
    assert all(o is a for o, a in zip(out, average, strict=True))
    for got, want in zip(out, originals, strict=True):
        np.testing.assert_array_equal(got, want)
    assert velocity is None


def test_server_step_learning_rate_by_hand():
    # g + 0.5·(avg − g) = [1, 1] + 0.5·([3, 5] − [1, 1]) = [2, 3]
    global_model = [np.array([1.0, 1.0])]
    out, velocity = server_step(
        [np.array([3.0, 5.0])], global_model, None, learning_rate=0.5, momentum=0.0
    )
    np.testing.assert_allclose(out[0], [2.0, 3.0], rtol=1e-15)
    assert velocity is None
    np.testing.assert_array_equal(global_model[0], [1.0, 1.0])  # not modified


def test_server_step_learning_rate_keeps_float32():
    out, _ = server_step(
        [np.array([3.0, 5.0], np.float32)],
        [np.array([1.0, 1.0], np.float32)],
        None,
        learning_rate=0.5,
        momentum=0.0,
    )
    assert out[0].dtype == np.float32
    np.testing.assert_array_equal(out[0], np.array([2.0, 3.0], np.float32))


def test_server_step_momentum_two_rounds_by_hand():
    # η = 0.5, β = 0.5
    # round 1: g0 = [0, 0], avg = [2, 4]: d1 = [2, 4], v1 = d1 = [2, 4],
    #          g1 = g0 + 0.5·v1 = [1, 2]
    # round 2: avg = [3, 6]: d2 = [2, 4], v2 = 0.5·[2, 4] + [2, 4] = [3, 6],
    #          g2 = g1 + 0.5·v2 = [2.5, 5]
    g0 = [np.array([0.0, 0.0])]
    g1, v1 = server_step([np.array([2.0, 4.0])], g0, None, learning_rate=0.5, momentum=0.5)
    assert v1 is not None
    np.testing.assert_allclose(g1[0], [1.0, 2.0], rtol=1e-15)
    np.testing.assert_allclose(v1[0], [2.0, 4.0], rtol=1e-15)
    g1_copy = [layer.copy() for layer in g1]
    g2, v2 = server_step([np.array([3.0, 6.0])], g1_copy, v1, learning_rate=0.5, momentum=0.5)
    assert v2 is not None
    np.testing.assert_allclose(v2[0], [3.0, 6.0], rtol=1e-15)
    np.testing.assert_allclose(g2[0], [2.5, 5.0], rtol=1e-15)


def test_server_step_momentum_with_unit_learning_rate_first_round_is_the_average():
    # v1 = d1, so g1 = g0 + d1 = avg whatever β.
    out, velocity = server_step(
        [np.array([3.0, -1.0])], [np.array([1.0, 1.0])], None, learning_rate=1.0, momentum=0.9
    )
    np.testing.assert_allclose(out[0], [3.0, -1.0], rtol=1e-15)
    assert velocity is not None
    np.testing.assert_allclose(velocity[0], [2.0, -2.0], rtol=1e-15)


def test_server_step_momentum_with_an_integer_layer():
    # A model may carry integer buffers (e.g. BatchNorm's num_batches_tracked, int64).
    # Round 1 with η = 1: v1 = d1 and g1 = g0 + d1 = avg, whatever β, so the int layer
    # must come back as the average [5, 7], in int64, and the step must not raise.
    average = [np.array([1.0, 2.0]), np.array([5, 7], dtype=np.int64)]
    global_model = [np.zeros(2), np.array([1, 1], dtype=np.int64)]
    out, _ = server_step(average, global_model, None, learning_rate=1.0, momentum=0.9)
    np.testing.assert_allclose(out[0], [1.0, 2.0], rtol=1e-15)
    assert out[1].dtype == np.int64
    np.testing.assert_array_equal(out[1], [5, 7])


# ---- the step in a rule, on each Flower API half ---------------------------------------


def test_aggregation_does_not_modify_the_global_model(half):
    global_model = [np.array([1.0, 1.0]), np.array([[1.0, 1.0]])]
    strategy = half.make("fedavg", global_model, server_learning_rate=0.5, server_momentum=0.5)
    held = strategy.rule.global_model
    half.aggregate(strategy, updates_of([A, B], [1, 3]))
    np.testing.assert_array_equal(held[0], [1.0, 1.0])
    np.testing.assert_array_equal(held[1], [[1.0, 1.0]])
    # The new model is the next round's, should no configuration come first (as in Flower).
    np.testing.assert_array_equal(strategy.rule.global_model[0], [1.75, 3.0])


def test_fedavg_server_momentum_two_rounds_by_hand(half):
    # η = 0.5, β = 0.5, g0 = ([0, 0], [[0, 0]])
    # round 1: clients ([1, 2], [[0, 4]]) and ([3, 6], [[4, 0]]), n = 1 and 3:
    #   avg = ([2.5, 5], [[3, 1]]) = d1 = v1;  g1 = g0 + 0.5·v1 = ([1.25, 2.5], [[1.5, 0.5]])
    # round 2: both clients send ([3.25, 4.5], [[2.5, 1.5]]):
    #   d2 = avg − g1 = ([2, 2], [[1, 1]]);  v2 = 0.5·v1 + d2 = ([3.25, 4.5], [[2.5, 1.5]])
    #   g2 = g1 + 0.5·v2 = ([2.875, 4.75], [[2.75, 1.25]])
    strategy = half.make("fedavg", GLOBAL, server_learning_rate=0.5, server_momentum=0.5)
    g1, _ = half.aggregate(strategy, updates_of([A, B], [1, 3]), server_round=1)
    assert_model(g1, [[1.25, 2.5], [[1.5, 0.5]]])

    assert g1 is not None
    half.set_global(strategy, g1)  # the server hands the new global model over
    second = [np.array([3.25, 4.5]), np.array([[2.5, 1.5]])]
    g2, _ = half.aggregate(strategy, updates_of([second, second], [2, 5]), server_round=2)
    assert_model(g2, [[2.875, 4.75], [[2.75, 1.25]]])


def test_fedavg_server_learning_rate_by_hand(half):
    # g = ([1, 1], [[1, 1]]), avg = ([2.5, 5], [[3, 1]]), η = 0.5:
    # g + 0.5·(avg − g) = ([1.75, 3], [[2, 1]])
    global_model = [np.array([1.0, 1.0]), np.array([[1.0, 1.0]])]
    strategy = half.make("fedavg", global_model, server_learning_rate=0.5)
    out, _ = half.aggregate(strategy, updates_of([A, B], [1, 3]))
    assert_model(out, [[1.75, 3.0], [[2.0, 1.0]]])


def test_server_step_needs_the_global_model(half):
    with pytest.raises(RuntimeError, match="global model"):
        half.aggregate(half.make("fedavg", server_learning_rate=0.5), updates_of([A, B], [1, 3]))


def test_fedavg_server_momentum_with_an_integer_layer(half):
    # Models may carry integer buffers (BatchNorm's num_batches_tracked is int64). With
    # η = 1 the first momentum round gives v1 = d1 and g1 = avg: int layer avg of [4] and
    # [8] with n = 1, 1 is [6]. The round must not crash.
    global_model = [np.zeros(2), np.array([2], dtype=np.int64)]
    clients = [
        [np.array([1.0, 2.0]), np.array([4], dtype=np.int64)],
        [np.array([3.0, 6.0]), np.array([8], dtype=np.int64)],
    ]
    strategy = half.make("fedavg", global_model, server_momentum=0.9)
    out, _ = half.aggregate(strategy, updates_of(clients, [1, 1]))
    assert_model(out, [[2.0, 4.0], [6]])
    assert out is not None
    assert out[1].dtype == np.int64


def test_an_overflowing_server_step_keeps_the_model_and_says_why(half: Any) -> None:
    # Each update is finite, and so is their mean; η = 2 takes the step past float32.
    shapes = [(3, 2), (2,)]
    models = [[np.full(s, 3e38, dtype=np.float32) for s in shapes]] * 2
    global_model = [np.zeros(s, dtype=np.float32) for s in shapes]
    strategy = half.make("fedavg", global_model, server_learning_rate=2.0, server_momentum=0.5)
    out, metrics = half.aggregate(strategy, updates_of(models, [10, 10]))
    assert out is None
    assert (metrics["accepted"], metrics["rejected"]) == (0, 2)
    problem = strategy.last_result.problem
    assert "nothing aggregated, keeping the previous model" in problem
    assert "overflows the model's dtype" in problem
    assert strategy.rule.state.velocity is None  # the voided step left no velocity behind


@pytest.mark.parametrize("name", sorted(strategies.REGISTRY))
def test_every_rule_takes_the_step_knobs(half: Any, name: str) -> None:
    strategy = half.make(name, server_learning_rate=0.5, server_momentum=0.5)
    assert strategy.rule.options.server_learning_rate == 0.5
    assert strategy.rule.options.server_momentum == 0.5


# ---- the velocity in the state and a checkpoint -------------------------------------------


def test_the_optimizers_state_round_trips_through_arrays() -> None:
    velocity = [np.arange(3, dtype=np.float32), np.ones((2, 2))]
    second = [np.full(3, 2.0, dtype=np.float32), np.zeros((2, 2))]
    state = StrategyState(velocity=velocity, second_moment=second, empty_rounds=2)
    again = StrategyState.from_arrays(state.to_arrays())
    assert again.empty_rounds == 2
    for stored, kept in ((again.velocity, velocity), (again.second_moment, second)):
        assert stored is not None
        for got, want in zip(stored, kept, strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    assert StrategyState.from_arrays({}).velocity is None
    assert StrategyState.from_arrays({}).second_moment is None


@pytest.mark.usefixtures("task_identity")
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("api", list(HALVES))
def test_the_optimizers_state_restores_exactly(api: str, optimizer: str) -> None:
    half = HALVES[api]
    rng = np.random.default_rng(0)
    g = [rng.normal(size=(3, 2)).astype(np.float32)]
    rounds = [
        updates_of([[rng.normal(size=(3, 2)).astype(np.float32)] for _ in range(3)], [5, 7, 9])
        for _ in range(2)
    ]

    def strategy() -> Any:
        step = {"server_momentum": 0.9} if optimizer == "sgd" else {"server_optimizer": optimizer}
        return half.make("fedavg", g, server_learning_rate=0.5, **step)

    uninterrupted = strategy()
    after_one, _ = half.aggregate(uninterrupted, rounds[0], server_round=1)
    assert after_one is not None
    saved = StrategyState.from_arrays(uninterrupted.get_state().to_arrays())
    half.set_global(uninterrupted, after_one)
    want, _ = half.aggregate(uninterrupted, rounds[1], server_round=2)

    resumed = strategy()
    resumed.set_state(saved)
    half.set_global(resumed, after_one)
    got, _ = half.aggregate(resumed, rounds[1], server_round=2)
    assert got is not None
    assert want is not None
    assert got[0].tobytes() == want[0].tobytes()
    # Without the velocity the second round differs: the state matters.
    forgetful = strategy()
    half.set_global(forgetful, after_one)
    other, _ = half.aggregate(forgetful, rounds[1], server_round=2)
    assert other is not None
    assert other[0].tobytes() != want[0].tobytes()


# ---- the knobs and the config keys ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "parameter"),
    [
        ("fedavg", {"server_momentum": 1.0}, "server_momentum"),
        ("fedavg", {"server_momentum": -0.1}, "server_momentum"),
        ("fedavg", {"server_learning_rate": 0.0}, "server_learning_rate"),
        ("fedavg", {"server_learning_rate": -1.0}, "server_learning_rate"),
        ("fedavg", {"server_learning_rate": math.nan}, "server_learning_rate"),
        ("simple", {"server_momentum": 1.0}, "server_momentum"),
    ],
)
def test_bad_step_knobs_name_the_parameter(
    half: Any, name: str, kwargs: dict[str, Any], parameter: str
) -> None:
    with pytest.raises(ValueError, match=parameter):
        half.make(name, **kwargs)
    with pytest.raises(ValueError, match=parameter):
        ServerOptions(**kwargs)


def test_every_bounded_step_key_is_refused_out_of_range() -> None:
    rows = [
        ("server-learning-rate", 0.0, "> 0"),
        ("server-momentum", -0.1, ">= 0"),
        ("server-momentum", 1.0, "< 1"),
        ("server-beta-1", -0.1, ">= 0"),
        ("server-beta-1", 1.0, "< 1"),
        ("server-beta-2", -0.1, ">= 0"),
        ("server-beta-2", 1.0, "< 1"),
        ("server-tau", 0.0, "> 0"),
    ]
    assert_bounds_refused(ServerOptimizerKeys, rows)
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({"server-learning-rate": math.inf})
    assert_one_line_error(info.value, "server-learning-rate", math.inf)


@pytest.mark.parametrize("optimizer", [o for o in OPTIMIZERS if o != "sgd"])
def test_sgds_momentum_with_another_optimizer_is_refused(half: Any, optimizer: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({"server-optimizer": optimizer, "server-momentum": 0.9})
    assert_one_line_error(info.value, "server-momentum", 0.9)
    assert "β₁" in str(info.value)
    with pytest.raises(ValueError, match="server_momentum"):
        half.make("fedavg", server_optimizer=optimizer, server_momentum=0.9)


def test_an_unknown_optimizer_is_refused(half: Any) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({"server-optimizer": "lamb"})
    assert_one_line_error(info.value, "server-optimizer", "lamb")
    with pytest.raises(ValueError, match="server_optimizer='lamb'"):
        half.make("fedavg", server_optimizer="lamb")


@pytest.mark.parametrize("value", [0.0, 0.99])
def test_a_server_momentum_at_the_bound_is_accepted(half: Any, value: float) -> None:
    half.make("hybrid", hybrid_lambda=1.0, server_momentum=value)
    assert RunConfig.from_mapping({"server-momentum": value}).run_config["server-momentum"] == value


# ---- the adaptive optimizers, and Flower's FedAdagrad, FedAdam and FedYogi ---------------


def test_adam_first_round_by_hand() -> None:
    # m1 = (1 − β₁)Δ, v1 = (1 − β₂)Δ², η₁ = η √(1 − β₂²) / (1 − β₁²): with Δ = [2, −1], β₁ = 0.5,
    # β₂ = 0.75, τ = 0: m1 = [1, −0.5], v1 = [1, 0.25], η₁ = 0.1 · √0.4375 / 0.75, and
    # θ1 = θ0 + η₁ m1 / √v1 = [0, 0] + η₁ · [1, −1].
    out, (m, v) = adaptive_step(
        [np.array([2.0, -1.0])],
        [np.zeros(2)],
        None,
        optimizer="adam",
        server_round=1,
        learning_rate=0.1,
        beta_1=0.5,
        beta_2=0.75,
        tau=1e-300,
    )
    rate = 0.1 * math.sqrt(1 - 0.75**2) / (1 - 0.5**2)
    np.testing.assert_allclose(out[0], [rate, -rate], rtol=1e-12)
    np.testing.assert_allclose(m[0], [1.0, -0.5], rtol=1e-15)
    np.testing.assert_allclose(v[0], [1.0, 0.25], rtol=1e-15)


@pytest.mark.parametrize(("optimizer", "second"), [("adagrad", [5.0, 5.0]), ("yogi", [3.5, 3.0])])
def test_adagrad_and_yogi_second_moments_by_hand(optimizer: str, second: list[float]) -> None:
    # v0 = [4, 1], Δ = [1, 2], β₂ = 0.5: adagrad v = v0 + Δ² = [5, 5]; yogi
    # v = v0 − (1 − β₂) Δ² sign(v0 − Δ²) = [4 − 0.5, 1 + 0.5 · 4] = [3.5, 3].
    moments = ([np.zeros(2)], [np.array([4.0, 1.0])])
    _, (_, v) = adaptive_step(
        [np.array([1.0, 2.0])],
        [np.zeros(2)],
        moments,
        optimizer=optimizer,
        server_round=2,
        learning_rate=1.0,
        beta_1=0.0,
        beta_2=0.5,
        tau=1.0,
    )
    np.testing.assert_allclose(v[0], second, rtol=1e-15)
    np.testing.assert_array_equal(moments[1][0], [4.0, 1.0])  # the old state is left as it was


@pytest.mark.parametrize("optimizer", [o for o in OPTIMIZERS if o != "sgd"])
@pytest.mark.parametrize("name", sorted(strategies.REGISTRY))
def test_every_rule_steps_with_every_adaptive_optimizer(
    half: Any, name: str, optimizer: str
) -> None:
    """Round 1 of any rule: m = (1 − β₁)Δ, v = (1 − β₂)Δ² (adagrad: Δ²; yogi from 0: the
    same as adam), so θ1 = θ0 + η₁ (1 − β₁)Δ / (√v + τ), Δ the rule's own fold minus θ0."""
    knobs = {"server_learning_rate": 0.1, "server_beta_1": 0.9, "server_beta_2": 0.99}
    rows = [{"val_accuracy": 0.5}, {"val_accuracy": 0.75}]  # for the rules weighing by quality
    plain, _ = half.aggregate(half.make(name, GLOBAL), updates_of([A, B], [1, 3], rows))
    stepped, _ = half.aggregate(
        half.make(name, GLOBAL, server_optimizer=optimizer, **knobs),
        updates_of([A, B], [1, 3], rows),
    )
    assert plain is not None
    assert stepped is not None
    rate = 0.1 * (math.sqrt(1 - 0.99**2) / (1 - 0.9**2) if optimizer == "adam" else 1.0)
    for got, fold, g in zip(stepped, plain, GLOBAL, strict=True):
        delta = fold - g
        v = delta**2 if optimizer == "adagrad" else 0.01 * delta**2
        np.testing.assert_allclose(got, g + rate * 0.1 * delta / (np.sqrt(v) + 1e-3), rtol=1e-12)


# Flower's classes that we name, and what each steps with.
STEPPING = {"FedAvgM": "sgd"} | {name: optimizer for name, (optimizer, _) in FLOWER_CLASSES.items()}


@pytest.mark.parametrize("name", list(STEPPING))
def test_our_classes_have_flowers_arguments_and_defaults(half: Any, name: str) -> None:
    flowers, _ = half.flowers(name, GLOBAL)
    ours = half.ours(name)()
    arguments = ["server_learning_rate", "server_momentum"] if name == "FedAvgM" else []
    for argument in arguments or ["eta", "eta_l", "beta_1", "beta_2", "tau"]:
        assert getattr(ours, argument) == getattr(flowers, argument), argument
    assert ours.rule.options.server_optimizer == STEPPING[name]


@pytest.mark.parametrize("name", list(STEPPING))
def test_flowers_stepping_strategies_and_ours_step_alike_over_rounds(half: Any, name: str) -> None:
    """The same replies over four rounds to Flower's class and ours, built with the same
    arguments (none of them the defaults), the learning rate changed on both after round 2.
    Ours takes no configure call between rounds (as Flower's legacy classes) and keeps the
    model's dtype."""
    flowers_class = getattr(half.flowers_module, name)
    chosen = {"eta": 0.05, "eta_l": 0.02, "beta_1": 0.8, "beta_2": 0.95, "tau": 0.01}
    chosen |= {"server_learning_rate": 0.7, "server_momentum": 0.5}  # FedAvgM's
    kwargs = {k: v for k, v in chosen.items() if k in inspect.signature(flowers_class).parameters}
    rng = np.random.default_rng(7)
    g0 = [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)]
    flowers, flowers_round = half.flowers(name, g0, **kwargs)
    ours = half.ours(name)(**kwargs)
    half.set_global(ours, g0)
    for server_round in range(1, 5):
        if server_round == 3:
            rate = "eta" if "eta" in kwargs else "server_learning_rate"
            setattr(flowers, rate, 0.2)
            setattr(ours, rate, 0.2)
        models = [
            [(g + rng.normal(scale=0.1, size=g.shape)).astype(np.float32) for g in g0]
            for _ in range(3)
        ]
        updates = updates_of(models, [5, 7, 9])
        want = flowers_round(server_round, updates)
        got, _ = half.aggregate(ours, updates, server_round=server_round)
        assert got is not None
        for mine, theirs in zip(got, want, strict=True):
            assert mine.dtype == np.float32
            np.testing.assert_allclose(mine, theirs, rtol=2e-5, atol=1e-6)
