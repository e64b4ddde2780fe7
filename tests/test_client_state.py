"""Each logical client's own state (part ``client-state``): kept by the server between the
client's rounds, whatever node runs it, and in checkpoints; ``personal-layers`` as Flower's
advanced-pytorch example keeps a client's classification head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fl_app.kit.checkpoint import CHECKPOINT_FILE, Checkpoint, load_checkpoint, save_checkpoint
from fl_app.kit.config import RunConfig  # part: legacy-api
from fl_app.kit.keys import ConfigError  # part: legacy-api
from strategies.core.state import StrategyState
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


def test_personal_layers_need_the_message_api() -> None:  # part: legacy-api
    legacy = {"personal-layers": 2, "flower-api": "legacy"}  # part: legacy-api
    with pytest.raises(ConfigError, match="'personal-layers' = 2"):  # part: legacy-api
        RunConfig.from_mapping(legacy)  # part: legacy-api


# Half the clients a round: a client's head must outlive the rounds it sits out.
FLAGS = ["--num-clients", "6", "--fraction-fit", "0.5", "--fraction-evaluate", "1.0"]
FLAGS += ["--min-fit-clients", "1", "--min-evaluate-clients", "1", "--min-available-clients", "1"]
FLAGS += ["--num-server-rounds", "3", "--local-epochs", "1", "--personal-layers", "2"]
RUNS = {"one node per client": ["--run-name", "per-client"]}
RUNS["a pool of 2 nodes"] = ["--run-name", "pool", "--num-nodes", "2"]  # part: fast-engine
RAY = ["--num-nodes", "2", "--backend", "ray"]  # part: fast-engine
RUNS["a pool of 2 on Ray"] = ["--run-name", "ray", *RAY]  # part: fast-engine


@pytest.mark.slow
def test_a_clients_own_layers_follow_it_on_any_pool_and_through_a_resume(tmp_path: Path) -> None:
    """The same run one node per client, on a pool of 2 virtual nodes (each serving 3 clients),
    on either backend, and stopped after round 2 then resumed: bit for bit the same records
    and model. Without its own layers the clients evaluate differently: the state mattered."""
    for flags in RUNS.values():
        run_simulation_cli(tmp_path, *FLAGS, *flags)
    run_simulation_cli(tmp_path, *FLAGS, "--run-name", "resumed", "--num-server-rounds", "2")
    run_simulation_cli(tmp_path, "--resume", str(tmp_path / "resumed"), "--num-server-rounds", "3")
    run_simulation_cli(tmp_path, *FLAGS, "--run-name", "shared", "--personal-layers", "0")
    names = [flags[1] for flags in RUNS.values()] + ["resumed"]
    histories = {name: without_timings(read_history(tmp_path / name)) for name in names}
    reference = histories.pop("per-client")
    for name, history in histories.items():
        assert history["rounds"] == reference["rounds"], name
    want = torch.load(tmp_path / "per-client" / "final_model.pt")
    for name in histories:
        got = torch.load(tmp_path / name / "final_model.pt")
        assert all(torch.equal(got[k], v) for k, v in want.items()), name
    shared = read_history(tmp_path / "shared")["rounds"]
    own = [r["federated_accuracy"] for r in reference["rounds"][1:]]
    assert own != [r["federated_accuracy"] for r in shared[1:]]
    trained = {str(p) for r in reference["rounds"][1:] for p in r["sampled_partitions"]}
    kept = load_checkpoint(tmp_path / "per-client" / CHECKPOINT_FILE).strategy_state
    assert StrategyState.from_arrays(kept).client_states.keys() == trained  # one each, by partition
