"""Flower's robust aggregators as baseline rules: the same model as Flower's own strategies.

Each baseline is checked against the Flower strategy class it stands for (its
``aggregate_fit``, Flower's code end to end), on a round with two far-off updates, on each
Flower API half this copy has.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import Bulyan, FedAdam, FedAvg, FedMedian, FedTrimmedAvg, Krum, Strategy

import strategies
from fl_app.kit.config import RunConfig
from fl_app.kit.keys import ConfigError
from strategies.flower_robust import BASELINES, FlowerRobustOptions
from tests.fakes import updates_of
from tests.test_config import assert_one_line_error

pytestmark = pytest.mark.usefixtures("task_identity")

NUM_CLIENTS = 9
ATTACKERS = 2
# Each baseline's Flower strategy, and the project knobs that ask for the same setting.
FLOWER: dict[str, tuple[Strategy, dict[str, Any]]] = {
    "flower-krum": (
        Krum(num_malicious_clients=ATTACKERS, num_clients_to_keep=0),
        {"num_malicious_clients": ATTACKERS},
    ),
    "flower-multikrum": (
        Krum(num_malicious_clients=ATTACKERS, num_clients_to_keep=NUM_CLIENTS - ATTACKERS),
        {"num_malicious_clients": ATTACKERS},
    ),
    "flower-bulyan": (Bulyan(num_malicious_clients=1, to_keep=0), {"num_malicious_clients": 1}),
    "flower-median": (FedMedian(), {}),
    "flower-trimmed-mean": (FedTrimmedAvg(beta=0.2), {"trimmed_beta": 0.2}),
}
GLOBAL = [np.zeros((4, 3), dtype=np.float32), np.zeros(3, dtype=np.float32)]
# Reference rows, not robust: Flower's FedAvg and FedAdam themselves.
REFERENCES: dict[str, tuple[Strategy, dict[str, Any]]] = {
    "flower-fedavg": (FedAvg(), {}),
    "flower-fedadam": (FedAdam(initial_parameters=ndarrays_to_parameters(GLOBAL)), {}),
}
FLOWER |= REFERENCES


def a_round() -> tuple[list[list[np.ndarray]], list[int]]:
    """Seven honest float32 updates around 1, two attackers far off, unequal sizes."""
    rng = np.random.default_rng(8)
    models = [
        [(1 + rng.normal(scale=0.1, size=g.shape)).astype(np.float32) for g in GLOBAL]
        for _ in range(NUM_CLIENTS)
    ]
    models[3] = [-10 * m for m in models[3]]
    models[7] = [50 + m for m in models[7]]
    return models, [31, 7, 12, 45, 26, 9, 38, 17, 22]


def test_every_baseline_is_compared_with_flower() -> None:
    assert set(FLOWER) == set(BASELINES)
    assert not set(BASELINES) & set(strategies.REGISTRY)  # not one of the four


@pytest.mark.parametrize("name", sorted(BASELINES))
def flowers(strategy: Strategy, models: list[list[np.ndarray]], counts: list[int]) -> Any:
    """What Flower's own ``strategy`` makes of the updates (its legacy ``aggregate_fit``)."""
    ok = Status(Code.OK, "")
    results = [
        (str(i), FitRes(ok, ndarrays_to_parameters(m), n, {}))
        for i, (m, n) in enumerate(zip(models, counts, strict=True))
    ]
    parameters, _ = strategy.aggregate_fit(1, results, [])  # type: ignore[arg-type]
    assert parameters is not None
    return parameters_to_ndarrays(parameters)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_gives_flowers_model(half: Any, name: str) -> None:
    models, counts = a_round()
    flower, knobs = FLOWER[name]
    # The rules take the updates in a canonical order, smallest num_examples first; so
    # does Flower here (Bulyan's repeated Krum breaks ties by order).
    by_size = sorted(range(NUM_CLIENTS), key=counts.__getitem__)
    want = flowers(copy.deepcopy(flower), [models[i] for i in by_size], sorted(counts))
    got, metrics = half.aggregate(half.make(name, GLOBAL, **knobs), updates_of(models, counts))
    assert got is not None
    assert metrics["accepted"] == NUM_CLIENTS
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=1e-6)
    # Far from both attackers.
    assert name in REFERENCES or all(np.abs(layer - 1).max() < 0.5 for layer in got)


def test_bulyan_with_too_few_updates_says_how_many_it_needs(half: Any) -> None:
    models, counts = a_round()
    strategy = half.make("flower-bulyan", GLOBAL, num_malicious_clients=2)
    with pytest.raises(ValueError, match=r"at least 4f \+ 3 = 11 updates .* got 9"):
        half.aggregate(strategy, updates_of(models, counts))


@pytest.mark.parametrize(
    ("knob", "value"),
    [("num_malicious_clients", -1), ("num_clients_to_keep", 1.5), ("trimmed_beta", 0.5)],
)
def test_bad_baseline_knobs_name_the_knob(knob: str, value: Any) -> None:
    with pytest.raises(ValueError, match=knob):
        FlowerRobustOptions(**{knob: value})


# ---- the part's config keys (fl_app/parts/baseline_keys.py) and what they cannot run with ----


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("num-malicious-clients", -1, ">= 0"),
        ("num-clients-to-keep", -1, ">= 0"),
        ("trimmed-beta", 0.5, "< 0.5"),
    ],
)
def test_out_of_range_baseline_key_is_refused(key: str, value: float, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({key: value})
    assert f"must be {allowed}" in assert_one_line_error(info.value, key, value)


def test_central_dp_is_refused_for_flowers_robust_aggregators() -> None:  # part: dp
    with pytest.raises(ValueError, match="dp='central': Flower's robust"):  # part: dp
        strategies.build("flower-median", dp="central")  # part: dp
