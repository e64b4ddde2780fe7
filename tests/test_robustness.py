"""Failing and malicious clients in a real simulation: the run goes on, the model stays good."""

from __future__ import annotations

import json  # part: robust
import math
from pathlib import Path
from typing import Any

import pytest

from fl_app.kit.config import RunConfig  # part: robust
from fl_app.parts.faults import is_faulty  # part: robust
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


def test_robust_hybrid_stops_scaled_and_sign_flipped_updates(  # part: robust
    tmp_path: Path,  # part: robust
) -> None:  # part: robust
    # One half: the filters are the rule's, alike on both halves.  # part: robust
    api = "message"  # part: robust
    direction = ["--strategy", "hybrid", "--robust-filter", "direction"]  # part: robust
    clean_rounds = rounds_of(tmp_path, api, "clean", *direction)  # part: robust
    # No false positives: on IID digits every honest update is kept.  # part: robust
    assert [r["filtered"] for r in clean_rounds[1:]] == [0, 0, 0]  # part: robust
    clean = clean_rounds[-1]["central_accuracy"]  # part: robust

    # ×10 updates: FedAvg breaks, the norm filter (mad) drops them.  # part: robust
    scale = ["--fault-kind", "scale", "--fault-fraction", "0.2"]  # part: robust
    scale += ["--fault-scale", "10"]  # part: robust
    fedavg = rounds_of(tmp_path, api, "fedavg", *scale)  # part: robust
    mad = ["--strategy", "hybrid", "--robust-filter", "mad"]  # part: robust
    mad += ["--hybrid-lambda", "1"]  # part: robust
    robust = rounds_of(tmp_path, api, "hybrid", *scale, *mad)  # part: robust
    # The two attackers every round, and at most one honest update  # part: robust
    # with them (MAD, k = 3).  # part: robust
    filtered = [r["filtered"] for r in robust[1:]]  # part: robust
    assert all(2 <= f <= 3 for f in filtered), filtered  # part: robust
    assert robust[-1]["central_accuracy"] > clean - 0.05  # part: robust
    assert fedavg[-1]["central_accuracy"] < robust[-1]["central_accuracy"] - 0.2  # part: robust

    # Sign-flipped updates keep their norm; the direction filter drops  # part: robust
    # exactly them, and the model ends within 3 points of the clean run  # part: robust
    # (the goal of the robustness table).  # part: robust
    flip = ["--fault-kind", "sign-flip", "--fault-fraction", "0.2"]  # part: robust
    flipped = rounds_of(tmp_path, api, "sign-flip", *direction, *flip)  # part: robust
    cfg = RunConfig(fault_kind="sign-flip", fault_fraction=0.2)  # part: robust
    attackers = {str(p) for p in range(10) if is_faulty(cfg, p, 10)}  # part: robust
    assert len(attackers) == 2  # part: robust
    for record in flipped[1:]:  # part: robust
        weights = json.loads(record["weights"])  # part: robust
        assert {c for c, w in weights.items() if w == 0.0} == attackers  # part: robust
    assert flipped[-1]["central_accuracy"] >= clean - 0.03  # part: robust
