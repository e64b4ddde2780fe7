"""Tests of the Flower-level strategies: rules, identities, bad input, registry.

Expected tensors are worked out by hand (in comments) or with an independent numpy
formula, never copied from a run of the code under test.
"""

from __future__ import annotations

import io
import json
import math
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flwr.common import (
    Parameters,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)

import strategies
from strategies.core.codec import decode_tensors, encode_tensors
from strategies.core.rule import Rule
from strategies.core.update import NothingAggregatedError
from strategies.hybrid import linear_schedule
from tests.fakes import Update, updates_of

pytestmark = pytest.mark.usefixtures("task_identity")


def reported_weights(metrics) -> dict[str, float]:
    weights = json.loads(metrics["weights"])
    assert isinstance(weights, dict)
    return weights


# Two clients, two layers, float64 so hand values are (nearly) exact.
#   A = ([1, 2], [[0, 4]]), n = 1;  B = ([3, 6], [[4, 0]]), n = 3
A = [np.array([1.0, 2.0]), np.array([[0.0, 4.0]])]
B = [np.array([3.0, 6.0]), np.array([[4.0, 0.0]])]
GLOBAL = [np.zeros(2), np.zeros((1, 2))]


def assert_model(got, want, rtol=1e-12):
    assert got is not None
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == np.shape(w)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=1e-12)


# ---- (a) hand-computed rules --------------------------------------------------------


def test_simple_average_and_fedavg_by_hand_and_different(half):
    results = updates_of([A, B], [1, 3])
    simple, simple_metrics = half.aggregate(half.make("simple", GLOBAL), results)
    fedavg, fedavg_metrics = half.aggregate(half.make("fedavg", GLOBAL), results)
    # simple: ([1, 2] + [3, 6]) / 2 = [2, 4];  ([[0, 4]] + [[4, 0]]) / 2 = [[2, 2]]
    assert_model(simple, [[2.0, 4.0], [[2.0, 2.0]]])
    # fedavg: (1·[1, 2] + 3·[3, 6]) / 4 = [10, 20] / 4 = [2.5, 5];  (1·[[0, 4]] + 3·[[4, 0]]) / 4
    #         = [[3, 1]]
    assert_model(fedavg, [[2.5, 5.0], [[3.0, 1.0]]])
    assert not np.allclose(simple[0], fedavg[0])
    assert reported_weights(simple_metrics) == pytest.approx({"1": 0.5, "2": 0.5})
    assert reported_weights(fedavg_metrics) == pytest.approx({"1": 0.25, "2": 0.75})


def test_quality_weighted_softmax_by_hand(half):
    # q = [0, ln 3], τ = 0.5: exp(2q) = [1, 9] -> w = [0.1, 0.9]
    # 0.1·[1, 2] + 0.9·[3, 6] = [2.8, 5.6];  0.1·[[0, 4]] + 0.9·[[4, 0]] = [[3.6, 0.4]]
    results = updates_of([A, B], [1, 3], [{"val_accuracy": 0.0}, {"val_accuracy": math.log(3)}])
    strategy = half.make("quality", GLOBAL, quality_temperature=0.5)
    out, metrics = half.aggregate(strategy, results)
    assert_model(out, [[2.8, 5.6], [[3.6, 0.4]]])
    assert reported_weights(metrics) == pytest.approx({"1": 0.1, "2": 0.9})
    assert metrics["quality_fallback"] == 0


def test_quality_weighted_linear_by_hand(half):
    # q = [0.6, 0.9], floor 0.5: q − 0.5 = [0.1, 0.4] -> w = [0.2, 0.8]
    # 0.2·[1, 2] + 0.8·[3, 6] = [2.6, 5.2];  [[3.2, 0.8]]
    results = updates_of([A, B], [1, 3], [{"val_accuracy": 0.6}, {"val_accuracy": 0.9}])
    strategy = half.make("quality", GLOBAL, quality_weighting="linear", quality_floor=0.5)
    out, metrics = half.aggregate(strategy, results)
    assert_model(out, [[2.6, 5.2], [[3.2, 0.8]]])
    assert reported_weights(metrics) == pytest.approx({"1": 0.2, "2": 0.8})


