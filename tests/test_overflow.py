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
from strategies.core.rule import Rule
from strategies.robust import ROBUST_FILTERS  # part: robust
from tests.fakes import updates_of

SHAPES = [(3, 2), (2,)]
GLOBAL = [np.zeros(s, dtype=np.float32) for s in SHAPES]
HONEST = [[np.full(s, 0.01 * (i + 1), dtype=np.float32) for s in SHAPES] for i in range(4)]
ATTACK = [np.full(s, 1e30, dtype=np.float32) for s in SHAPES]
MODELS = [*HONEST, ATTACK]
CLIP = 0.5
# Each rule, and the variants of its own knobs an optional part adds (the first: "none").
RULE_KNOBS: list[tuple[str, dict[str, Any]]] = [(name, {}) for name in sorted(strategies.CHOICES)]
RULE_KNOBS += [("hybrid", {"robust_filter": f}) for f in ROBUST_FILTERS[1:]]  # part: robust

# With f = 0 attackers assumed, MultiKrum keeps K − f = all five and Bulyan averages them  # part: flower-baselines
# all; Krum picks one update, the median and the trimmed mean cut the extremes.  # part: flower-baselines
CUT = {"flower-krum", "flower-median", "flower-trimmed-mean"}  # part: flower-baselines
KEEP_ALL = {"flower-multikrum", "flower-bulyan"}  # part: flower-baselines
CENTRAL = {"dp": "central", "dp_clipping_norm": CLIP, "dp_noise_multiplier": 0.01}  # part: dp
# Each optional part's variants of every rule (none: the rule as it is).
VARIANTS: dict[str, dict[str, Any]] = {
    "none": {},
    "central": {**CENTRAL, "seed": 0},  # part: dp
    "central adaptive": {**CENTRAL, "dp_clipping": "adaptive", "seed": 0},  # part: dp
    "local": {"dp": "local"},  # part: dp
    "dp-sgd": {"dp": "dp-sgd"},  # part: dp
}


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
    bounded = False
    bounded |= knobs.get("robust_filter", "none") != "none"  # part: robust
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
    weighted_mean = type(strategy.rule).combine is Rule.combine
    weighted_mean |= name in KEEP_ALL  # part: flower-baselines
    if _bounded(name, knobs):
        assert aggregate.norm(got) <= 1.1 * CLIP, largest
    elif weighted_mean:  # the rule's weights, exactly: the attacker's share of 1e30
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
        # Opposite extremes: the float32 difference itself overflows; float64 does not.
        top = [np.full(4, 3e38, np.float32)]
        bottom = [np.full(4, -3e38, np.float32)]
        assert aggregate.distance(top, bottom) == pytest.approx(2 * 6e38, rel=1e-7)
    # Small norms keep the fast float32 path, bit for bit.
    small = HONEST[0]
    assert aggregate.distance(small, GLOBAL) == np.sqrt(
        sum(float(np.dot(a.ravel(), a.ravel())) for a in small)
    )
