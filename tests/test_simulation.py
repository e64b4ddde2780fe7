"""End to end on Flower's simulation engine: run_simulation.py as a user runs it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import strategies
from fl_app.kit.config import RunConfig
from fl_app.kit.results import METRICS_COLUMNS
from fl_app.kit.training import ServerModel
from tests.halves import API_CONFIG, API_FLAGS
from tests.processes import (
    IN_PROCESS,
    SHARED_CLIENTS,
    SHARED_ROUNDS,
    on_loopback,
    simulate,
)

pytestmark = pytest.mark.slow

SharedRuns = Callable[[str, str], dict[str, Any]]
STRATEGIES = sorted(strategies.REGISTRY)


@pytest.mark.parametrize("api", list(API_FLAGS))
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_learns(shared_runs: SharedRuns, strategy: str, api: str) -> None:
    history = shared_runs(strategy, api)
    rounds = history["rounds"]
    assert [r["round"] for r in rounds] == list(range(SHARED_ROUNDS + 1))
    for record in rounds[1:]:
        # fraction-fit = 1: every client trains, every update is valid and folded in.
        assert record["results"] == SHARED_CLIENTS
        assert record["accepted"] == SHARED_CLIENTS
        assert record["rejected"] == 0
        assert record["failures"] == 0
        assert sum(json.loads(record["weights"]).values()) == pytest.approx(1.0, abs=1e-4)
    initial, final = rounds[0]["central_accuracy"], rounds[-1]["central_accuracy"]
    assert final > initial + 0.3, f"{strategy}: accuracy {initial:.3f} -> {final:.3f}"
    assert history["summary"]["final_accuracy"] == final
    config = history["config"]
    assert config["strategy"] == strategy
    assert {k: config[k] for k in API_CONFIG[api]} == API_CONFIG[api]
    # The user sees a line per round and a summary.
    assert f"round   {SHARED_ROUNDS}/{SHARED_ROUNDS}" in history["stdout"]
    assert "done: final accuracy" in history["stdout"]
    # Flower's and Ray's own logs stay quiet without --verbose.
    assert "INFO" not in history["stdout"] + history["stderr"]
    assert "DEPRECATED" not in history["stderr"]
    # The run's folder has the documented files; the final model is the configured one's.
    run = Path(history["directory"])
    lines = (run / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",") == list(METRICS_COLUMNS)
    assert len(lines) == 1 + SHARED_ROUNDS + 1
    assert json.loads((run / "config.json").read_text()) == config
    saved = torch.load(run / "final_model.pt")
    model = ServerModel(RunConfig.from_mapping(config)).model.state_dict()
    assert {k: t.shape for k, t in saved.items()} == {k: t.shape for k, t in model.items()}


@pytest.mark.parametrize("api", [api for api in API_FLAGS if api != "message"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_other_flower_api_gives_the_message_apis_numbers_every_round(
    shared_runs: SharedRuns, strategy: str, api: str
) -> None:
    other, message = (shared_runs(strategy, a)["rounds"] for a in (api, "message"))
    for key in ("central_loss", "central_accuracy", "accepted", "train_loss", "weights"):
        assert [r.get(key) for r in other] == [r.get(key) for r in message], key
    # Weights are named by partition id, the same on both halves and in every run.
    assert sorted(json.loads(other[1]["weights"])) == [str(p) for p in range(SHARED_CLIENTS)]


@pytest.mark.parametrize("api", list(API_FLAGS))
def test_hybrid_with_a_lambda_schedule_runs_end_to_end(tmp_path: Path, api: str) -> None:
    history = simulate(
        tmp_path, *API_FLAGS[api], *IN_PROCESS,
        "--strategy", "hybrid",
        "--robust-filter", "mad",  # part: robust
        "--server-momentum", "0.5",  # part: server-optimizer
        "--hybrid-lambda", "1.0", "--hybrid-lambda-end", "0.0", "--quality-source", "server",
        "--num-clients", "4", "--num-server-rounds", "2",
    )  # fmt: skip
    rounds = history["rounds"]
    assert [r["lambda"] for r in rounds[1:]] == [1.0, 0.0]  # the linear schedule
    assert rounds[-1]["central_accuracy"] > rounds[0]["central_accuracy"] + 0.2


@pytest.mark.parametrize("api", list(API_FLAGS))
def test_the_simulations_ray_listens_on_loopback_only(shared_runs: SharedRuns, api: str) -> None:
    sockets = shared_runs("fedavg", api)["sockets"]
    # Seen while it ran: Ray's GCS and raylet, and the workers that hold the client actors.
    commands = {command for _, _, command in sockets}
    assert {"gcs_server", "raylet"} <= commands
    assert any(command.startswith("ray::") for command in commands)
    assert [s for s in sockets if not on_loopback(s[0])] == []
