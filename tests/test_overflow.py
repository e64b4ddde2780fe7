"""Finite updates whose norms overflow: every strategy and DP mode, on both API halves.

An update of 1e30 entries is finite in float32, but its squares (1e60) are not: a norm
taken in float32 overflows to inf. Each rule must take it without a RuntimeWarning, with
its norm computed exactly (it is accepted: finite is valid), and give a finite model:
the attacker's exact weighted share where nothing bounds it, a bounded change where a
filter, a clip or central DP does.
"""

from __future__ import annotations

import itertools
import json
import warnings
from typing import Any

import numpy as np
import pytest
from flwr.common import parameters_to_ndarrays

import strategies
from strategies import aggregate
from strategies.hybrid import ROBUST_FILTERS
from strategies.privacy import DP_SGD_METRICS, privatize_update  # part: dp
from tests.fakes import Proxy, fit_res
from tests.test_message_strategies import SHAPES, legacy_with, message_with, reply

pytestmark = pytest.mark.usefixtures("task_identity")

GLOBAL = [np.zeros(s, dtype=np.float32) for s in SHAPES]
HONEST = [[np.full(s, 0.01 * (i + 1), dtype=np.float32) for s in SHAPES] for i in range(4)]
ATTACK = [np.full(s, 1e30, dtype=np.float32) for s in SHAPES]
MODELS = [*HONEST, ATTACK]
CLIP = 0.5

DP_KNOBS: dict[str, dict[str, Any]] = {
    "none": {},
    "central": {"dp": "central", "dp_clipping_norm": CLIP, "dp_noise_multiplier": 0.01},
    "central adaptive": {
        "dp": "central",
        "dp_clipping": "adaptive",
        "dp_clipping_norm": CLIP,
        "dp_noise_multiplier": 0.01,
    },
    "local": {"dp": "local"},
    "dp-sgd": {"dp": "dp-sgd"},
}
# The robust variants: the rule's own knobs beside DP's.
RULE_KNOBS = [(name, {}) for name in sorted(strategies.CHOICES)] + [
    ("hybrid", {"robust_filter": f}) for f in ROBUST_FILTERS if f != "none"
]


def _valid(name: str, knobs: dict[str, Any]) -> bool:
    try:
        strategies.rule_type(name).Options(**knobs)
    except ValueError:  # e.g. central DP with Flower's own aggregators
        return False
    return True


CASES = [
    pytest.param(name, {**rule, **dp}, id="-".join([name, *rule.values(), mode]))
    for (name, rule), (mode, dp) in itertools.product(RULE_KNOBS, DP_KNOBS.items())
    if _valid(name, {**rule, **dp})
]


def _bounded(name: str, knobs: dict[str, Any]) -> bool:
    """Whether the rule caps the attacker's pull (a filter, a clip, or central DP)."""
    if knobs.get("dp") == "central" or knobs.get("robust_filter", "none") != "none":
        return True
    # With f = 0 attackers assumed, MultiKrum keeps K − f = all five and Bulyan averages
    # them all; Krum picks one update, the median and the trimmed mean cut the extremes.
    return name in {"flower-krum", "flower-median", "flower-trimmed-mean"}


def _metrics(knobs: dict[str, Any]) -> dict[str, Any]:
    extra = dict.fromkeys(DP_SGD_METRICS, 1) if knobs.get("dp") == "dp-sgd" else {}
    return {"val_accuracy": 0.9, **extra}


def _legacy(name: str, knobs: dict[str, Any]) -> tuple[list[np.ndarray], dict[str, Any]]:
    strategy = legacy_with(GLOBAL, name, seed=0, **knobs)
    results = [(Proxy(f"{i}"), fit_res(m, 10, **_metrics(knobs))) for i, m in enumerate(MODELS)]
    parameters, metrics = strategy.aggregate_fit(1, results, [])
    assert parameters is not None, strategy.last_result
    return parameters_to_ndarrays(parameters), dict(metrics)


