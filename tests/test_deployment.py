"""A real deployment on loopback: SuperLink + SuperNodes, `flwr run`, TLS, authentication.

Each test starts its processes through scripts/local_deployment.py (the helper that
docs/deployment.md and the README use) and stops them by PID, also when it fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from fl_app.kit.checkpoint import CHECKPOINT_FILE, load_checkpoint
from scripts import local_deployment as ld
from tests.deployments import FAST, history_of, run_to_completion
from tests.halves import API_RUN_CONFIG
from tests.processes import (
    ROOT,
    TAG_VARIABLE,
    isolated_env,
    read_history,
    tagged_pids,
    without_timings,
)

pytestmark = pytest.mark.slow


@pytest.fixture(params=list(API_RUN_CONFIG))
def api(request: pytest.FixtureRequest) -> str:
    """Each deployment test runs on each Flower API half this copy has."""
    return API_RUN_CONFIG[request.param]


def test_the_copy_these_tests_submit_packs_into_the_projects_own_fab(
    app_copy: Path, tmp_path: Path
) -> None:
    """`flwr run` from the project root and from the copy send the same bytes."""
    fabs = []
    with isolated_env() as env:
        for app in (ROOT, app_copy):
            folder = tmp_path / str(len(fabs))
            folder.mkdir()
            done = subprocess.run(
                [str(ld.BIN / "flwr"), "build", "--app", str(app)],
                cwd=folder, env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
            (fab,) = folder.glob("*.fab")
            fabs.append(fab.read_bytes())
    assert fabs[0] == fabs[1]


def kill_mid_run(deployment: ld.Deployment, env: dict[str, str], run_config: str, app: Path) -> str:
    """Submit a run, kill SuperNode 2 once it has its training message of round 2 (of this
    run: its log so far is left out), and wait for the run to end."""
    log = Path(deployment.directory) / "logs" / "supernode_2.log"
    before = len(log.read_text())
    run_id = ld.submit(deployment, app, run_config, env=env)
    deadline = time.monotonic() + 300
    checked = time.monotonic()
    while log.read_text()[before:].count("Receiving: train message") < 2:
        assert time.monotonic() < deadline, "SuperNode 2 never received round 2's train message"
        if time.monotonic() - checked > 5:  # a run that already ended will never send one
            checked = time.monotonic()
            runs = ld.flwr(ld.flower_env(env), "list", deployment.connection, "--run-id", run_id)
            assert not runs["runs"][0]["status"].startswith("finished"), runs
        time.sleep(0.2)
    os.killpg(deployment.supernode_pids[2], signal.SIGKILL)
    return ld.wait_for_run(deployment, run_id, env=env, timeout=400)


def test_an_insecure_deployment_stops_when_frozen_trains_and_outlives_a_killed_supernode(
    tmp_path: Path, env: dict[str, str], api: str, app_copy: Path
) -> None:
    """Two runs on one deployment of 3 SuperNodes: a run that cannot aggregate anything fails
    instead of finishing with a frozen model; a project strategy trains, and a SuperNode killed
    mid-run is a failure of its round, not a hang."""
    deployment = ld.up(tmp_path / "deployment", 3, env=env)
    assert deployment.isolation == "warm"  # and a warm SuperExec beside each SuperNode
    assert len(deployment.superexec_pids) == 3
    try:
        frozen = run_to_completion(
            deployment,
            env,
            f"num-server-rounds=3 strategy='quality' quality-metric='val_f1' "
            f"max-empty-rounds=1 run-name='frozen' {FAST} {api}",
            app_copy,
        )
        status = kill_mid_run(
            deployment,
            env,
            f"num-server-rounds=2 strategy='hybrid' round-timeout=30.0 run-name='killed' "
            f"{FAST} {api}",
            app_copy,
        )
    finally:
        ld.down(tmp_path / "deployment")
    assert status == "finished:completed"
    rounds = history_of(deployment, "killed")["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert (rounds[1]["accepted"], rounds[1]["failures"]) == (3, 0)  # every SuperNode's update
    # The SuperNodes told the server their partition ids (from --node-config).
    assert rounds[1]["sampled_partitions"] == [0, 1, 2]
    # Round 2 waited at most round-timeout for the killed node, counted it, and finished.
    assert (rounds[2]["sampled"], rounds[2]["failures"], rounds[2]["accepted"]) == (3, 1, 2)
    assert rounds[2]["seconds"] < 30 + 20
    assert rounds[-1]["central_accuracy"] > rounds[0]["central_accuracy"] + 0.3

    assert frozen == "finished:failed"
    stopped = history_of(deployment, "frozen")["rounds"]
    assert [r["round"] for r in stopped] == [0, 1]
    assert stopped[1]["rejected"] == 3
    assert "quality metric 'val_f1' missing" in stopped[1]["problem"]


def crash_the_superlink(deployment: ld.Deployment, env: dict[str, str]) -> None:
    """SIGKILL the SuperLink's process group and the ServerApp it ran, as a crash of its
    machine would (no process has a chance to clean up)."""
    os.killpg(deployment.superlink_pid, signal.SIGKILL)
    for pid in tagged_pids(env[TAG_VARIABLE]):
        with contextlib.suppress(OSError):
            if b"serverapp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("half", list(API_RUN_CONFIG))
def test_a_run_goes_on_after_a_superlink_crash_as_if_never_stopped(
    tmp_path: Path, env: dict[str, str], half: str, app_copy: Path
) -> None:
    """The SuperLink and its ServerApp are killed after round 2 of 3 and the SuperLink started
    again; `flwr run` with `resume-from` loses no finished round and ends with the rounds and
    the model of an uninterrupted run. The Message API's SuperLink keeps its state in its
    state.db: restarted, it marks the run it lost failed. The legacy API's keeps it in memory
    (the default): restarted, it knows no such run. The run folder serves both."""
    database = half == "message"
    deployment = ld.up(tmp_path / "deployment", 3, env=env, database=database)
    outputs = Path(deployment.directory) / "outputs"
    checkpoint = outputs / "broken" / CHECKPOINT_FILE
    config = f"num-server-rounds=3 {FAST} {API_RUN_CONFIG[half]}"
    try:
        whole = run_to_completion(deployment, env, f"{config} run-name='whole'", app_copy)
        broken = ld.submit(deployment, app_copy, f"{config} run-name='broken'", env=env)
        deadline = time.monotonic() + 300
        while not checkpoint.is_file() or load_checkpoint(checkpoint).round < 2:
            assert time.monotonic() < deadline, "the run never finished round 2"
            time.sleep(0.05)
        crash_the_superlink(deployment, env)
        killed_at = load_checkpoint(checkpoint).round
        ld.restart_superlink(deployment, env)
        resume = f"{config} resume-from='{checkpoint.parent}'"
        resumed = run_to_completion(deployment, env, resume, app_copy)
        if database:  # its restart failed it
            lost = ld.wait_for_run(deployment, broken, env=env, timeout=120)
        else:
            with pytest.raises(ld.DeploymentError) as unknown:
                ld.flwr(ld.flower_env(env), "list", deployment.connection, "--run-id", broken)
            lost = str(unknown.value)
    finally:
        ld.down(tmp_path / "deployment")
    assert (whole, resumed) == ("finished:completed", "finished:completed")
    if database:
        assert lost == "finished:failed"
    else:
        assert "not found" in lost.lower(), lost
    assert killed_at == 2  # at most the round in flight is lost
    history = without_timings(read_history(outputs / "broken"))
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2, 3]
    assert history == without_timings(read_history(outputs / "whole"))
    want, got = (torch.load(outputs / name / "final_model.pt") for name in ("whole", "broken"))
    assert all(torch.equal(got[key], tensor) for key, tensor in want.items())


def test_flowers_own_subprocess_isolation_runs_too(
    tmp_path: Path, env: dict[str, str], app_copy: Path
) -> None:
    # The other tests run the SuperNodes warm (the scripts' default here).
    deployment = ld.up(tmp_path / "deployment", 2, env=env, isolation="subprocess")
    try:
        config = f"num-server-rounds=1 run-name='cold' {FAST}"
        status = run_to_completion(deployment, env, config, app_copy)
    finally:
        ld.down(tmp_path / "deployment")
    assert deployment.superexec_pids == []
    assert status == "finished:completed"
    assert [r["accepted"] for r in history_of(deployment, "cold")["rounds"][1:]] == [2]


def refused_supernode(
    deployment: ld.Deployment, env: dict[str, str], name: str, *extra: str
) -> tuple[int, str]:
    """Start a SuperNode that is expected to be refused; return its exit code and log."""
    command = [
        str(ld.BIN / "flower-supernode"),
        "--superlink", deployment.address,
        "--port", str(ld.free_port()),
        # A refused connection is retried (forever by default): bound the retries.
        "--max-retries", "2",
        "--max-wait-time", "20",
        "--node-config", "partition-id=0 num-partitions=2",
        *extra,
    ]  # fmt: skip
    log = Path(deployment.directory) / "logs" / f"{name}.log"
    # Its own session and a log file, not a pipe: the SuperNode's helper child process
    # would hold a pipe open after the SuperNode itself exits.
    process = ld.spawn(command, log, ld.flower_env(env), Path(deployment.directory))
    try:
        code = process.wait(timeout=120)
    finally:
        ld.stop_process_group(process.pid)
    return code, log.read_text()


def test_tls_and_supernode_authentication(
    tmp_path: Path, env: dict[str, str], app_copy: Path
) -> None:
    # One API half: TLS and authentication are the transport's, the same under both.
    api = API_RUN_CONFIG["message"]
    directory = tmp_path / "deployment"
    deployment = ld.up(directory, 2, auth=True, env=env)
    try:
        assert deployment.tls
        # A SuperNode that does not trust the SuperLink's CA is refused at the handshake.
        code, log = refused_supernode(
            deployment,
            env,
            "no_ca",
            "--auth-supernode-private-key",
            str(directory / "keys" / "supernode_0"),
        )
        assert code != 0
        assert "CERTIFICATE_VERIFY_FAILED" in log
        # A SuperNode with the CA but an unregistered key is refused by authentication.
        ld.make_node_key(directory / "keys" / "intruder")
        code, log = refused_supernode(
            deployment, env, "intruder",
            "--root-certificates", str(deployment.certificates / "ca.crt"),
            "--auth-supernode-private-key", str(directory / "keys" / "intruder"),
        )  # fmt: skip
        assert code != 0
        assert "Failed to activate SuperNode" in log
        # The two registered SuperNodes train over TLS.
        config = f"num-server-rounds=2 run-name='tls' {FAST} {api}"
        status = run_to_completion(deployment, env, config, app_copy)
    finally:
        ld.down(directory)
    assert status == "finished:completed"
    rounds = history_of(deployment, "tls")["rounds"]
    assert [r["accepted"] for r in rounds[1:]] == [2, 2]
    assert rounds[-1]["central_accuracy"] > rounds[0]["central_accuracy"] + 0.3
