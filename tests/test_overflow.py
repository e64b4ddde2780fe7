"""Finite updates whose norms overflow: every strategy and variant, on each API half.

An update of 1e30 entries is finite in float32, but its squares (1e60) are not: a norm
taken in float32 overflows to inf. Each rule must take it without a RuntimeWarning, with
its norm computed exactly (it is accepted: finite is valid), and give a finite model:
the attacker's exact weighted share where nothing bounds it, a bounded change where the
rule bounds it (a filter, a clip).
"""

from __future__ import annotations

import itertools
import json
import warnings
from typing import Any

import numpy as np
import pytest

import strategies
from strategies import aggregate
from strategies.hybrid import ROBUST_FILTERS
from tests.fakes import Update, updates_of

SHAPES = [(3, 2), (2,)]
GLOBAL = [np.zeros(s, dtype=np.float32) for s in SHAPES]
HONEST = [[np.full(s, 0.01 * (i + 1), dtype=np.float32) for s in SHAPES] for i in range(4)]
ATTACK = [np.full(s, 1e30, dtype=np.float32) for s in SHAPES]
MODELS = [*HONEST, ATTACK]
CLIP = 0.5

CENTRAL = {"dp": "central", "dp_clipping_norm": CLIP, "dp_noise_multiplier": 0.01}  # part: dp
# Each optional part's variants of every rule (none: the rule as it is).
VARIANTS: dict[str, dict[str, Any]] = {
    "none": {},
    "central": {**CENTRAL, "seed": 0},  # part: dp
    "central adaptive": {**CENTRAL, "dp_clipping": "adaptive", "seed": 0},  # part: dp
    "local": {"dp": "local"},  # part: dp
    "dp-sgd": {"dp": "dp-sgd"},  # part: dp
}
# With f = 0 attackers assumed, MultiKrum keeps K − f = all five and Bulyan averages them  # part: flower-baselines
# all; Krum picks one update, the median and the trimmed mean cut the extremes.  # part: flower-baselines
CUT = {"flower-krum", "flower-median", "flower-trimmed-mean"}  # part: flower-baselines
# The robust variants: the rule's own knobs.
RULE_KNOBS = [(name, {}) for name in sorted(strategies.CHOICES)] + [
    ("hybrid", {"robust_filter": f}) for f in ROBUST_FILTERS if f != "none"
]


def _valid(name: str, knobs: dict[str, Any]) -> bool:
    try:
        strategies.rule_type(name).Options(**knobs)
    except ValueError:  # a variant the rule refuses
        return False
    return True


CASES = [
    pytest.param(name, {**rule, **variant}, id="-".join([name, *rule.values(), mode]))
    for (name, rule), (mode, variant) in itertools.product(RULE_KNOBS, VARIANTS.items())
    if _valid(name, {**rule, **variant})
]


def _bounded(name: str, knobs: dict[str, Any]) -> bool:
    """Whether the rule caps the attacker's pull (a filter or a clip)."""
    bounded = knobs.get("robust_filter", "none") != "none"
    bounded |= knobs.get("dp") == "central"  # part: dp
    bounded |= name in CUT  # part: flower-baselines
    return bounded


def _metrics(knobs: dict[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = {"val_accuracy": 0.9}
    if knobs.get("dp") == "dp-sgd":  # part: dp
        metrics |= {"dp_sample_rate": 1, "dp_steps": 1}  # part: dp
    return metrics


@pytest.mark.parametrize(("name", "knobs"), CASES)
def test_an_update_of_1e30_entries_gives_a_finite_model(
    half: Any, name: str, knobs: dict[str, Any]
) -> None:
    strategy = half.make(name, GLOBAL, **knobs)
    updates = updates_of(MODELS, [10] * len(MODELS), [_metrics(knobs)] * len(MODELS))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "overflow encountered in dot"
        got, metrics = half.aggregate(strategy, updates)
    assert got is not None, strategy.last_result
    assert aggregate.all_finite(got)
    assert (metrics["accepted"], metrics["rejected"]) == (len(MODELS), 0)
    largest = max(float(np.max(np.abs(layer))) for layer in got)
    if _bounded(name, knobs):
        assert aggregate.norm(got) <= 1.1 * CLIP, largest
    else:  # the rule's weights, applied exactly: the attacker's share of 1e30
        weights = json.loads(metrics["weights"])
        want = [
            sum(weights[f"{i + 1}"] * m[layer].astype(np.float64) for i, m in enumerate(MODELS))
            for layer in range(len(SHAPES))
        ]
        for layer, expected in zip(got, want, strict=True):
            np.testing.assert_allclose(layer, expected, rtol=1e-5)
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


def test_a_norm_beyond_float64_is_rejected_with_its_reason(half: Any) -> None:
    huge = [np.full(4, 1.5e308)]  # finite, but ‖Δ‖ = 3e308
    strategy = half.make("hybrid", [np.zeros(4)], robust_filter="mad")
    quality = {"val_accuracy": 0.9}
    updates = [
        Update(huge, 10, quality),
        *(Update([np.full(4, 0.1 * i)], 10, quality) for i in (1, 2)),
    ]
    out, metrics = half.aggregate(strategy, updates)
    assert (metrics["accepted"], metrics["rejected"]) == (2, 1)
    assert out is not None
    np.testing.assert_allclose(out[0], 0.15)


def test_an_overflowing_server_step_keeps_the_model_and_says_why(half: Any) -> None:
    # Each update is finite, and so is their mean; η = 2 takes the step past float32.
    models = [[np.full(s, 3e38, dtype=np.float32) for s in SHAPES]] * 2
    strategy = half.make("fedavg", GLOBAL, server_learning_rate=2.0, server_momentum=0.5)
    out, metrics = half.aggregate(strategy, updates_of(models, [10, 10]))
    assert out is None
    assert (metrics["accepted"], metrics["rejected"]) == (0, 2)
    problem = strategy.last_result.problem
    assert "nothing aggregated, keeping the previous model" in problem
    assert "overflows the model's dtype" in problem
    assert strategy.rule.state.velocity is None  # the voided step left no velocity behind
