"""Failing and malicious clients in a real simulation: the run goes on, the model stays good."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

import strategies
from tests.processes import read_history, run_simulation_cli

pytestmark = pytest.mark.slow

BASE = ["--num-clients", "10", "--num-server-rounds", "3"]


@pytest.fixture(params=strategies.FLOWER_APIS)
def api(request: pytest.FixtureRequest) -> str:
    """Each test runs on both Flower API halves."""
    return str(request.param)


def rounds_of(tmp_path: Path, api: str, name: str, *flags: str) -> list[dict[str, Any]]:
    run_simulation_cli(tmp_path, "--run-name", name, "--flower-api", api, *BASE, *flags)
    rounds: list[dict[str, Any]] = read_history(tmp_path / name)["rounds"]
    return rounds


def test_thirty_percent_of_clients_raising_every_round(tmp_path: Path, api: str) -> None:
    rounds = rounds_of(tmp_path, api, "raise", "--fault-kind", "raise", "--fault-fraction", "0.3")
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]  # every round completed
    assert [r["failures"] for r in rounds[1:]] == [3, 3, 3]
    assert [r["accepted"] for r in rounds[1:]] == [7, 7, 7]
    assert rounds[-1]["central_accuracy"] > rounds[0]["central_accuracy"] + 0.4


def test_nan_updates_are_rejected_and_the_model_stays_finite(tmp_path: Path, api: str) -> None:
    rounds = rounds_of(tmp_path, api, "nan", "--fault-kind", "nan", "--fault-fraction", "0.2")
    assert [r["rejected"] for r in rounds[1:]] == [2, 2, 2]
    assert [r["accepted"] for r in rounds[1:]] == [8, 8, 8]
    assert all(math.isfinite(r["central_loss"]) for r in rounds)
    assert rounds[-1]["central_accuracy"] > rounds[0]["central_accuracy"] + 0.4


def test_robust_hybrid_resists_scaled_updates_that_break_fedavg(tmp_path: Path, api: str) -> None:
    attack = ["--fault-kind", "scale", "--fault-fraction", "0.2", "--fault-scale", "10"]
    clean = rounds_of(tmp_path, api, "clean")[-1]["central_accuracy"]
    fedavg = rounds_of(tmp_path, api, "fedavg", *attack)[-1]["central_accuracy"]
    robust = rounds_of(
        tmp_path,
        api,
        "hybrid",
        *attack,
        "--strategy",
        "hybrid",
        "--robust-filter",
        "mad",
        "--hybrid-lambda",
        "1",
    )
    # The two attackers every round, and at most one honest update with them (MAD, k = 3).
    assert all(2 <= r["filtered"] <= 3 for r in robust[1:]), [r["filtered"] for r in robust]
    assert robust[-1]["central_accuracy"] > clean - 0.05
    assert fedavg < robust[-1]["central_accuracy"] - 0.2
