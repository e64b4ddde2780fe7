"""A client's own state in a real deployment (parts ``client-state`` and ``deployment-scripts``):
with ``client-state-on = node`` it stays on the client's SuperNode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fl_app.kit.checkpoint import CHECKPOINT_FILE, load_checkpoint
from scripts import local_deployment as ld
from strategies.core.state import StrategyState
from tests.deployments import FAST, history_of, run_to_completion

pytestmark = pytest.mark.slow


def test_a_clients_state_stays_on_its_supernode(
    tmp_path: Path, env: dict[str, str], app_copy: Path
) -> None:
    """``client-state-on = node``: each client's own layers wait in its SuperNode's folder, one
    file per round it trained in; the server's checkpoint holds none (it never saw them)."""
    deployment = ld.up(tmp_path / "deployment", 2, env=env)
    try:
        config = "num-server-rounds=2 run-name='own' personal-layers=2 client-state-on='node'"
        status = run_to_completion(deployment, env, f"{config} {FAST}", app_copy)
    finally:
        ld.down(tmp_path / "deployment")
    assert status == "finished:completed"
    assert [r["accepted"] for r in history_of(deployment, "own")["rounds"][1:]] == [2, 2]
    checkpoint = Path(deployment.directory) / "outputs" / "own" / CHECKPOINT_FILE
    state = StrategyState.from_arrays(load_checkpoint(checkpoint).strategy_state)
    assert state.client_states == {}
    assert not (Path(deployment.directory) / "outputs" / "client-state").exists()
    for partition in (0, 1):  # its own SuperNode's folder, and no other, holds a client's state
        node = Path(deployment.directory) / f"supernode_{partition}" / "client-state"
        kept = node / state.client_state_run
        assert [p.name for p in kept.iterdir()] == [str(partition)]
        heads = [np.load(f) for f in sorted((kept / str(partition)).glob("round-*.npz"))]
        assert len(heads) == 2  # rounds 1 and 2, each what that round's training left
        assert not all(np.array_equal(heads[0][k], heads[1][k]) for k in heads[0].files)
