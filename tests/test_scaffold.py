"""SCAFFOLD (part ``scaffold``): the client's corrected SGD step and its new control variate,
the server's control variate, each by hand; and a run on skewed data, resumed bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

import strategies
from fl_app.client_app import client_app_for
from fl_app.kit.config import RunConfig
from fl_app.kit.keys import ConfigError
from strategies.client_states import CLIENT_STATE_PLACES
from strategies.core.metrics import ROUND
from strategies.scaffold import CHANGE, CONTROL, VARIATE, next_control
from strategies.stateful_messages import STATE_PREFIX
from tests.fakes import Nodes, message_with, sent_to
from tests.processes import read_history, run_simulation_cli, without_timings
from tests.test_client import context, global_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread", "task_identity")

# One full-batch SGD step (K = 1) at η_l = 0.1: y = θ − η_l (g − c_i + c), c_i⁺ = (θ − y0) / η_l.
ONE_STEP = {"strategy": "scaffold", "momentum": 0.0, "local-epochs": 1, "batch-size": 4096}
ONE_STEP |= {"learning-rate": 0.1, "device": "cpu"}


def trained(run_config: dict[str, object], **records: list[np.ndarray]) -> tuple[list, list]:
    """The model and the client's new c_i after one train message carrying ``records``."""
    content = RecordDict(
        {"arrays": ArrayRecord(global_weights()), "config": ConfigRecord({"server-round": 1})}
    )
    for name, arrays in records.items():
        content[name] = ArrayRecord(arrays)
    reply = client_app_for()(
        Message(content, dst_node_id=101, message_type="train"), context(run_config)
    )
    variate = reply.content.array_records[STATE_PREFIX + VARIATE].to_numpy_ndarrays()
    before = records.get(STATE_PREFIX + VARIATE) or [np.zeros_like(a) for a in variate]
    sent = reply.content.array_records[CHANGE].to_numpy_ndarrays()  # what the server folds
    assert all(np.array_equal(d, n - o) for d, n, o in zip(sent, variate, before, strict=True))
    return reply.content["arrays"].to_numpy_ndarrays(), variate


def test_the_client_steps_along_the_corrected_gradient_and_keeps_its_new_variate() -> None:
    theta = global_weights()
    plain, gradient = trained(ONE_STEP)  # c = c_i = 0: plain SGD, c_i⁺ = g
    for g, t, y in zip(gradient, theta, plain, strict=True):
        np.testing.assert_allclose(g, (t - y) / 0.1, rtol=1e-5, atol=1e-6)
    rng = np.random.default_rng(0)
    c = [rng.normal(size=t.shape).astype(t.dtype) for t in theta]
    c_i = [rng.normal(size=t.shape).astype(t.dtype) for t in theta]
    state = {STATE_PREFIX + VARIATE: c_i}
    corrected, variate = trained(ONE_STEP, **{CONTROL: c}, **state)
    for y, y0, a, b in zip(corrected, plain, c, c_i, strict=True):  # y = y0 − η_l (c − c_i)
        np.testing.assert_allclose(y, y0 - 0.1 * (a - b), rtol=1e-5, atol=1e-6)
    for got, g in zip(variate, gradient, strict=True):  # c_i⁺ = c_i − c + g − c_i + c = g
        np.testing.assert_allclose(got, g, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("place", CLIENT_STATE_PLACES)
def test_the_server_folds_each_accepted_clients_change_into_its_variate(place: str) -> None:
    """c ← c + (1/N) Σ (c_i⁺ − c_i), N the clients, from the changes the replies bring (one that
    does not fit the model counts as none), wherever the clients' c_i are kept; the next
    round's messages carry c."""
    model = [np.zeros((2, 2), dtype=np.float32), np.zeros(3, dtype=np.float32)]
    strategy = message_with(model, "scaffold", nodes=4, client_state_on=place)
    changes = {node: [np.full(a.shape, node, dtype=np.float32) for a in model] for node in (1, 2)}
    changes[3] = [np.ones(5, dtype=np.float32)]  # the wrong shape: left out of c
    replies = []
    for node, arrays in changes.items():
        content = RecordDict(
            {"arrays": ArrayRecord(model), "metrics": MetricRecord({"num-examples": 5})}
        )
        content[CHANGE] = ArrayRecord(arrays)
        if place == "server":  # the client's c_i⁺ (from 0) comes back with its state
            content[STATE_PREFIX + VARIATE] = ArrayRecord(arrays)
        replies.append(Message(content, reply_to=sent_to(node)))
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics is not None
    assert metrics[ROUND + "accepted"] == 3
    control = strategy.rule.state.control
    assert [c.tolist() for c in control] == [np.full(a.shape, (1 + 2) / 4).tolist() for a in model]
    assert next_control(control, [control], 2)[1].tolist() == [1.125] * 3  # c + c / 2
    kept = strategy.rule.state.client_states.keys()
    assert kept == ({"1", "2", "3"} if place == "server" else set())
    messages = list(strategy.configure_train(2, ArrayRecord(model), ConfigRecord(), Nodes(4)))
    assert all(m.content[CONTROL].to_numpy_ndarrays()[1].tolist() == [0.75] * 3 for m in messages)


def strategy_grid(nodes: int):
    from tests.fakes import Nodes

    return Nodes(nodes)


def test_scaffold_refuses_momentum_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"'momentum' = 0.9 is not allowed: must be 0"):
        RunConfig.from_mapping({"strategy": "scaffold", "momentum": 0.9})
    assert "scaffold" in strategies.CHOICES


FLAGS = ["--strategy", "scaffold", "--momentum", "0", "--partitioner", "dirichlet"]
FLAGS += ["--dirichlet-alpha", "0.3", "--local-epochs", "1", "--fraction-fit", "0.5"]


@pytest.mark.slow
def test_scaffold_learns_on_skewed_data_and_resumes_bit_for_bit(tmp_path: Path) -> None:
    """Round 1 (c = 0) is FedAvg's; then the variates move it; a run of 2 rounds resumed to 3
    equals a run of 3 (the server's c and the clients' c_i are checkpointed), and so does the
    run whose nodes keep the clients' c_i (the server sees only their changes)."""
    run_simulation_cli(tmp_path, *FLAGS, "--num-server-rounds", "3", "--run-name", "whole")
    on_nodes = ["--client-state-on", "node", "--run-name", "nodes"]
    run_simulation_cli(tmp_path, *FLAGS, "--num-server-rounds", "3", *on_nodes)
    run_simulation_cli(tmp_path, *FLAGS, "--num-server-rounds", "2", "--run-name", "resumed")
    run_simulation_cli(tmp_path, "--resume", str(tmp_path / "resumed"), "--num-server-rounds", "3")
    fedavg = ["--strategy", "fedavg", "--num-server-rounds", "3", "--run-name", "fedavg"]
    run_simulation_cli(tmp_path, *FLAGS[2:], *fedavg)
    whole = read_history(tmp_path / "whole")["rounds"]
    averaged = read_history(tmp_path / "fedavg")["rounds"]
    assert whole[1]["central_accuracy"] == averaged[1]["central_accuracy"]
    assert whole[3]["central_accuracy"] != averaged[3]["central_accuracy"]
    assert whole[3]["central_accuracy"] > whole[0]["central_accuracy"] + 0.05
    for name in ("resumed", "nodes"):
        history = without_timings(read_history(tmp_path / name))
        assert history["rounds"] == without_timings(read_history(tmp_path / "whole"))["rounds"]
