"""End to end on Flower's simulation engine: run_simulation.py as a user runs it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import strategies
from fl_app.kit.results import METRICS_COLUMNS
from tests.processes import on_loopback, read_history, run_python, without_timings

pytestmark = pytest.mark.slow

NUM_CLIENTS = 10
ROUNDS = 3
STRATEGIES = sorted(strategies.REGISTRY)
IN_PROCESS = ("--backend", "inprocess")  # Ray's results without a Ray start (tested below)
RAY = ("--backend", "ray")  # the reference runs (--backend auto picks this process on 2 CPUs)


def simulate(tmp_path: Path, *flags: str) -> dict[str, Any]:
    """Run run_simulation.py as run "run"; return its history.json (with the printed output
    and the sockets its processes listened on)."""
    sockets: set[tuple[str, int, str]] = set()
    done = run_python(
        ["run_simulation.py", "--output-dir", str(tmp_path), "--run-name", "run", *flags],
        sockets=sockets,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    history = read_history(tmp_path / "run")
    history["stdout"], history["stderr"] = done.stdout, done.stderr
    history["directory"] = str(tmp_path / "run")
    history["sockets"] = sockets
    return history


@pytest.fixture(scope="module")
def default_runs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], dict[str, Any]]:
    """Each strategy's run on each Flower API half, run once and shared by the tests."""
    runs: dict[tuple[str, str], dict[str, Any]] = {}

    def run(strategy: str, api: str) -> dict[str, Any]:
        if (strategy, api) not in runs:
            runs[strategy, api] = simulate(
                tmp_path_factory.mktemp(f"{strategy}-{api}"),
                "--strategy", strategy,
                "--flower-api", api,
                "--num-clients", str(NUM_CLIENTS),
                "--num-server-rounds", str(ROUNDS),
                *RAY,
            )  # fmt: skip
        return runs[strategy, api]

    return run


