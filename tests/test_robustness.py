"""Failing and malicious clients in a real simulation: the run goes on, the model stays good."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from fl_app.kit.config import RunConfig
from fl_app.parts.faults import is_faulty
from tests.halves import API_FLAGS
from tests.processes import IN_PROCESS, read_history, run_simulation_cli

pytestmark = pytest.mark.slow

BASE = ["--num-clients", "10", "--num-server-rounds", "3", *IN_PROCESS]


@pytest.fixture(params=list(API_FLAGS))
def api(request: pytest.FixtureRequest) -> str:
    """Each test runs on both Flower API halves."""
    return str(request.param)


def rounds_of(tmp_path: Path, api: str, name: str, *flags: str) -> list[dict[str, Any]]:
    run_simulation_cli(tmp_path, "--run-name", name, *API_FLAGS[api], *BASE, *flags)
    rounds: list[dict[str, Any]] = read_history(tmp_path / name)["rounds"]
    return rounds


def test_thirty_percent_of_clients_raising_every_round(tmp_path: Path, api: str) -> None:
    rounds = rounds_of(tmp_path, api, "raise", "--fault-kind", "raise", "--fault-fraction", "0.3")
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]  # every round completed
    assert [r["failures"] for r in rounds[1:]] == [3, 3, 3]
    assert [r["accepted"] for r in rounds[1:]] == [7, 7, 7]
    assert rounds[-1]["central_accuracy"] > rounds[0]["central_accuracy"] + 0.4


def test_nan_updates_are_rejected_and_the_model_stays_finite(tmp_path: Path) -> None:
    # One half end to end; the Message half's per-reply rejection of NaN is tested with
    # real Messages in tests/test_message_strategies.py.
    rounds = rounds_of(tmp_path, "legacy", "nan", "--fault-kind", "nan", "--fault-fraction", "0.2")
    assert [r["rejected"] for r in rounds[1:]] == [2, 2, 2]
    assert [r["accepted"] for r in rounds[1:]] == [8, 8, 8]
    assert all(math.isfinite(r["central_loss"]) for r in rounds)
    assert rounds[-1]["central_accuracy"] > rounds[0]["central_accuracy"] + 0.4


def test_robust_hybrid_stops_scaled_and_sign_flipped_updates(tmp_path: Path, api: str) -> None:
    direction = ["--strategy", "hybrid", "--robust-filter", "direction"]
    clean_rounds = rounds_of(tmp_path, api, "clean", *direction)
    # No false positives: on IID digits every honest update is kept, every round.
    assert [r["filtered"] for r in clean_rounds[1:]] == [0, 0, 0]
    clean = clean_rounds[-1]["central_accuracy"]

    # ×10 updates: FedAvg breaks, the norm filter (mad) drops them.
    scale = ["--fault-kind", "scale", "--fault-fraction", "0.2", "--fault-scale", "10"]
    fedavg = rounds_of(tmp_path, api, "fedavg", *scale)[-1]["central_accuracy"]
    mad = ["--strategy", "hybrid", "--robust-filter", "mad", "--hybrid-lambda", "1"]
    robust = rounds_of(tmp_path, api, "hybrid", *scale, *mad)
    # The two attackers every round, and at most one honest update with them (MAD, k = 3).
    assert all(2 <= r["filtered"] <= 3 for r in robust[1:]), [r["filtered"] for r in robust]
    assert robust[-1]["central_accuracy"] > clean - 0.05
    assert fedavg < robust[-1]["central_accuracy"] - 0.2

    # Sign-flipped updates keep their norm; the direction filter drops exactly them, and
    # the model ends within 3 points of the clean run (the goal of the robustness table).
    flip = ["--fault-kind", "sign-flip", "--fault-fraction", "0.2"]
    flipped = rounds_of(tmp_path, api, "sign-flip", *direction, *flip)
    cfg = RunConfig(fault_kind="sign-flip", fault_fraction=0.2)
    attackers = {str(pid) for pid in range(10) if is_faulty(cfg, pid, 10)}
    assert len(attackers) == 2
    for record in flipped[1:]:
        weights = json.loads(record["weights"])
        assert {c for c, w in weights.items() if w == 0.0} == attackers
    assert flipped[-1]["central_accuracy"] >= clean - 0.03
