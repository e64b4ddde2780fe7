"""A pool of virtual nodes (the optional part ``fast-engine``): fewer nodes than clients,
each message naming the partition it is for, the same runs as one node per client."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import ndarrays_to_parameters
from flwr.server import SimpleClientManager

import run_simulation
import strategies
from fl_app import client_app
from fl_app.kit.keys import ConfigError
from fl_app.parts.pools import pool_size
from strategies.sampling import NUM_PARTITIONS_KEY, PARTITION_KEY
from tests.halves import API_CONFIG, API_FLAGS, HALVES
from tests.processes import IN_PROCESS, ON_RAY, simulate, without_timings
from tests.test_client import CFG, context, global_weights, named_train, node, trained_loss
from tests.test_sampling import MODEL, QueryGrid, drawn, sampler_of

# The tests of a pool on the other Flower API half, where this copy has it.
OTHER_HALF = pytest.mark.skipif("legacy" not in HALVES, reason="the Message API half only")


# ---- the strategies ------------------------------------------------------------------


@pytest.mark.usefixtures("task_identity")
def test_a_pool_draws_the_partitions_one_node_per_client_draws_and_names_them() -> None:
    """10 logical clients on 3 nodes: the partitions the seeded sampler draws among 10
    nodes reporting 0..9, dealt over the nodes in turn, each message naming its own."""
    message = strategies.build("fedavg", sampling_seed=7, fraction_train=0.3, num_partitions=10)
    grid = QueryGrid({12: 0, 9: 0, 100: 0})
    reference = sampler_of(7, {p: p for p in range(10)})
    for server_round in (1, 2):
        want = drawn(reference, server_round, range(10), 3)
        named = [{PARTITION_KEY: p, NUM_PARTITIONS_KEY: 10} for p in want]
        sent = message.configure_train(server_round, ArrayRecord(MODEL), ConfigRecord(), grid)
        assert [m.metadata.dst_node_id for m in sent] == [9, 12, 100]
        assert [{k: m.content["config"][k] for k in named[0]} for m in sent] == named
        assert all(m.content["config"]["server-round"] == server_round for m in sent)
        assert message.last_sampled == want
        assert message.rule.sampling == (3, 10)  # m of the logical clients
    assert not grid.asked  # a pool's nodes are never asked for a partition id
    evaluated = message.configure_evaluate(3, ArrayRecord(MODEL), ConfigRecord(), grid)
    want = reference.draw(3, "evaluate", 10, 10)
    assert [m.content["config"][PARTITION_KEY] for m in evaluated] == want
    assert [m.metadata.dst_node_id for m in evaluated][:4] == [9, 12, 100, 9]


@pytest.mark.usefixtures("task_identity")
def test_a_pool_names_replies_by_their_messages_partition() -> None:
    strategy = strategies.build("fedavg", sampling_seed=1, num_partitions=4)
    sent = strategy.configure_train(1, ArrayRecord(MODEL), ConfigRecord(), QueryGrid({5: 0}))
    for i, m in enumerate(sent):  # as the grid does when it pushes them
        m.metadata.__dict__["_message_id"] = f"message-{i}"
    one = np.ones(3, dtype=np.float32)
    replies = [
        Message(
            RecordDict(
                {
                    "arrays": ArrayRecord([one * (i + 1)]),
                    "metrics": MetricRecord({"num-examples": 1}),
                }
            ),
            reply_to=m,
        )
        for i, m in enumerate(sent[:3])  # the fourth never answers
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    result = strategy.last_result
    assert result is not None
    assert sorted(json.loads(result.metrics["weights"])) == ["0", "1", "2"]
    assert result.metrics["failures"] == 1
    assert result.problem is None
    assert arrays is not None
    np.testing.assert_array_equal(arrays.to_numpy_ndarrays()[0], one * 2)  # (1 + 2 + 3) / 3


@OTHER_HALF
def test_a_pool_of_legacy_proxies_draws_and_names_the_partitions_of_the_sampler() -> None:
    """10 logical clients on 3 nodes: the partitions the seeded sampler draws among 10
    nodes reporting 0..9, dealt over the nodes in turn, each instruction naming its own."""
    from tests.test_legacy_sampling import ReportingProxy

    legacy = strategies.build(
        "fedavg", api="legacy", sampling_seed=7, fraction_fit=0.3, num_partitions=10
    )
    manager = SimpleClientManager()
    for cid in ("12", "9", "100"):
        manager.register(ReportingProxy(cid, None))
    reference = sampler_of(7, {p: p for p in range(10)})
    parameters = ndarrays_to_parameters(MODEL)
    for server_round in (1, 2):
        want = drawn(reference, server_round, range(10), 3)
        named = [{PARTITION_KEY: p, NUM_PARTITIONS_KEY: 10} for p in want]
        pairs = legacy.configure_fit(server_round, parameters, manager)
        assert [proxy.cid for proxy, _ in pairs] == [str(p) for p in want]
        assert [proxy.node.cid for proxy, _ in pairs] == ["9", "12", "100"]  # type: ignore[attr-defined]
        assert [{k: ins.config[k] for k in named[0]} for _, ins in pairs] == named
        assert legacy.last_sampled == want
        assert legacy.rule.sampling == (3, 10)  # m of the logical clients, for DP


# ---- the ClientApp -------------------------------------------------------------------


@pytest.mark.usefixtures("one_torch_thread", "task_identity")
def test_a_pool_node_runs_the_partition_each_message_names_on_both_halves() -> None:
    pooled = client_app.client_app_for(CFG, pooled=True)
    for partition in (3, 4):
        want = trained_loss(CFG, partition)
        assert want != trained_loss(CFG, 1)
        for half, message in named_train(global_weights(), **node(partition)):
            reply = pooled(message, context(CFG.run_config, partition_id=1))  # node 1 of a pool
            assert half.train_loss(reply) == want


# ---- run_simulation.py --num-nodes -------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "wanted"),
    [
        (["--num-nodes", "0"], "--num-nodes '0' is not allowed: must be a number >= 1"),
        (["--num-nodes", "many"], "--num-nodes 'many' is not allowed"),
    ],
)
def test_a_bad_number_of_virtual_nodes_is_refused_in_one_line(
    flags: list[str], wanted: str
) -> None:
    with pytest.raises(ConfigError) as info:
        run_simulation.parse(flags)
    assert wanted in str(info.value)
    assert "\n" not in str(info.value)


def test_the_pool_is_sized_by_the_clients_a_round_asks_for() -> None:
    def pool(*flags: str) -> int | None:
        invocation = run_simulation.parse(list(flags))
        return pool_size(invocation.simulation.num_nodes, [invocation.cfg])

    assert pool("--num-clients", "100", "--fraction-fit", "0.1", "--fraction-evaluate", "0") == 10
    assert pool("--num-clients", "100", "--fraction-fit", "0.1", "--fraction-evaluate", "0.3") == 30
    assert pool("--num-clients", "100", "--num-nodes", "7") == 7
    assert pool("--num-clients", "100", "--num-nodes", "per-client") is None


@OTHER_HALF
def test_a_pool_of_nodes_is_refused_under_secure_aggregation() -> None:
    secure = ["--flower-api", "legacy", "--secure-aggregation"]
    with pytest.raises(ConfigError, match="SecAgg\\+ keeps each client's") as info:
        run_simulation.parse(["--num-nodes", "4", *secure])
    assert "\n" not in str(info.value)
    invocation = run_simulation.parse([*secure, "--fraction-evaluate", "0"])
    assert pool_size(invocation.simulation.num_nodes, [invocation.cfg]) is None  # node state


@pytest.mark.slow
def test_a_pool_of_nodes_gives_one_node_per_clients_results_on_each_half(
    tmp_path: Path,
) -> None:
    """50 logical clients, 10 a round: a pool of 10 virtual nodes (the default) and one
    node per client sample the same partitions and give the same history, bit for bit. The
    reference runs on Ray, the others wherever runs are fastest (tests/processes.py)."""
    flags = ["--num-clients", "50", "--fraction-fit", "0.2", "--seed", "7"]
    flags += ["--num-server-rounds", "3"]
    reference_run = ("message", "per-client")
    runs = {
        (api, nodes): without_timings(
            simulate(
                tmp_path / f"{api}-{nodes}", *API_FLAGS[api], "--num-nodes", nodes, *flags,
                *(ON_RAY if (api, nodes) == reference_run else IN_PROCESS),
            )
        )
        for api in API_FLAGS
        for nodes in ("per-client", "auto")
    }  # fmt: skip
    api_keys = {key for config in API_CONFIG.values() for key in config}
    for run in runs.values():
        run["config"] = {k: v for k, v in run["config"].items() if k not in api_keys}
    reference = runs[reference_run]
    sampled = [r["sampled_partitions"] for r in reference["rounds"][1:]]
    assert [len(s) for s in sampled] == [10] * 3  # 0.2 of 50 clients
    assert len({tuple(s) for s in sampled}) > 1  # rounds draw different clients
    assert max(max(s) for s in sampled) >= 10  # partitions beyond the pool's 10 nodes
    assert reference["rounds"][-1]["central_accuracy"] > reference["rounds"][0]["central_accuracy"]
    for run in runs.values():
        assert run == reference