@pytest.mark.parametrize("api", tuple(strategies.ADAPTERS))
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_trains_digits_well_above_chance(
    default_runs: Callable[[str, str], dict[str, Any]], strategy: str, api: str
) -> None:
    history = default_runs(strategy, api)
    rounds = history["rounds"]
    assert [r["round"] for r in rounds] == list(range(ROUNDS + 1))
    for record in rounds[1:]:
        # fraction-fit = 1: every client trains, every update is valid and folded in.
        assert record["results"] == NUM_CLIENTS
        assert record["accepted"] == NUM_CLIENTS
        assert record["rejected"] == 0
        assert record["failures"] == 0
        assert sum(json.loads(record["weights"]).values()) == pytest.approx(1.0, abs=1e-4)
    initial, final = rounds[0]["central_accuracy"], rounds[-1]["central_accuracy"]
    assert initial < 0.2  # 10 classes: an untrained model is near chance
    assert final > 0.6, f"{strategy}: accuracy {initial:.3f} -> {final:.3f}"
    assert history["summary"]["final_accuracy"] == final
    assert history["config"]["strategy"] == strategy
    assert history["config"]["flower-api"] == api
    # The user sees a line per round and a summary.
    assert f"round   {ROUNDS}/{ROUNDS}" in history["stdout"]
    assert "done: final accuracy" in history["stdout"]
    # Flower's and Ray's own logs stay quiet without --verbose.
    assert "INFO" not in history["stdout"] + history["stderr"]
    assert "DEPRECATED" not in history["stderr"]
    # The run's folder has the documented files.
    run = Path(history["directory"])
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert header.split(",") == list(METRICS_COLUMNS)
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + ROUNDS + 1
    assert json.loads((run / "config.json").read_text())["strategy"] == strategy
    for png in ("accuracy.png", "loss.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = torch.load(run / "final_model.pt")
    assert [tuple(t.shape) for t in state.values()] == [
        (200, 64),
        (200,),
        (200, 200),
        (200,),
        (10, 200),
        (10,),
    ]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_both_flower_apis_give_the_same_numbers_every_round(
    default_runs: Callable[[str, str], dict[str, Any]], strategy: str
) -> None:
    legacy, message = (default_runs(strategy, api)["rounds"] for api in ("legacy", "message"))
    for key in ("central_loss", "central_accuracy", "accepted", "train_loss", "weights"):
        assert [r.get(key) for r in legacy] == [r.get(key) for r in message], key
    # Weights are named by partition id, the same on both halves and in every run.
    assert sorted(json.loads(legacy[1]["weights"])) == [str(p) for p in range(NUM_CLIENTS)]


@pytest.mark.parametrize("api", tuple(strategies.ADAPTERS))
def test_hybrid_mad_filter_and_server_momentum_run_end_to_end(tmp_path: Path, api: str) -> None:
    history = simulate(
        tmp_path,
        "--flower-api",
        api,
        "--strategy",
        "hybrid",
        "--robust-filter",
        "mad",
        "--server-momentum",
        "0.5",
        "--hybrid-lambda",
        "1.0",
        "--hybrid-lambda-end",
        "0.0",
        "--quality-source",
        "server",
        "--num-clients",
        "4",
        "--num-server-rounds",
        "2",
    )
    rounds = history["rounds"]
    assert [r["lambda"] for r in rounds[1:]] == [1.0, 0.0]  # the linear schedule
    assert rounds[-1]["central_accuracy"] > rounds[0]["central_accuracy"] + 0.2


def test_a_pool_of_nodes_gives_one_node_per_clients_results_on_both_halves(
    tmp_path: Path,
) -> None:
    """50 logical clients, 10 a round: a pool of 10 virtual nodes (the default) and one
    node per client sample the same partitions and give the same history, bit for bit.
    The reference runs on Ray, the others in this process (Ray's results, tested above)."""
    flags = ["--num-clients", "50", "--fraction-fit", "0.2", "--seed", "7"]
    flags += ["--num-server-rounds", str(ROUNDS)]
    runs = {
        (api, nodes): without_timings(
            simulate(
                tmp_path / f"{api}-{nodes}", "--flower-api", api, "--num-nodes", nodes, *flags,
                *(RAY if (api, nodes) == ("legacy", "per-client") else IN_PROCESS),
            )
        )
        for api in tuple(strategies.ADAPTERS)
        for nodes in ("per-client", "auto")
    }  # fmt: skip
    for run in runs.values():
        run["config"].pop("flower-api")
    reference = runs["legacy", "per-client"]
    sampled = [r["sampled_partitions"] for r in reference["rounds"][1:]]
    assert [len(s) for s in sampled] == [10] * ROUNDS  # 0.2 of 50 clients
    assert len({tuple(s) for s in sampled}) > 1  # rounds draw different clients
    assert max(max(s) for s in sampled) >= 10  # partitions beyond the pool's 10 nodes
    assert reference["rounds"][-1]["central_accuracy"] > reference["rounds"][0]["central_accuracy"]
    for run in runs.values():
        assert run == reference


@pytest.mark.parametrize("api", tuple(strategies.ADAPTERS))
def test_clients_in_this_process_give_the_ray_runs_results_bit_for_bit(
    default_runs: Callable[[str, str], dict[str, Any]], tmp_path: Path, api: str
) -> None:
    on_ray = default_runs("hybrid", api)
    here = simulate(
        tmp_path, *IN_PROCESS, "--strategy", "hybrid", "--flower-api", api,
        "--num-clients", str(NUM_CLIENTS), "--num-server-rounds", str(ROUNDS),
    )  # fmt: skip
    assert without_timings(here) == without_timings(on_ray)
    mine, theirs = (torch.load(Path(r["directory"]) / "final_model.pt") for r in (here, on_ray))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert here["sockets"] == set()  # no Ray: nothing listens at all
    assert {"gcs_server", "raylet"} <= {command for _, _, command in on_ray["sockets"]}


def test_a_client_that_raises_in_this_process_is_a_failure(tmp_path: Path) -> None:
    history = simulate(
        tmp_path, *IN_PROCESS, "--fault-kind", "raise", "--fault-fraction", "0.3",
        "--num-clients", str(NUM_CLIENTS), "--num-server-rounds", "2",
    )  # fmt: skip
    assert [r["failures"] for r in history["rounds"][1:]] == [3, 3]
    assert [r["accepted"] for r in history["rounds"][1:]] == [7, 7]


@pytest.mark.parametrize("api", tuple(strategies.ADAPTERS))
def test_the_simulations_ray_listens_on_loopback_only(
    default_runs: Callable[[str, str], dict[str, Any]], api: str
) -> None:
    sockets = default_runs("fedavg", api)["sockets"]
    # Seen while it ran: Ray's GCS and raylet, and the workers that hold the client actors.
    commands = {command for _, _, command in sockets}
    assert {"gcs_server", "raylet"} <= commands
    assert any(command.startswith("ray::") for command in commands)
    assert [s for s in sockets if not on_loopback(s[0])] == []


@pytest.mark.parametrize("api", tuple(strategies.ADAPTERS))
def test_a_sweep_in_one_engine_gives_each_run_its_history_alone(
    default_runs: Callable[[str, str], dict[str, Any]], tmp_path: Path, api: str
) -> None:
    """2 strategies x 2 seeds in one start of the engine: every run's history and final
    model are those of the same run started alone (seed 42: the shared default runs, on
    Ray; the sweep and seed 43 in this process, whose results are Ray's: tested above;
    the comparison and preset tests sweep on Ray)."""
    compared = ["fedavg", "hybrid"]
    done = run_python(
        [
            "run_simulation.py", "--output-dir", str(tmp_path), "--run-name", "sweep",
            "--compare", *compared, "--seeds", "42", "43", "--flower-api", api,
            "--num-clients", str(NUM_CLIENTS), "--num-server-rounds", str(ROUNDS), *IN_PROCESS,
        ]
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| fedavg |" in (tmp_path / "sweep" / "comparison.md").read_text()
    for strategy in compared:
        alone = {42: default_runs(strategy, api)}
        alone[43] = simulate(
            tmp_path / f"{strategy}-43",
            "--strategy", strategy, "--seed", "43", "--flower-api", api,
            "--num-clients", str(NUM_CLIENTS), "--num-server-rounds", str(ROUNDS), *IN_PROCESS,
        )  # fmt: skip
        for seed, run in alone.items():
            swept = tmp_path / "sweep" / strategy / f"seed-{seed}"
            assert without_timings(read_history(swept)) == without_timings(run), (strategy, seed)
            mine, theirs = (
                torch.load(d / "final_model.pt") for d in (swept, Path(run["directory"]))
            )
            assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_a_sweep_records_a_failed_run_and_compares_the_others(tmp_path: Path) -> None:
    # No client reports "nope": quality weighting rejects every update, and stops.
    done = run_python(
        [
            "run_simulation.py", "--output-dir", str(tmp_path), "--run-name", "sweep",
            "--compare", "quality", "fedavg", "--quality-metric", "nope",
            "--max-empty-rounds", "1", "--num-clients", "2", "--num-server-rounds", "2",
        ]
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "run sweep/quality failed: round 1: nothing aggregated" in done.stdout
    assert "1 run(s) failed: sweep/quality" in done.stderr
    table = (tmp_path / "sweep" / "comparison.md").read_text()
    assert "| fedavg |" in table
    assert "| quality |" not in table
    assert len(read_history(tmp_path / "sweep" / "fedavg")["rounds"]) == 3


def test_a_comparison_with_the_centralized_reference_row(tmp_path: Path) -> None:
    done = run_python(
        [
            "run_simulation.py", "--output-dir", str(tmp_path), "--run-name", "gap",
            "--compare", "fedavg", "centralized",
            "--num-clients", "4", "--num-server-rounds", "2", "--local-epochs", "1",
        ]
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (tmp_path / "gap" / "comparison.md").read_text()
    assert "| fedavg |" in table
    assert "| centralized |" in table
    federated = read_history(tmp_path / "gap" / "fedavg")["rounds"]
    centralized = read_history(tmp_path / "gap" / "centralized")["rounds"]
    assert [r["round"] for r in centralized] == [r["round"] for r in federated] == [0, 1, 2]
    # The same initial model and server test set: round 0 is the same evaluation.
    assert centralized[0]["central_loss"] == federated[0]["central_loss"]
    assert centralized[-1]["central_accuracy"] > centralized[0]["central_accuracy"] + 0.5