def test_hybrid_by_hand(half):
    # data weights [0.25, 0.75]; quality (τ = 0.5, q = [0, ln 3]) [0.1, 0.9];
    # λ = 0.5: w = [0.175, 0.825]
    # 0.175·[1, 2] + 0.825·[3, 6] = [2.65, 5.3];  0.825·[[4, 0]] + 0.175·[[0, 4]] = [[3.3, 0.7]]
    results = updates_of([A, B], [1, 3], [{"val_accuracy": 0.0}, {"val_accuracy": math.log(3)}])
    strategy = half.make("hybrid", GLOBAL, hybrid_lambda=0.5, quality_temperature=0.5)
    out, metrics = half.aggregate(strategy, results)
    assert_model(out, [[2.65, 5.3], [[3.3, 0.7]]])
    assert reported_weights(metrics) == pytest.approx({"1": 0.175, "2": 0.825})
    assert metrics["filtered"] == 0  # part: robust
    assert metrics["clipped"] == 0  # part: robust
    assert metrics["lambda"] == 0.5


def test_strategies_work_without_a_known_global_model(half):
    # With no initial model and no round configured the first result sets the layout.
    out, metrics = half.aggregate(half.make("fedavg"), updates_of([A, B], [1, 3]))
    assert_model(out, [[2.5, 5.0], [[3.0, 1.0]]])
    assert metrics["accepted"] == 2


# ---- (b) same as Flower's FedAvg ----------------------------------------------------


def _random_round(rng, clients: int, dtype=np.float32):
    shapes = [(3, 4), (4,), (2, 2, 2), (1,)]
    models = [[rng.normal(size=s).astype(dtype) for s in shapes] for _ in range(clients)]
    counts = [int(n) for n in rng.integers(1, 500, size=clients)]
    return models, counts


@pytest.mark.parametrize("clients", [1, 2, 3, 7, 16])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fedavg_matches_flower_fedavg(half, clients, dtype):
    rng = np.random.default_rng(clients)
    models, counts = _random_round(rng, clients, dtype)
    updates = updates_of(models, counts)
    ours, _ = half.aggregate(half.make("fedavg"), updates)
    theirs = half.flowers_fedavg(updates)
    assert ours is not None
    assert len(ours) == len(theirs)
    for o, t in zip(ours, theirs, strict=True):
        assert o.dtype == t.dtype == dtype
        np.testing.assert_allclose(o, t, rtol=1e-6, atol=1e-7)
    # And both equal the textbook formula Σ n_i θ_i / Σ n.
    for j, layer in enumerate(ours):
        want = sum(n * m[j].astype(np.float64) for m, n in zip(models, counts, strict=True)) / sum(
            counts
        )
        np.testing.assert_allclose(layer, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(strategies.REGISTRY))
def test_aggregate_is_bitwise_independent_of_arrival_order(half, name):
    # Clients answer in any order; float sums depend on order; reruns must not.
    rng = np.random.default_rng(5)
    results = _quality_round(rng, clients=9)
    first, _ = half.aggregate(half.make(name), results)
    for permutation in (rng.permutation(9) for _ in range(3)):
        again, _ = half.aggregate(half.make(name), [results[i] for i in permutation])
        for a, b in zip(first, again, strict=True):
            assert a.tobytes() == b.tobytes()


# ---- (c) Hybrid identities ----------------------------------------------------------


def _quality_round(rng, clients=5):
    models, counts = _random_round(rng, clients)
    metrics = [{"val_accuracy": float(q), "val_loss": float(1 - q)} for q in rng.random(clients)]
    return updates_of(models, counts, metrics)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hybrid_lambda_one_is_fedavg_exactly(half, seed):
    results = _quality_round(np.random.default_rng(seed))
    fedavg, fedavg_metrics = half.aggregate(half.make("fedavg"), results)
    hybrid, hybrid_metrics = half.aggregate(half.make("hybrid", hybrid_lambda=1.0), results)
    assert hybrid is not None
    assert fedavg is not None
    for h, f in zip(hybrid, fedavg, strict=True):
        np.testing.assert_array_equal(h, f)
    assert hybrid_metrics["weights"] == fedavg_metrics["weights"]


