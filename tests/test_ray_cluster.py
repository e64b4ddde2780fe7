"""Simulation on a running Ray cluster: a real two-node cluster on this machine; the Ray
nodes the clients trained on, in the records and the summary."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import run_simulation
import strategies
from fl_app.client_app import make_client
from fl_app.kit.config import RunConfig
from fl_app.kit.keys import ConfigError
from fl_app.kit.results import describe, summarize
from fl_app.kit.rounds import train_record
from fl_app.parts.ray_cluster import ray_node
from fl_app.parts.ray_nodes import RAY_NODE, RayNodeClient, on_ray_node
from strategies.core.update import ClientUpdate, RoundResult
from tests.processes import (
    ROOT,
    TAG_VARIABLE,
    flwr_run_local,
    isolated_env,
    leftovers,
    read_history,
    stop_tagged,
    tagged_pids,
)
from tests.test_results import record


def test_the_summary_lists_every_ray_node_and_says_how_many() -> None:
    spread = summarize(
        [
            record(0, 0.1, 2.0),
            record(1, 0.5, 1.0, ray_nodes=["b3", "a1"]),
            record(2, 0.6, 0.9, ray_nodes=["b3", "c7"]),
        ]
    )
    assert spread["ray_nodes"] == ["a1", "b3", "c7"]
    assert describe(spread).endswith("2 rounds in 3.0 s on 3 Ray nodes")
    alone = summarize([record(0, 0.1, 2.0), record(1, 0.5, 1.0, ray_nodes=["b3"])])
    assert describe(alone).endswith("1 rounds in 2.0 s")  # one node: nothing to say


def test_a_round_records_the_ray_nodes_of_its_aggregated_clients() -> None:
    def accepted(node: str | None) -> ClientUpdate:
        return ClientUpdate("c", [], 1, {} if node is None else {RAY_NODE: node})

    strategy = strategies.build("fedavg")
    counts = {"sampled": 3, "results": 3, "failures": 0, "aggregated": True}
    strategy.last_result = RoundResult(None, {}, [accepted("b3"), accepted("a1")], None)
    assert train_record(1, strategy, metrics={}, **counts)["ray_nodes"] == ["a1", "b3"]
    strategy.last_result = RoundResult(None, {}, [accepted(None)], None)  # not on Ray
    assert "ray_nodes" not in train_record(1, strategy, metrics={}, **counts)


@pytest.mark.usefixtures("one_torch_thread", "task_identity")
def test_a_client_on_ray_reports_its_node_and_elsewhere_nothing() -> None:
    cfg = RunConfig(local_epochs=1, device="cpu")
    client = make_client(cfg, {"partition-id": 0, "num-partitions": 5})
    assert not isinstance(client, RayNodeClient)  # Ray is not running in this process
    assert on_ray_node(client) is client
    weights = [w.copy() for w in client.get_parameters({})]
    on_node = RayNodeClient(client, "5434810aa09d")
    _, _, metrics = on_node.fit(weights, {"server-round": 1})
    assert metrics[RAY_NODE] == "5434810aa09d"
    assert RAY_NODE not in on_node.evaluate(weights, {})[2]
    np.testing.assert_array_equal(on_node.get_parameters({})[0], weights[0])


def test_an_address_where_no_ray_answers_is_one_line_at_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_simulation.main(["--ray-address", "127.0.0.1:1"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: --ray-address '127.0.0.1:1' is not allowed: no Ray")


@pytest.mark.slow
def test_a_run_on_a_two_node_cluster_trains_on_both_and_leaves_it_running(
    tmp_path: Path,
) -> None:
    def simulate(*flags: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "run_simulation.py", "--output-dir", str(tmp_path), *flags]
        return subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )

    with isolated_env() as env:
        env["PYTHONPATH"] = str(ROOT)
        # The commands docs/running.md gives: `ray start --head`, then `ray start --address`.
        with ray_node(num_cpus=1, env=env) as address, ray_node(address, num_cpus=1, env=env):
            done = simulate(
                "--ray-address", address,
                "--run-name", "cluster",
                "--num-clients", "4",
                "--num-server-rounds", "3",
                "--local-epochs", "1",
            )  # fmt: skip
            cluster = tagged_pids(env[TAG_VARIABLE])
            too_big = simulate("--ray-address", address, "--num-cpus", "2")
        assert leftovers(env[TAG_VARIABLE]) == []
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"Ray cluster at {address}: 2 nodes with 2 CPUs and 0 GPUs in all" in done.stdout
    assert cluster, "the run stopped the cluster it did not start"
    history = read_history(tmp_path / "cluster")
    assert len(history["summary"]["ray_nodes"]) == 2  # one client actor per 1-CPU node
    assert "on 2 Ray nodes" in done.stdout
    rounds = history["rounds"]
    assert all(r["ray_nodes"] for r in rounds[1:])
    assert rounds[-1]["central_accuracy"] > rounds[0]["central_accuracy"] + 0.3
    assert too_big.returncode == 2
    assert too_big.stderr.strip().splitlines() == [
        f"error: --ray-address {address!r} is not allowed here: each client needs --num-cpus 2 "
        "--num-gpus 0 on one node, and no node of the cluster (2 nodes with 2 CPUs and 0 GPUs "
        "in all) has that, so none could run"
    ]


@pytest.mark.slow
def test_flwr_run_joins_the_cluster_named_by_ray_address(tmp_path: Path) -> None:
    with isolated_env() as env:
        with ray_node(num_cpus=1, env=env) as address, ray_node(address, num_cpus=1, env=env):
            # The local SuperLink flwr starts, and its simulation, inherit the variable;
            # Flower's ray.init() then joins that cluster instead of starting a Ray.
            env["RAY_ADDRESS"] = address
            done = flwr_run_local(
                env,
                f"num-server-rounds=2 output-dir='{tmp_path}' run-name='joined' local-epochs=1",
                "num-supernodes=4 client-resources-num-cpus=1",
            )
        stop_tagged(env[TAG_VARIABLE])  # the detached local SuperLink flwr started
        assert leftovers(env[TAG_VARIABLE], wait_seconds=0) == []
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    history = read_history(tmp_path / "joined")
    assert len(history["summary"]["ray_nodes"]) == 2
    assert [r["accepted"] for r in history["rounds"][1:]] == [4, 4]


@pytest.mark.skipif(
    importlib.util.find_spec("fl_app.engine.inprocess") is None,
    reason="--backend is the fast-engine part's",
)
def test_a_ray_cluster_is_refused_with_the_clients_in_this_process() -> None:
    with pytest.raises(ConfigError) as info:
        run_simulation.parse(["--backend", "inprocess", "--ray-address", "10.0.0.5:6379"])
    assert str(info.value) == (
        "--ray-address '10.0.0.5:6379' is not allowed with --backend inprocess: "
        "the clients run in this process (use --backend ray)"
    )
