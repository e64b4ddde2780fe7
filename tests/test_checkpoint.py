"""Checkpoints: atomic per-round state (a failed write keeps the last one), and a killed run
resumed to the same result."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

import run_simulation
from fl_app.kit import rounds
from fl_app.kit.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    load_checkpoint,
    resumed,
    save_checkpoint,
)
from fl_app.kit.config import RunConfig
from fl_app.kit.keys import ConfigError
from fl_app.kit.results import run_directory
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


@pytest.fixture
def no_sigxfsz() -> Iterator[None]:
    """A write past the file size limit fails with an error instead of killing the process."""
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGXFSZ, previous)


@contextmanager
def files_limited_to(size: int) -> Iterator[None]:
    """This process may write no file past ``size`` bytes (the kernel answers ``EFBIG``, as a
    full disk answers ``ENOSPC``): a real failed write, without root."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.mark.usefixtures("no_sigxfsz")
def test_a_write_that_fails_midway_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_FILE
    small = Checkpoint(1, [np.zeros(10, dtype=np.float32)], {}, [{"round": 1}])
    save_checkpoint(path, small)
    big = Checkpoint(2, [np.ones(100_000, dtype=np.float32)], {}, [{"round": 1}, {"round": 2}])
    with files_limited_to(path.stat().st_size + 1000), pytest.raises(OSError, match="too large"):
        save_checkpoint(path, big)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]  # no half file left
    kept = load_checkpoint(path)
    assert kept.round == 1
    np.testing.assert_array_equal(kept.global_model[0], small.global_model[0])


@pytest.mark.slow
@pytest.mark.usefixtures("no_sigxfsz")
def test_a_checkpoint_the_disk_refuses_stops_the_run_in_one_line_and_it_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Round 2's checkpoint hits the limit: the run stops (exit 1, one line), round 1's
    checkpoint is whole, and ``--resume`` runs rounds 2 and 3 from it."""

    def save_or_fail(path: Path, checkpoint: Checkpoint) -> None:
        if checkpoint.round < 2:
            return save_checkpoint(path, checkpoint)
        with files_limited_to(path.stat().st_size):
            return save_checkpoint(path, checkpoint)

    flags = ["--num-server-rounds", "3", "--num-clients", "3", "--local-epochs", "1"]
    with monkeypatch.context() as patched:
        patched.setattr(rounds, "save_checkpoint", save_or_fail)
        assert run_simulation.main([*flags, "--output-dir", str(tmp_path), "--run-name", "r"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: [Errno 27] File too large"), error
    assert "\n" not in error
    assert load_checkpoint(tmp_path / "r" / CHECKPOINT_FILE).round == 1
    assert run_simulation.main(["--resume", str(tmp_path / "r")]) == 0
    assert "round   2/3" in capsys.readouterr().out
    assert [r["round"] for r in read_history(tmp_path / "r")["rounds"]] == [0, 1, 2, 3]


def test_resume_from_continues_in_its_folder_and_refuses_what_is_not_a_run(
    tmp_path: Path,
) -> None:
    """``resume-from`` (``flwr run --run-config``, and ``run_simulation.py --resume``) names a
    run folder: the run writes there, from its checkpoint; anything else is one line."""
    folder = tmp_path / "somewhere" / "run-7"
    cfg = RunConfig.from_mapping({"resume-from": str(folder), "output-dir": "elsewhere"})
    with pytest.raises(ConfigError, match=r"'resume-from' .* not a run folder") as refused:
        resumed(cfg)
    assert "\n" not in str(refused.value)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg.run_config))
    with pytest.raises(ConfigError, match=f"it has no {CHECKPOINT_FILE}"):
        resumed(cfg)
    save_checkpoint(folder / CHECKPOINT_FILE, Checkpoint(4, [np.ones(3)], {}, [{"round": 4}]))
    continued, checkpoint = resumed(cfg)
    assert run_directory(continued) == folder
    assert checkpoint is not None
    assert checkpoint.round == 4
    assert resumed(RunConfig.from_mapping({})) == (RunConfig.from_mapping({}), None)