@pytest.mark.parametrize("weighting", ["softmax", "linear"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hybrid_lambda_zero_is_quality_weighted_exactly(half, seed, weighting):
    results = _quality_round(np.random.default_rng(seed))
    knobs = {"quality_weighting": weighting, "quality_temperature": 0.2, "quality_floor": 0.1}
    quality, quality_metrics = half.aggregate(half.make("quality", **knobs), results)
    hybrid, hybrid_metrics = half.aggregate(
        half.make("hybrid", hybrid_lambda=0.0, **knobs), results
    )
    assert hybrid is not None
    assert quality is not None
    for h, q in zip(hybrid, quality, strict=True):
        np.testing.assert_array_equal(h, q)
    assert hybrid_metrics["weights"] == quality_metrics["weights"]
    assert hybrid_metrics["quality_fallback"] == quality_metrics["quality_fallback"]


def test_hybrid_needs_the_quality_metric_only_when_lambda_below_one(half):
    results = updates_of([A, B], [1, 3], [{"val_accuracy": 0.5}, {}])  # B has no quality
    out, metrics = half.aggregate(half.make("hybrid", GLOBAL, hybrid_lambda=1.0), results)
    assert metrics["rejected"] == 0
    assert metrics["accepted"] == 2
    assert_model(out, [[2.5, 5.0], [[3.0, 1.0]]])  # FedAvg of A and B

    out, metrics = half.aggregate(half.make("hybrid", GLOBAL, hybrid_lambda=0.5), results)
    assert metrics["rejected"] == 1
    assert metrics["accepted"] == 1
    assert_model(out, A)  # only A is left
    assert reported_weights(metrics) == pytest.approx({"1": 1.0})


# ---- (e) bad input ------------------------------------------------------------------

# Valid clients A (n = 1, q = 0.6) and B (n = 3, q = 0.9), float32. Expected aggregates of
# the two valid ones, by hand:
#   simple:  ([2, 4], [[2, 2]])
#   fedavg:  ([2.5, 5], [[3, 1]])
#   quality, linear floor 0.5: w = [0.1, 0.4] / 0.5 = [0.2, 0.8] -> ([2.6, 5.2], [[3.2, 0.8]])
#   hybrid λ = 0.5, same quality: w = 0.5·[0.25, 0.75] + 0.5·[0.2, 0.8] = [0.225, 0.775]
#           -> ([0.225 + 2.325, 0.45 + 4.65], [[3.1, 0.9]]) = ([2.55, 5.1], [[3.1, 0.9]])
A32 = [layer.astype(np.float32) for layer in A]
B32 = [layer.astype(np.float32) for layer in B]
GLOBAL32 = [layer.astype(np.float32) for layer in GLOBAL]
LINEAR = {"quality_weighting": "linear", "quality_floor": 0.5}

STRATEGY_CASES = {
    "simple": ({}, [[2.0, 4.0], [[2.0, 2.0]]]),
    "fedavg": ({}, [[2.5, 5.0], [[3.0, 1.0]]]),
    "quality": (LINEAR, [[2.6, 5.2], [[3.2, 0.8]]]),
    "hybrid": ({"hybrid_lambda": 0.5, **LINEAR}, [[2.55, 5.1], [[3.1, 0.9]]]),
}
QUALITY_STRATEGIES = ["quality", "hybrid"]


def _valid_results():
    return [Update(A32, 1, {"val_accuracy": 0.6}), Update(B32, 3, {"val_accuracy": 0.9})]


def _with_value(value: float) -> list[np.ndarray]:
    return [np.array([1.0, value], np.float32), np.array([[0.0, 4.0]], np.float32)]


def _raw(tensors: list[bytes]) -> Update:
    return Update(num_examples=5, metrics={"val_accuracy": 0.99}, tensors=tensors)


def _truncated() -> Update:
    tensors = ndarrays_to_parameters(A32).tensors
    return _raw([tensors[0][:-4], tensors[1]])


def _object_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([1, "x"], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def _object_array() -> Update:
    return _raw([_object_npy(), ndarrays_to_parameters(A32).tensors[1]])


BAD_UPDATES: dict[str, Callable[[], Update]] = {
    "nan": lambda: Update(_with_value(np.nan), 5, {"val_accuracy": 0.99}),
    "+inf": lambda: Update(_with_value(np.inf), 5, {"val_accuracy": 0.99}),
    "-inf": lambda: Update(_with_value(-np.inf), 5, {"val_accuracy": 0.99}),
    "wrong shape": lambda: Update(
        [np.zeros(3, np.float32), np.zeros((1, 2), np.float32)], 5, {"val_accuracy": 0.99}
    ),
    "transposed shape": lambda: Update(
        [np.zeros(2, np.float32), np.zeros((2, 1), np.float32)], 5, {"val_accuracy": 0.99}
    ),
    "wrong dtype": lambda: Update([layer.astype(np.float64) for layer in A32], 5),
    "too few layers": lambda: Update(A32[:1], 5, {"val_accuracy": 0.99}),
    "too many layers": lambda: Update([*A32, np.zeros(1, np.float32)], 5, {"val_accuracy": 0.99}),
    "num_examples 0": lambda: Update(A32, 0, {"val_accuracy": 0.99}),
    "num_examples negative": lambda: Update(A32, -4, {"val_accuracy": 0.99}),
    "num_examples 2.5": lambda: Update(A32, 2.5, {"val_accuracy": 0.99}),
    "num_examples bool": lambda: Update(A32, True, {"val_accuracy": 0.99}),
    "num_examples str": lambda: Update(A32, "3", {"val_accuracy": 0.99}),
    "garbage bytes": lambda: _raw([b"garbage", b"more garbage"]),
    "empty bytes": lambda: _raw([b"", b""]),
    "truncated tensor": _truncated,
    "object array": _object_array,
}
BAD_QUALITY: dict[str, Callable[[], Update]] = {
    "missing quality": lambda: Update(A32, 5, {"val_loss": 0.1}),
    "nan quality": lambda: Update(A32, 5, {"val_accuracy": math.nan}),
    "inf quality": lambda: Update(A32, 5, {"val_accuracy": math.inf}),
    "string quality": lambda: Update(A32, 5, {"val_accuracy": "high"}),
    "bool quality": lambda: Update(A32, 5, {"val_accuracy": True}),
}


def _check_round_with_one_bad(half: Any, strategy_name: str, bad: Update) -> None:
    knobs, expected = STRATEGY_CASES[strategy_name]
    valid = _valid_results()
    out, metrics = half.aggregate(
        half.make(strategy_name, GLOBAL32, **knobs), [valid[0], bad, valid[1]]
    )
    assert metrics["results"] == 3
    assert metrics["failures"] == 0
    assert metrics["rejected"] == 1
    assert metrics["accepted"] == 2
    assert out is not None
    assert all(np.all(np.isfinite(layer)) for layer in out)
    assert [layer.dtype for layer in out] == [np.float32, np.float32]
    assert_model(out, expected, rtol=1e-6)
    weights = reported_weights(metrics)
    assert set(weights) == {"1", "3"}
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("strategy_name", list(STRATEGY_CASES))
@pytest.mark.parametrize("reason", list(BAD_UPDATES))
def test_bad_update_is_rejected_and_the_rest_aggregated(half, strategy_name, reason):
    _check_round_with_one_bad(half, strategy_name, BAD_UPDATES[reason]())


@pytest.mark.parametrize("strategy_name", QUALITY_STRATEGIES)
@pytest.mark.parametrize("reason", list(BAD_QUALITY))
def test_bad_quality_is_rejected_and_the_rest_aggregated(half, strategy_name, reason):
    _check_round_with_one_bad(half, strategy_name, BAD_QUALITY[reason]())


@pytest.mark.parametrize("strategy_name", ["simple", "fedavg"])
def test_missing_quality_is_fine_where_quality_is_not_used(half, strategy_name):
    knobs, _ = STRATEGY_CASES[strategy_name]
    _, metrics = half.aggregate(
        half.make(strategy_name, GLOBAL32, **knobs), [BAD_QUALITY["missing quality"]()]
    )
    assert metrics["rejected"] == 0
    assert metrics["accepted"] == 1


@pytest.mark.parametrize("strategy_name", list(STRATEGY_CASES))
def test_round_with_only_invalid_updates_returns_none(half, strategy_name):
    knobs, _ = STRATEGY_CASES[strategy_name]
    bad = [
        BAD_UPDATES["nan"](),
        BAD_UPDATES["wrong shape"](),
        BAD_UPDATES["garbage bytes"](),
        BAD_UPDATES["num_examples 0"](),
    ]
    out, metrics = half.aggregate(half.make(strategy_name, GLOBAL32, **knobs), bad)
    assert out is None
    assert metrics["rejected"] == len(bad)
    assert metrics["accepted"] == 0
    assert metrics["results"] == len(bad)


def test_round_with_no_results_returns_none(half):
    out, metrics = half.aggregate(half.make("fedavg", GLOBAL32), [])
    assert out is None
    assert metrics["accepted"] == 0


@pytest.mark.parametrize("name", sorted(strategies.REGISTRY))
def test_three_empty_rounds_in_a_row_stop_the_run(half, name):
    strategy = half.make(name, GLOBAL32)
    invalid = [BAD_UPDATES["nan"]()]
    out, _ = half.aggregate(strategy, [], server_round=1)
    assert out is None
    out, metrics = half.aggregate(strategy, invalid, server_round=2)
    assert out is None
    assert metrics["rejected"] == 1
    with pytest.raises(NothingAggregatedError, match="max-empty-rounds") as error:
        half.aggregate(strategy, [], failures=[RuntimeError("timeout")], server_round=3)
    assert error.value.metrics["failures"] == 1
    assert error.value.metrics["accepted"] == 0


def test_an_aggregated_round_resets_the_empty_round_count(half):
    strategy = half.make("fedavg", GLOBAL32)
    for server_round in (1, 2):
        out, _ = half.aggregate(strategy, [], server_round=server_round)
        assert out is None
    out, _ = half.aggregate(strategy, _valid_results(), server_round=3)
    assert out is not None
    assert strategy.get_state().empty_rounds == 0
    for server_round in (4, 5):
        out, _ = half.aggregate(strategy, [], server_round=server_round)
        assert out is None
    with pytest.raises(NothingAggregatedError, match="max-empty-rounds"):
        half.aggregate(strategy, [], server_round=6)


def test_max_empty_rounds_zero_never_stops(half):
    strategy = half.make("fedavg", GLOBAL32, max_empty_rounds=0)
    for server_round in range(1, 11):
        out, metrics = half.aggregate(strategy, [], server_round=server_round)
        assert out is None
        assert metrics["accepted"] == 0
    assert strategy.get_state().empty_rounds == 10


def test_failures_with_accept_failures_are_counted_and_skipped(half):
    out, metrics = half.aggregate(
        half.make("fedavg", GLOBAL32),
        _valid_results(),
        failures=[TimeoutError("late"), RuntimeError("ClientApp raised")],
    )
    assert_model(out, [[2.5, 5.0], [[3.0, 1.0]]], rtol=1e-6)
    assert metrics["failures"] == 2
    assert metrics["results"] == 2
    assert metrics["rejected"] == 0
    assert metrics["accepted"] == 2


@pytest.mark.parametrize("strategy_name", list(STRATEGY_CASES))
def test_round_metrics_are_complete(half, strategy_name):
    knobs, _ = STRATEGY_CASES[strategy_name]
    rng = np.random.default_rng(7)
    clients = 6
    models = [
        [rng.normal(size=layer.shape).astype(np.float32) for layer in A32] for _ in range(clients)
    ]
    counts = [int(n) for n in rng.integers(1, 100, size=clients)]
    qualities = [{"val_accuracy": float(q)} for q in rng.uniform(0.55, 1.0, size=clients)]
    out, metrics = half.aggregate(
        half.make(strategy_name, GLOBAL32, **knobs), updates_of(models, counts, qualities)
    )
    assert out is not None
    for key in ("results", "failures", "rejected", "accepted", "weights"):
        assert key in metrics
    assert metrics["results"] == clients
    assert metrics["accepted"] == clients
    weights = reported_weights(metrics)
    assert set(weights) == {f"{i + 1}" for i in range(clients)}
    assert all(w >= 0 for w in weights.values())
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-5)
    # The client metrics are aggregated too (example-weighted mean).
    want = sum(n * q["val_accuracy"] for n, q in zip(counts, qualities, strict=True)) / sum(counts)
    assert metrics["val_accuracy"] == pytest.approx(want, rel=1e-12)


# ---- (f) quality details ------------------------------------------------------------


def test_quality_linear_all_below_floor_falls_back_to_simple_average(half):
    results = updates_of([A, B], [1, 3], [{"val_accuracy": 0.1}, {"val_accuracy": 0.2}])
    strategy = half.make("quality", GLOBAL, quality_weighting="linear", quality_floor=0.5)
    out, metrics = half.aggregate(strategy, results)
    assert_model(out, [[2.0, 4.0], [[2.0, 2.0]]])  # simple average
    assert metrics["quality_fallback"] == 1
    assert reported_weights(metrics) == pytest.approx({"1": 0.5, "2": 0.5})


def test_quality_server_source_ignores_a_lying_client(half):
    # Server score = first element / 10: A -> 0.1, B -> 0.3; linear floor 0 gives
    # w = [0.25, 0.75] -> ([2.5, 5], [[3, 1]]). The clients claim the opposite (A 0.99,
    # B 0.0), which would give all the weight to A.
    scored: list[float] = []

    def score_fn(arrays):
        scored.append(float(arrays[0][0]))
        return {"val_accuracy": float(arrays[0][0]) / 10}

    results = updates_of([A, B], [1, 1], [{"val_accuracy": 0.99}, {"val_accuracy": 0.0}])
    strategy = half.make(
        "quality",
        GLOBAL,
        quality_source="server",
        score_fn=score_fn,
        quality_weighting="linear",
        quality_floor=0.0,
    )
    out, metrics = half.aggregate(strategy, results)
    assert_model(out, [[2.5, 5.0], [[3.0, 1.0]]])
    assert reported_weights(metrics) == pytest.approx({"1": 0.25, "2": 0.75})
    assert sorted(scored) == [1.0, 3.0]  # each client model scored once


def test_quality_server_source_does_not_need_the_client_metric(half):
    strategy = half.make(
        "quality",
        GLOBAL,
        quality_source="server",
        score_fn=lambda arrays: {"val_accuracy": 0.5},
    )
    out, metrics = half.aggregate(strategy, updates_of([A, B], [1, 3]))
    assert metrics["rejected"] == 0
    assert_model(out, [[2.0, 4.0], [[2.0, 2.0]]])  # equal scores -> equal weights


def test_quality_server_source_rejects_non_finite_server_scores(half):
    def score_fn(arrays):
        return {"val_accuracy": math.nan if arrays[0][0] == 3.0 else 0.5}

    strategy = half.make("quality", GLOBAL, quality_source="server", score_fn=score_fn)
    out, metrics = half.aggregate(strategy, updates_of([A, B], [1, 3]))
    assert metrics["rejected"] == 1
    assert_model(out, A)


def test_quality_auto_direction_treats_loss_as_lower_is_better(half):
    def higher_is_better(**knobs) -> bool:
        return half.make("quality", **knobs).rule.options.higher_is_better

    assert higher_is_better(quality_metric="val_loss") is False
    assert higher_is_better(quality_metric="val_accuracy") is True
    assert higher_is_better(quality_metric="val_loss", quality_direction="max")

    # softmax, τ = 1, losses [0, ln 3]: exp(−q) = [1, 1/3] -> w = [0.75, 0.25]
    # 0.75·[1, 2] + 0.25·[3, 6] = [1.5, 3];  0.25·[[4, 0]] + 0.75·[[0, 4]] = [[1, 3]]
    results = updates_of([A, B], [1, 1], [{"val_loss": 0.0}, {"val_loss": math.log(3)}])
    strategy = half.make("quality", GLOBAL, quality_metric="val_loss", quality_temperature=1.0)
    out, metrics = half.aggregate(strategy, results)
    assert_model(out, [[1.5, 3.0], [[1.0, 3.0]]])
    assert reported_weights(metrics) == pytest.approx({"1": 0.75, "2": 0.25})

    # linear, loss ceiling 1.0, losses [0.2, 0.8]: 1 − q = [0.8, 0.2] -> w = [0.8, 0.2]
    # 0.8·[1, 2] + 0.2·[3, 6] = [1.4, 2.8];  [[0.8, 3.2]]
    results = updates_of([A, B], [1, 1], [{"val_loss": 0.2}, {"val_loss": 0.8}])
    strategy = half.make(
        "quality",
        GLOBAL,
        quality_metric="val_loss",
        quality_weighting="linear",
        quality_floor=1.0,
    )
    out, _ = half.aggregate(strategy, results)
    assert_model(out, [[1.4, 2.8], [[0.8, 3.2]]])


def test_quality_min_direction_on_a_non_loss_metric(half):
    # quality_direction="min": lower error is better. Errors [0, ln 3], τ = 1 -> [0.75, 0.25]
    results = updates_of([A, B], [1, 1], [{"error": 0.0}, {"error": math.log(3)}])
    strategy = half.make(
        "quality",
        GLOBAL,
        quality_metric="error",
        quality_direction="min",
        quality_temperature=1.0,
    )
    out, _ = half.aggregate(strategy, results)
    assert_model(out, [[1.5, 3.0], [[1.0, 3.0]]])


# ---- (g) Hybrid's λ schedule ---------------------------------------------------------


def test_linear_schedule_first_middle_last():
    schedule = linear_schedule(0.2, 1.0, 5)
    # 0.2 + 0.8·(r − 1)/4
    assert schedule(1) == pytest.approx(0.2)
    assert schedule(2) == pytest.approx(0.4)
    assert schedule(3) == pytest.approx(0.6)
    assert schedule(5) == pytest.approx(1.0)
    assert schedule(9) == pytest.approx(1.0)  # held after the last round
    assert schedule(0) == pytest.approx(0.2)
    assert linear_schedule(0.3, 0.9, 1)(4) == pytest.approx(0.3)
    decreasing = linear_schedule(1.0, 0.0, 3)
    assert [decreasing(r) for r in (1, 2, 3)] == pytest.approx([1.0, 0.5, 0.0])


def test_hybrid_uses_the_scheduled_lambda_per_round(half):
    # quality weights (τ = 0.5, q = [0, ln 3]) [0.1, 0.9], data weights [0.25, 0.75]
    strategy = half.make(
        "hybrid", GLOBAL, hybrid_lambda=linear_schedule(0.0, 1.0, 3), quality_temperature=0.5
    )
    assert [strategy.rule.options.lambda_at(r) for r in (1, 2, 3)] == pytest.approx([0.0, 0.5, 1.0])
    results = updates_of([A, B], [1, 3], [{"val_accuracy": 0.0}, {"val_accuracy": math.log(3)}])
    # round 2: λ = 0.5 -> w = [0.175, 0.825] -> ([2.65, 5.3], [[3.3, 0.7]])
    out, metrics = half.aggregate(strategy, results, server_round=2)
    assert metrics["lambda"] == pytest.approx(0.5)
    assert_model(out, [[2.65, 5.3], [[3.3, 0.7]]])
    # round 3: λ = 1 -> FedAvg, and quality is no longer required.
    no_quality = updates_of([A, B], [1, 3])
    out, metrics = half.aggregate(strategy, no_quality, server_round=3)
    assert metrics["lambda"] == pytest.approx(1.0)
    assert metrics["rejected"] == 0
    assert_model(out, [[2.5, 5.0], [[3.0, 1.0]]])
    # round 1: λ = 0 -> the same updates without quality are all rejected.
    out, metrics = half.aggregate(strategy, no_quality, server_round=1)
    assert out is None
    assert metrics["rejected"] == 2


# ---- (h) registry and constructor validation ----------------------------------------


def test_each_name_is_one_rule():
    rules = list(strategies.REGISTRY.values())
    assert len(set(rules)) == len(rules)  # one name per rule
    assert all(issubclass(rule, Rule) for rule in rules)


@pytest.mark.parametrize("name", sorted(strategies.REGISTRY))
def test_registry_builds_each_strategy(half, name):
    rule = strategies.REGISTRY[name]
    assert strategies.rule_type(name) is rule
    strategy = half.make(name)
    assert type(strategy.rule) is rule
    assert isinstance(strategy, half.flowers_class)


def test_registry_passes_keyword_arguments(half):
    strategy = half.make("fedavg", max_empty_rounds=5, **{half.fraction: 0.3})
    assert strategy.rule.options.max_empty_rounds == 5
    assert getattr(strategy, half.fraction) == 0.3


def test_registry_unknown_name_lists_allowed_names():
    with pytest.raises(ValueError, match="nope") as error:
        strategies.build("nope")
    for name in strategies.REGISTRY:
        assert name in str(error.value)


def test_build_splits_the_rule_knobs_from_the_flower_arguments(half):
    strategy = half.make(
        "hybrid",
        hybrid_lambda=0.2,
        robust_filter="mad",  # part: robust
        server_momentum=0.1,  # part: server-optimizer
        **{half.fraction: 0.3},
    )
    assert strategy.rule.options.hybrid_lambda == 0.2
    assert strategy.rule.options.robust_filter == "mad"  # part: robust
    assert strategy.rule.options.server_momentum == 0.1  # part: server-optimizer
    assert getattr(strategy, half.fraction) == 0.3
    quality = half.make("quality", quality_metric="val_loss", fraction_evaluate=0.4)
    assert quality.rule.options.quality_metric == "val_loss"
    assert quality.fraction_evaluate == 0.4


def test_a_knob_of_another_rule_is_refused(half):
    with pytest.raises(TypeError, match="hybrid_lambda"):
        half.make("fedavg", hybrid_lambda=0.5)
    with pytest.raises(TypeError, match="robust_filter"):  # part: robust
        half.make("fedavg", options=None, robust_filter="mad")  # part: robust
    with pytest.raises(TypeError, match="quality_metric"):
        half.make("simple", quality_metric="val_loss")


@pytest.mark.parametrize(
    ("name", "kwargs", "parameter"),
    [
        ("quality", {"quality_temperature": 0.0}, "quality_temperature"),
        ("quality", {"quality_temperature": -1.0}, "quality_temperature"),
        ("quality", {"quality_source": "oracle"}, "quality_source"),
        ("quality", {"quality_source": "server"}, "score_fn"),
        ("quality", {"quality_weighting": "cubic"}, "quality_weighting"),
        ("quality", {"quality_direction": "sideways"}, "quality_direction"),
        ("hybrid", {"hybrid_lambda": 1.5}, "hybrid_lambda"),
        ("hybrid", {"hybrid_lambda": -0.1}, "hybrid_lambda"),
        ("hybrid", {"hybrid_lambda": math.nan}, "hybrid_lambda"),
        ("hybrid", {"quality_temperature": 0.0}, "quality_temperature"),
    ],
)
def test_bad_constructor_values_name_the_parameter(half, name, kwargs, parameter):
    with pytest.raises(ValueError, match=parameter):
        half.make(name, **kwargs)


def test_good_constructor_values_are_accepted(half):
    half.make("hybrid", hybrid_lambda=0.0)
    half.make("hybrid", hybrid_lambda=1.0)
    half.make("quality", quality_source="server", score_fn=lambda arrays: {"val_accuracy": 1.0})


# ---- (i) decode_tensors / encode_tensors --------------------------------------------


def _shares_tensor_memory(array: np.ndarray, tensor: bytes) -> bool:
    return np.shares_memory(array, np.frombuffer(tensor, dtype=np.uint8))


def test_decode_tensors_equals_flower_and_is_zero_copy():
    rng = np.random.default_rng(0)
    arrays = [
        rng.normal(size=(3, 4)).astype(np.float32),
        np.asfortranarray(rng.normal(size=(2, 5))),
        np.arange(6, dtype=np.int64).reshape(2, 3),
        np.array(2.5, dtype=np.float16),  # 0-d
        np.zeros((0, 3), dtype=np.float32),  # empty
        np.arange(4, dtype=">f4"),  # big-endian
    ]
    parameters = ndarrays_to_parameters(arrays)
    decoded = decode_tensors(parameters.tensors)
    reference = parameters_to_ndarrays(parameters)
    assert len(decoded) == len(reference) == len(arrays)
    for got, want, original, tensor in zip(
        decoded, reference, arrays, parameters.tensors, strict=True
    ):
        assert got.shape == want.shape == original.shape
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, original)
        assert not got.flags.writeable
        if got.size:
            assert _shares_tensor_memory(got, tensor)
    assert decoded[1].flags.f_contiguous


def test_decode_tensors_rejects_garbage_and_object_arrays():
    with pytest.raises(ValueError, match="magic"):
        decode_tensors([b"garbage"])
    with pytest.raises(ValueError, match="object"):
        decode_tensors([_object_npy()])


def test_decode_tensors_parses_each_distinct_header_once():
    # Headers are cached by their bytes: two models of the same layout, different values.
    first = decode_tensors(ndarrays_to_parameters([np.arange(3.0)]).tensors)
    second = decode_tensors(ndarrays_to_parameters([np.arange(3.0) + 10]).tensors)
    other = decode_tensors(ndarrays_to_parameters([np.arange(4, dtype=np.int32)]).tensors)
    np.testing.assert_array_equal(first[0], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(second[0], [10.0, 11.0, 12.0])
    assert other[0].dtype == np.int32
    np.testing.assert_array_equal(other[0], [0, 1, 2, 3])


def test_encode_tensors_is_byte_for_byte_flowers_and_releases_the_layers():
    arrays = [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array(2.5, dtype=np.float16),  # 0-d
        np.zeros((0, 3), dtype=np.float32),  # empty
        np.arange(4, dtype=">f4"),  # big-endian
        np.array([True, False]),
        np.arange(6, dtype=np.uint8).reshape(2, 3),
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),  # not C-contiguous: Flower's path
        np.arange(10.0)[::2],  # strided view
        np.array([1 + 2j]),  # complex: Flower's path
    ]
    want = ndarrays_to_parameters(arrays)
    layers = list(arrays)
    got = Parameters(tensors=encode_tensors(layers), tensor_type="numpy.ndarray")
    assert layers == []
    assert got.tensor_type == want.tensor_type
    assert got.tensors == want.tensors


def test_aggregation_extra_memory_is_about_one_model_whatever_the_client_count(half):
    # The result is one model; on top of it the fold needs one accumulator. Nothing
    # may scale with clients × model (Flower's inplace=False keeps every update).
    params = 100_000
    model_bytes = 4 * params
    rng = np.random.default_rng(0)
    base = rng.standard_normal(params, dtype=np.float32)

    def peak(num_clients: int) -> int:
        updates = updates_of(
            [[base + i] for i in range(num_clients)],
            [10 + i for i in range(num_clients)],
            [{"val_accuracy": 0.5} for _ in range(num_clients)],
        )
        knobs: dict[str, Any] = {"hybrid_lambda": 0.5}
        knobs["robust_filter"] = "mad"  # part: robust
        strategy = half.make("hybrid", [base], **knobs)
        prepared = half.prepare(updates)
        tracemalloc.start()
        try:
            half.call(strategy, prepared)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(5)  # first calls import lazily (numpy, logging): not the fold's memory
    few, many = peak(5), peak(200)
    assert few < 2.2 * model_bytes
    assert many - few < 195 * 1_000  # bookkeeping only (about 1 KB a client): no decoded layers


def test_quality_client_source_ignores_a_score_fn(half):
    # A score_fn may be configured while the source is "client": the client metric counts.
    # Client q = [0.6, 0.9], linear floor 0.5 -> w = [0.2, 0.8] -> ([2.6, 5.2], [[3.2, 0.8]])
    results = updates_of([A, B], [1, 3], [{"val_accuracy": 0.6}, {"val_accuracy": 0.9}])
    strategy = half.make(
        "quality",
        GLOBAL,
        quality_source="client",
        score_fn=lambda arrays: {"val_accuracy": 1.0 if arrays[0][0] == 1.0 else 0.0},
        **LINEAR,
    )
    out, _ = half.aggregate(strategy, results)
    assert_model(out, [[2.6, 5.2], [[3.2, 0.8]]])
