"""Checkpoints: atomic per-round state, and a killed run resumed to the same result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fl_app.kit.checkpoint import CHECKPOINT_FILE, Checkpoint, load_checkpoint, save_checkpoint
from tests.halves import API_FLAGS
from tests.processes import (
    ROOT,
    TAG_VARIABLE,
    isolated_env,
    leftovers,
    read_history,
    run_simulation_cli,
    tagged_pids,
    without_timings,
)


def test_checkpoint_round_trip_and_atomic_replace(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_FILE
    first = Checkpoint(
        round=3,
        global_model=[np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1], dtype=np.int64)],
        strategy_state={"buffer": [np.full((2, 3), 0.5, dtype=np.float32), np.zeros(1)]},
        rounds=[{"round": 0, "central_loss": 2.3}, {"round": 3, "weights": '{"a": 1.0}'}],
    )
    save_checkpoint(path, first)
    save_checkpoint(path, Checkpoint(round=4, global_model=first.global_model, rounds=first.rounds))
    second = load_checkpoint(path)
    assert second.round == 4
    assert second.strategy_state == {}
    assert second.rounds == first.rounds
    for got, want in zip(second.global_model, first.global_model, strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    save_checkpoint(path, first)
    again = load_checkpoint(path)
    np.testing.assert_array_equal(
        again.strategy_state["buffer"][0], first.strategy_state["buffer"][0]
    )
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]  # no temporary left behind


FLAGS = [
    "--num-clients",
    "4",
    "--fraction-fit",  # 2 of 4 clients a round, the same ones in both runs
    "0.3",
    "--num-server-rounds",
    "6",
    "--server-momentum",  # part: server-optimizer
    "0.5",  # part: server-optimizer
    "--local-epochs",
    "1",
    "--dp",  # part: dp
    "central",  # part: dp
    "--dp-noise-multiplier",  # part: dp
    "0.1",  # part: dp
    "--dp-clipping-norm",  # part: dp
    "5",  # part: dp
]


@pytest.mark.slow
@pytest.mark.parametrize("api", list(API_FLAGS))
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path: Path, api: str) -> None:
    flags = [*API_FLAGS[api], *FLAGS]
    run_simulation_cli(tmp_path, "--run-name", "whole", *flags)

    broken = tmp_path / "broken"
    with isolated_env() as env:
        command = [
            sys.executable,
            "run_simulation.py",
            "--output-dir",
            str(tmp_path),
            "--run-name",
            "broken",
            *flags,
        ]
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 300
        while (
            not (broken / CHECKPOINT_FILE).is_file()
            or load_checkpoint(broken / CHECKPOINT_FILE).round < 2
        ):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for pid in tagged_pids(env[TAG_VARIABLE]):  # a crash: no chance to clean up
            os.kill(pid, signal.SIGKILL)
        process.wait(timeout=30)
        assert leftovers(env[TAG_VARIABLE]) == []
    killed_at = load_checkpoint(broken / CHECKPOINT_FILE).round
    assert 2 <= killed_at < 6
    assert not (broken / "final_model.pt").exists()

    stdout = run_simulation_cli(tmp_path, "--resume", str(broken))
    assert f"round   {killed_at + 1}/6" in stdout
    assert f"round   {killed_at}/6" not in stdout  # finished rounds are not run again

    whole = torch.load(tmp_path / "whole" / "final_model.pt")
    resumed = torch.load(broken / "final_model.pt")
    for key, tensor in whole.items():
        assert torch.equal(resumed[key], tensor), key
    whole_history = without_timings(read_history(tmp_path / "whole"))
    resumed_history = without_timings(read_history(broken))
    assert [r["round"] for r in resumed_history["rounds"]] == list(range(7))
    assert [len(r["sampled_partitions"]) for r in resumed_history["rounds"][1:]] == [2] * 6
    assert resumed_history == whole_history
    epsilons = [r["epsilon"] for r in resumed_history["rounds"][1:]]  # part: dp
    assert epsilons == sorted(set(epsilons))  # part: dp
