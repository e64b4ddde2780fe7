"""Fault injection: who is faulty, what each fault sends, and that the server copes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

import strategies
from fl_app.client_app import FlowerClient, make_client
from fl_app.kit.config import RunConfig
from fl_app.kit.data import data_spec
from fl_app.kit.keys import ConfigError
from fl_app.kit.seeds import seed_for
from fl_app.kit.training import train_as_configured
from fl_app.parts import faulty_client
from fl_app.parts.faults import FAULT_KINDS, LIE_SHARDS, FaultKeys, is_faulty
from fl_app.parts.faulty_client import FaultyClient
from fl_app.task import build_model, get_weights, set_weights
from tests.fakes import updates_of
from tests.test_config import assert_bounds_refused, assert_one_line_error

NUM_PARTITIONS = 5
CPU = torch.device("cpu")
POISONED = ("nan", "inf", "wrong-shape", "zero-examples", "negative-examples")
MOVED = ("scale", "sign-flip", "lie-quality")  # honest-looking updates, moved away


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cfg_with(kind: str, fraction: float = 1.0, **extra: object) -> RunConfig:
    return RunConfig(
        local_epochs=1, device="cpu", fault_kind=kind, fault_fraction=fraction, **extra
    )  # type: ignore[arg-type]


def fit(
    cfg: RunConfig, partition_id: int, parameters: list[np.ndarray]
) -> tuple[list[np.ndarray], int, dict]:
    client = make_client(cfg, {"partition-id": partition_id, "num-partitions": NUM_PARTITIONS})
    # Faulty clients wrap an honest one; the honest FlowerClient has no fault branches.
    assert isinstance(client, FaultyClient if cfg.fault_kind != "none" else FlowerClient)
    return client.fit([p.copy() for p in parameters], {"server-round": 1})


def global_model() -> list[np.ndarray]:
    spec = data_spec(RunConfig())
    return get_weights(build_model("mlp", spec.input_shape, spec.num_classes, seed=1))


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.3, 0.5, 1.0])
def test_the_faulty_clients_are_a_fixed_seeded_share(fraction: float) -> None:
    cfg = cfg_with("nan", fraction)
    faulty = [pid for pid in range(20) if is_faulty(cfg, pid, 20)]
    assert len(faulty) == round(fraction * 20)
    assert faulty == [pid for pid in range(20) if is_faulty(cfg, pid, 20)]
    assert not any(is_faulty(cfg_with("none", fraction), pid, 20) for pid in range(20))


def test_raise_fails_in_fit() -> None:
    with pytest.raises(RuntimeError, match="injected fault"):
        fit(cfg_with("raise"), 0, global_model())


def test_straggle_sleeps_then_answers_honestly(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(faulty_client.time, "sleep", slept.append)
    arrays, n, _ = fit(cfg_with("straggle", straggle_seconds=7.5), 0, global_model())
    honest, honest_n, _ = fit(cfg_with("none"), 0, global_model())
    assert slept == [7.5]
    assert n == honest_n
    for a, b in zip(arrays, honest, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", MOVED)
def test_model_poisoning_moves_the_update(kind: str) -> None:
    g = global_model()
    honest, n, honest_metrics = fit(cfg_with("none"), 1, g)
    arrays, poisoned_n, metrics = fit(cfg_with(kind, fault_scale=10.0), 1, g)
    factor = {"scale": 10.0, "sign-flip": -1.0, "lie-quality": -10.0}[kind]
    assert poisoned_n == n
    for a, h, w in zip(arrays, honest, g, strict=True):
        np.testing.assert_allclose(a, w + factor * (h - w), rtol=1e-5, atol=1e-6)
    if kind == "lie-quality":
        assert (metrics["val_accuracy"], metrics["val_loss"]) == (1.0, 0.0)
    else:
        assert metrics == honest_metrics


@pytest.mark.parametrize("name", sorted(strategies.REGISTRY))
@pytest.mark.parametrize("kind", POISONED)
def test_every_poisoned_update_is_rejected_and_the_model_stays_finite(
    half: Any, kind: str, name: str
) -> None:
    g = global_model()
    honest = [fit(cfg_with("none"), pid, g) for pid in range(3)]
    poisoned = fit(cfg_with(kind), 3, g)
    sent = [*honest, poisoned]
    updates = updates_of([a for a, _, _ in sent], [n for _, n, _ in sent], [m for _, _, m in sent])
    aggregated, metrics = half.aggregate(half.make(name, g), updates)
    assert metrics["rejected"] == 1
    assert metrics["accepted"] == 3
    assert aggregated is not None
    assert all(np.isfinite(layer).all() for layer in aggregated)
    # The same as aggregating the honest updates alone.
    expected, _ = half.aggregate(half.make(name, g), updates[:3])
    assert expected is not None
    for a, b in zip(aggregated, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_little_is_enough_sends_the_shard_mean_shifted_by_s_standard_deviations() -> None:
    g = global_model()
    config = {"server-round": 1}
    attacker = make_client(
        cfg_with("little-is-enough", fault_scale=1.5), {"partition-id": 1, "num-partitions": 5}
    )
    assert isinstance(attacker, FaultyClient)
    arrays, n, metrics = attacker.fit([p.copy() for p in g], config)
    # The shard models, trained one by one, and the formula in plain numpy.
    honest_client = attacker.client
    cfg, train = honest_client.cfg, honest_client.data.train
    shards = []
    for part, indices in enumerate(np.array_split(np.arange(len(train)), LIE_SHARDS), 1):
        model = honest_client.model
        set_weights(model, g)
        seed = seed_for(cfg.seed, "local-training", 1, honest_client.partition_id, part)
        train_as_configured(cfg, model, train.subset(indices), device=CPU, seed=seed)
        shards.append(get_weights(model))
    for index, (sent, w) in enumerate(zip(arrays, g, strict=True)):
        deltas = np.stack([shard[index] - w for shard in shards]).astype(np.float64)
        want = w + deltas.mean(axis=0) - 1.5 * deltas.std(axis=0)
        assert sent.dtype == w.dtype
        np.testing.assert_allclose(sent, want, rtol=1e-5, atol=1e-6)
    # It looks honest: the honest example count and metrics.
    _, honest_n, honest_metrics = fit(cfg_with("none"), 1, g)
    assert (n, metrics) == (honest_n, honest_metrics)


def test_fault_kinds_are_all_exercised() -> None:
    tested = {"none", "raise", "straggle", "little-is-enough", *MOVED, *POISONED}
    assert tested == set(FAULT_KINDS)
    assert math.isclose(cfg_with("scale").fault_scale, 10.0)


# ---- config keys ------------------------------------------------------------------


def test_every_bounded_fault_key_is_refused_out_of_range() -> None:
    rows = [
        ("fault-fraction", -0.1, ">= 0"),
        ("fault-fraction", 1.1, "<= 1"),
        ("fault-scale", 0.0, "> 0"),
        ("straggle-seconds", -1.0, ">= 0"),
    ]
    assert_bounds_refused(FaultKeys, rows)


def test_the_fault_kinds_are_the_parts_own() -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({"fault-kind": "explode"})
    message = assert_one_line_error(info.value, "fault-kind", "explode")
    assert all(kind in message for kind in FAULT_KINDS)
    for kind in FAULT_KINDS:
        assert RunConfig.from_mapping({"fault-kind": kind}).fault_kind == kind
