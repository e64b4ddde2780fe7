"""`flwr run .` on the local simulation federation, as the README and docs/running.md show it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.halves import API_CONFIG, API_RUN_CONFIG
from tests.processes import (
    ROOT,
    TAG_VARIABLE,
    flwr_run_local,
    isolated_env,
    leftovers,
    on_loopback,
    read_history,
    stop_tagged,
    tagged_pids,
    watching_sockets,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("api", list(API_CONFIG))
def test_flwr_run_local_simulation_trains_and_its_superlink_is_stopped(
    tmp_path: Path, api: str
) -> None:
    pyproject_before = (ROOT / "pyproject.toml").read_bytes()
    with isolated_env() as env:
        run_config = (
            f"num-server-rounds=2 strategy='hybrid' output-dir='{tmp_path}' run-name='smoke' "
            f"{API_RUN_CONFIG[api]}"
        )
        with watching_sockets(env[TAG_VARIABLE]) as sockets:
            done = flwr_run_local(env, run_config, "num-supernodes=3 client-resources-num-cpus=1")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        tag = env[TAG_VARIABLE]
        # flwr started a detached local SuperLink that keeps running: stop it by PID.
        assert tagged_pids(tag), "expected the auto-started SuperLink to be running"
        stop_tagged(tag)
        assert leftovers(tag, wait_seconds=0) == []
    # Flower's local SuperLink, its flwr-simulation process and that process's Ray (GCS,
    # raylet, workers): all of them on loopback only (a command is its first 15 characters).
    commands = {command for _, _, command in sockets}
    assert {"flower-superlin", "flwr-simulation", "gcs_server", "raylet"} <= commands
    assert [s for s in sockets if not on_loopback(s[0])] == []

    assert (ROOT / "pyproject.toml").read_bytes() == pyproject_before  # flwr did not rewrite it
    history = read_history(tmp_path / "smoke")
    rounds = history["rounds"]
    # flwr exits 0 even when every client failed: check that each round aggregated 3 results.
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert [r["accepted"] for r in rounds[1:]] == [3, 3]
    assert history["config"]["strategy"] == "hybrid"
    assert {k: history["config"][k] for k in API_CONFIG[api]} == API_CONFIG[api]
    assert rounds[-1]["central_accuracy"] > rounds[0]["central_accuracy"] + 0.3
