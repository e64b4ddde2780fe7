"""Each logical client's own state (part ``client-state``): kept by the server between the
client's rounds, whatever node runs it, and in checkpoints; ``personal-layers`` as Flower's
advanced-pytorch example keeps a client's classification head."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from fl_app.kit.checkpoint import CHECKPOINT_FILE, Checkpoint, load_checkpoint, save_checkpoint
from fl_app.kit.config import RunConfig  # part: legacy-api
from fl_app.kit.keys import ConfigError  # part: legacy-api
from fl_app.parts.client_state import (
    KEPT_ROUNDS,
    NODE_FOLDER_KEY,
    entering,
    read_newest,
    round_file,
    save_newest,
)
from strategies.client_states import CLIENT_STATE_PLACES
from strategies.core.state import StrategyState
from strategies.sampling import PARTITION_KEY
from strategies.stateful_messages import RUN_KEY, STATE_PREFIX
from tests.fakes import Nodes, message_with
from tests.processes import read_history, run_simulation_cli, without_timings


def test_every_clients_records_survive_a_checkpoint_exactly(tmp_path: Path) -> None:
    state = StrategyState()
    head = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([0.1, -0.2])]
    state.client_states = {
        "3": {"head": ("arrays", {"0": head[0], "1": head[1]}), "seen": ("config", {"n": 2})},
        "0": {"scores": ("metrics", {"best": 0.25, "curve": [0.5, 0.25]})},
    }
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(path, Checkpoint(1, [np.ones(2)], state.to_arrays(), []))
    restored = StrategyState.from_arrays(load_checkpoint(path).strategy_state)
    assert restored.client_states.keys() == {"3", "0"}
    kind, arrays = restored.client_states["3"]["head"]
    assert kind == "arrays"
    for got, want in zip(arrays.values(), head, strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    assert restored.client_states["3"]["seen"] == ("config", {"n": 2})
    assert restored.client_states["0"]["scores"] == (
        "metrics",
        {"best": 0.25, "curve": [0.5, 0.25]},
    )


def test_a_node_keeps_a_clients_newest_states_and_reads_the_one_before_the_round(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "run" / "3"
    for server_round in (1, 3, 4):
        head = ArrayRecord([np.full((2, 2), server_round, dtype=np.float32), np.arange(3)])
        seen = ConfigRecord({"round": server_round, "note": "text", "curve": [0.5, 0.25]})
        state = RecordDict({"head": head, "seen": seen, "score": MetricRecord({"best": 0.5})})
        save_newest(round_file(folder, server_round), state)
    assert sorted(folder.iterdir()) == [round_file(folder, 3), round_file(folder, 4)]
    for before, newest in ((4, 3), (5, 4), (99, 4)):
        state = read_newest(folder, before)
        first, second = state["head"].to_numpy_ndarrays()
        assert first.dtype == np.float32
        assert first.tolist() == [[newest] * 2] * 2
        assert second.tolist() == [0, 1, 2]
        assert dict(state["seen"]) == {"round": newest, "note": "text", "curve": [0.5, 0.25]}
        assert dict(state["score"]) == {"best": 0.5}
    assert len(read_newest(folder, 3)) == 0  # round 1's file went: only the newest two stay
    save_newest(round_file(folder, 5), RecordDict())  # a client that keeps nothing
    assert len(read_newest(folder, 6)) == 0


def test_a_node_refuses_a_run_name_that_is_a_path(tmp_path: Path, task_identity: None) -> None:
    node = {PARTITION_KEY: 0, NODE_FOLDER_KEY: str(tmp_path / "state")}
    context = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})
    message = Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN)
    cfg = SimpleNamespace(output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="is not a run's name"):
        entering(message, {RUN_KEY: "../../elsewhere", "server-round": 1}, cfg, context)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("place", CLIENT_STATE_PLACES)
def test_the_server_sends_a_clients_records_or_where_nodes_keep_them_the_runs_name(
    place: str, task_identity: None
) -> None:
    model = [np.zeros(2, dtype=np.float32)]
    strategy = message_with(model, "fedavg", nodes=2, client_state_on=place)
    head = {"0": np.ones(2, dtype=np.float32)}
    strategy.rule.state.client_states = {"1": {"head": ("arrays", head)}}
    messages = list(strategy.configure_train(2, ArrayRecord(model), ConfigRecord(), Nodes(2)))
    run = strategy.rule.state.client_state_run
    restored = StrategyState.from_arrays(strategy.rule.state.to_arrays())
    assert restored.client_state_run == run  # a resumed run names the same
    for message in messages:
        sent = {k for k in message.content if k.startswith(STATE_PREFIX)}
        to_client_1 = message.metadata.dst_node_id == 1
        if place == "node":
            assert message.content["config"][RUN_KEY] == run
            assert sent == set()
        else:
            assert RUN_KEY not in message.content["config"]
            assert sent == ({STATE_PREFIX + "head"} if to_client_1 else set())
    assert (len(run) == 32) == (place == "node")


NOT_ON_LEGACY = [("personal-layers", 2), ("client-state-on", "node")]  # part: legacy-api


@pytest.mark.parametrize(("key", "value"), NOT_ON_LEGACY)  # part: legacy-api
def test_a_clients_state_needs_the_message_api(key: str, value: object) -> None:  # part: legacy-api
    legacy = {key: value, "flower-api": "legacy"}  # part: legacy-api
    with pytest.raises(ConfigError, match=f"'{key}' = {value!r}"):  # part: legacy-api
        RunConfig.from_mapping(legacy)  # part: legacy-api


# Half the clients a round: a client's head must outlive the rounds it sits out.
FLAGS = ["--num-clients", "6", "--fraction-fit", "0.5", "--fraction-evaluate", "1.0"]
FLAGS += ["--min-fit-clients", "1", "--min-evaluate-clients", "1", "--min-available-clients", "1"]
FLAGS += ["--num-server-rounds", "3", "--local-epochs", "1", "--personal-layers", "2"]
RUNS = {"one node per client": ["--run-name", "per-client"]}
RUNS["a pool of 2 nodes"] = ["--run-name", "pool", "--num-nodes", "2"]  # part: fast-engine
FLOWERS = ["--num-nodes", "per-client"]  # Flower's FedAvg builds the messages  # part: fast-engine
RUNS["Flower's messages"] = ["--run-name", "flower", *FLOWERS]  # part: fast-engine
RAY = ["--num-nodes", "2", "--backend", "ray"]  # part: fast-engine
RUNS["a pool of 2 on Ray"] = ["--run-name", "ray", *RAY]  # part: fast-engine


@pytest.mark.slow
@pytest.mark.parametrize("place", CLIENT_STATE_PLACES)
def test_a_clients_own_layers_follow_it_on_any_pool_and_through_a_resume(
    tmp_path: Path, place: str
) -> None:
    """The same run one node per client, on a pool of 2 virtual nodes (each serving 3 clients),
    on either backend, with the messages Flower's FedAvg builds (one content for all), and
    stopped after round 2 then resumed: bit for bit the same records
    and model, with the state kept by the server or by the nodes. Without its own layers the
    clients evaluate differently: the state mattered."""
    flags = [*FLAGS, "--client-state-on", place]
    for run in RUNS.values():
        run_simulation_cli(tmp_path, *flags, *run)
    run_simulation_cli(tmp_path, *flags, "--run-name", "resumed", "--num-server-rounds", "2")
    run_simulation_cli(tmp_path, "--resume", str(tmp_path / "resumed"), "--num-server-rounds", "3")
    names = [run[1] for run in RUNS.values()] + ["resumed"]
    histories = {name: without_timings(read_history(tmp_path / name)) for name in names}
    reference = histories.pop("per-client")
    for name, history in histories.items():
        assert history["rounds"] == reference["rounds"], name
    want = torch.load(tmp_path / "per-client" / "final_model.pt")
    for name in histories:
        got = torch.load(tmp_path / name / "final_model.pt")
        assert all(torch.equal(got[k], v) for k, v in want.items()), name
    trained = {str(p) for r in reference["rounds"][1:] for p in r["sampled_partitions"]}
    kept = load_checkpoint(tmp_path / "per-client" / CHECKPOINT_FILE).strategy_state
    state = StrategyState.from_arrays(kept)
    if place == "server":
        assert state.client_states.keys() == trained  # one each, by partition
        run_simulation_cli(tmp_path, *flags, "--run-name", "shared", "--personal-layers", "0")
        shared = read_history(tmp_path / "shared")["rounds"]
        own = [r["federated_accuracy"] for r in reference["rounds"][1:]]
        assert own != [r["federated_accuracy"] for r in shared[1:]]
        return
    assert state.client_states == {}  # the server never saw them
    on_nodes = tmp_path / "client-state" / state.client_state_run
    assert {p.name for p in on_nodes.iterdir()} == trained
    files = [len(list(p.glob("round-*.npz"))) for p in on_nodes.iterdir()]
    assert min(files) >= 1
    assert max(files) == KEPT_ROUNDS  # older rounds' files go