def _message(name: str, knobs: dict[str, Any]) -> tuple[list[np.ndarray], dict[str, Any]]:
    strategy = message_with(GLOBAL, name, nodes=len(MODELS), seed=0, **knobs)
    replies = [reply(i + 1, m, 10, **_metrics(knobs)) for i, m in enumerate(MODELS)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None, strategy.last_result
    assert metrics is not None
    return arrays.to_numpy_ndarrays(), dict(metrics)


@pytest.mark.parametrize(("name", "knobs"), CASES)
def test_an_update_of_1e30_entries_gives_a_finite_model_on_both_halves(
    name: str, knobs: dict[str, Any]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "overflow encountered in dot"
        legacy, metrics = _legacy(name, knobs)
        message, message_metrics = _message(name, knobs)
    for a, b in zip(legacy, message, strict=True):
        np.testing.assert_array_equal(a, b)
    assert aggregate.all_finite(legacy)
    assert (metrics["accepted"], metrics["rejected"]) == (len(MODELS), 0)
    assert (message_metrics["accepted"], message_metrics["rejected"]) == (len(MODELS), 0)
    largest = max(float(np.max(np.abs(layer))) for layer in legacy)
    if _bounded(name, knobs):
        assert aggregate.norm(legacy) <= 1.1 * CLIP, largest
    else:  # the rule's weights, applied exactly: the attacker's share of 1e30
        weights = json.loads(metrics["weights"])
        want = [
            sum(weights[f"{i}"] * m[layer].astype(np.float64) for i, m in enumerate(MODELS))
            for layer in range(len(SHAPES))
        ]
        for got, expected in zip(legacy, want, strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-5)
        assert largest > 1e28


def test_norms_of_finite_float32_updates_do_not_overflow() -> None:
    exact = float(np.sqrt(sum(np.sum(a.astype(np.float64) ** 2) for a in ATTACK)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert aggregate.distance(ATTACK, GLOBAL) == pytest.approx(exact, rel=1e-12)
        assert aggregate.norm(ATTACK) == pytest.approx(exact, rel=1e-12)
        assert aggregate.inner(ATTACK, GLOBAL, ATTACK) == pytest.approx(exact**2, rel=1e-12)
        # Opposite extremes: the float32 difference itself overflows; float64 does not.
        top = [np.full(4, 3e38, np.float32)]
        bottom = [np.full(4, -3e38, np.float32)]
        assert aggregate.distance(top, bottom) == pytest.approx(2 * 6e38, rel=1e-7)
    # Small norms keep the fast float32 path, bit for bit.
    small = HONEST[0]
    assert aggregate.distance(small, GLOBAL) == np.sqrt(
        sum(float(np.dot(a.ravel(), a.ravel())) for a in small)
    )


def test_a_norm_beyond_float64_is_rejected_with_its_reason() -> None:
    huge = [np.full(4, 1.5e308)]  # finite, but ‖Δ‖ = 3e308
    start = [np.zeros(4)]
    strategy = legacy_with(start, "hybrid", robust_filter="mad")
    results = [(Proxy("huge"), fit_res(huge, 10, val_accuracy=0.9))]
    results += [
        (Proxy(f"{i}"), fit_res([np.full(4, 0.1 * i)], 10, val_accuracy=0.9)) for i in (1, 2)
    ]
    parameters, metrics = strategy.aggregate_fit(1, results, [])
    assert (metrics["accepted"], metrics["rejected"]) == (2, 1)
    assert parameters is not None
    np.testing.assert_allclose(parameters_to_ndarrays(parameters)[0], 0.15)


@pytest.mark.parametrize("api", strategies.FLOWER_APIS)
def test_an_overflowing_server_step_keeps_the_model_and_says_why(api: str) -> None:
    # Each update is finite, and so is their mean; η = 2 takes the step past float32.
    updates = [[np.full(s, 3e38, dtype=np.float32) for s in SHAPES]] * 2
    knobs = {"server_learning_rate": 2.0, "server_momentum": 0.5}
    if api == "legacy":
        strategy: Any = legacy_with(GLOBAL, "fedavg", **knobs)
        results = [(Proxy(f"{i}"), fit_res(m, 10)) for i, m in enumerate(updates)]
        out, metrics = strategy.aggregate_fit(1, results, [])
    else:
        strategy = message_with(GLOBAL, "fedavg", nodes=2, **knobs)
        out, metrics = strategy.aggregate_train(
            1, [reply(i + 1, m, 10) for i, m in enumerate(updates)]
        )
    assert out is None
    assert (metrics["accepted"], metrics["rejected"]) == (0, 2)
    problem = strategy.last_result.problem
    assert "nothing aggregated, keeping the previous model" in problem
    assert "overflows the model's dtype" in problem
    assert strategy.rule.state.velocity is None  # the voided step left no velocity behind


def test_local_dp_clips_a_1e30_update_to_the_clipping_norm() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        sent = privatize_update(GLOBAL, ATTACK, CLIP, 0.0, np.random.default_rng(0))
    assert aggregate.distance(sent, GLOBAL) == pytest.approx(CLIP, rel=1e-5)
