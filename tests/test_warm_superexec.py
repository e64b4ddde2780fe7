"""The warm SuperExec: what its parent keeps imported, how tasks reach it, its patches of Flower
(fl_app/engine/warm.py: checked alone, each takes effect and is undone), and Flower's plain
SuperExec where they do not fit.

End to end it runs in every deployment test (``scripts/local_deployment.py`` starts it
beside each SuperNode wherever a process can fork); the slow tests here watch which process
starts each ClientApp.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flwr.supercore.constant import PULL_INITIAL_BACKOFF, TaskType
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError
from flwr.supercore.superexec.executor import subprocess_executor
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
from flwr.supercore.superexec.executor.types import ExecutionSpec

from fl_app import engine
from fl_app.engine import warm
from scripts import local_deployment as ld
from scripts import warm_superexec
from tests.processes import (
    ROOT,
    TAG_VARIABLE,
    isolated_env,
    leftovers,
    polling,
    read_history,
    stat_fields,
)

# In a fresh interpreter (warm_up changes sys.modules): warm up, then load the ClientApp
# the way Flower's flwr-clientapp does, from an installed FAB that differs from the project.
PROBE = """
import json, sys
from pathlib import Path
sys.path.insert(0, "scripts")
import warm_superexec as w
dropped = w.warm_up(w.default_app(), w.ROOT)
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.object_ref import load_app
app = load_app("fl_app.client_app:app", ImportError, Path(sys.argv[1]))
module = sys.modules["fl_app.client_app"]
with w.warm.retry_sooner(w.FIRST_RETRY):  # as the warm parent serves its tasks
    first_retry = inflatable_utils.pull_objects.__kwdefaults__["initial_backoff"]
print(json.dumps({
    "dropped": dropped,
    "kept": [m for m in ("torch", "torch._dynamo", "flwr.supernode.cli.flwr_clientapp")
             if m in sys.modules],
    "loaded_from": module.__file__,
    "marker": getattr(module, "FAB_MARKER", None),
    "first_retry": first_retry,
}))
"""


def test_the_warm_parent_keeps_the_libraries_and_each_task_loads_the_fabs_app(
    tmp_path: Path,
) -> None:
    fab = tmp_path / "fab"
    for package in ("fl_app", "strategies"):
        shutil.copytree(ROOT / package, fab / package)
    client = fab / "fl_app" / "client_app.py"
    client.write_text(client.read_text() + "\nFAB_MARKER = 'resubmitted'\n")
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(fab)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    # The project's own modules are forgotten; Flower, torch and torch._dynamo stay warm.
    assert {"fl_app.client_app", "fl_app.task", "strategies.core"} <= set(seen["dropped"])
    assert not any(name.split(".")[0] in ("torch", "flwr") for name in seen["dropped"])
    assert seen["kept"] == ["torch", "torch._dynamo", "flwr.supernode.cli.flwr_clientapp"]
    # A task imports the app the SuperNode installed, not the copy the parent warmed up on.
    assert Path(seen["loaded_from"]).is_relative_to(fab)
    assert seen["marker"] == "resubmitted"
    assert seen["first_retry"] == warm_superexec.FIRST_RETRY


class RealSubprocess:
    DEVNULL = subprocess.DEVNULL

    def __init__(self) -> None:
        self.started: list[list[str]] = []

    def Popen(self, args: list[str], stdout: Any = None, stderr: Any = None) -> str:  # noqa: N802
        self.started.append(args)
        return "real process"


def test_clientapp_commands_go_to_the_warm_parent_and_others_start_as_before() -> None:
    requests, real = io.StringIO(), RealSubprocess()
    popen = warm.WarmPopen(requests, real)
    task = ["flwr-clientapp", "--runtime-api-address", "127.0.0.1:9094", "--token", "t"]
    popen.Popen(task, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    popen.Popen([*task, "--insecure"])
    assert popen.Popen(["flwr-serverapp", "--token", "t"]) == "real process"
    sent = [json.loads(line) for line in requests.getvalue().splitlines()]
    assert sent == [
        {"arguments": task[1:], "quiet": True},
        {"arguments": [*task[1:], "--insecure"], "quiet": False},
    ]
    assert real.started == [["flwr-serverapp", "--token", "t"]]


# ---- the patches: fl_app/engine/warm.py --------------------------------------------------


def test_the_warm_patches_fit_the_installed_flower_and_are_no_simulations() -> None:
    assert all(touch.problem() is None for touch in warm.TOUCHES)
    assert warm.fits()
    assert warm in engine.modules()
    assert warm not in engine.simulation()  # engine.engine() neither checks nor applies them


def clientapp_task(suppress_output: bool) -> ExecutionSpec:
    return ExecutionSpec(
        task_type=TaskType.CLIENT_APP,
        runtime_api_address="127.0.0.1:9094",
        token="a-token",
        insecure=True,
        root_certificates_path=None,
        runtime_dependency_install=False,
        parent_pid=None,
        suppress_output=suppress_output,
        task_id=1,
    )


def test_flowers_executor_hands_its_clientapp_tasks_to_the_warm_parent_inside_the_block() -> None:
    """Flower's own ``SubprocessExecutor.launch`` (as flower-superexec calls it): each
    ``flwr-clientapp`` it would start is a request line instead."""
    requests = io.StringIO()
    with warm.tasks_through(requests):
        SubprocessExecutor().launch(clientapp_task(suppress_output=True))
        SubprocessExecutor().launch(clientapp_task(suppress_output=False))
    assert subprocess_executor.subprocess is subprocess
    sent = [json.loads(line) for line in requests.getvalue().splitlines()]
    arguments = ["--runtime-api-address", "127.0.0.1:9094", "--token", "a-token", "--insecure"]
    assert sent == [
        {"arguments": arguments, "quiet": True},
        {"arguments": arguments, "quiet": False},
    ]


def pull_after_one_miss() -> float:
    """Seconds Flower's ``pull_objects`` takes for an object that is not there at first."""
    missed: list[str] = []

    def pull(object_id: str) -> bytes:
        if not missed:
            missed.append(object_id)
            raise ObjectUnavailableError(object_id)
        return b"content"

    start = time.monotonic()
    assert inflatable_utils.pull_objects(["an-object"], pull) == {"an-object": b"content"}
    return time.monotonic() - start


def test_a_warm_clientapp_retries_a_missing_object_sooner_inside_the_block() -> None:
    pulls = (inflatable_utils.pull_and_inflate_object_from_tree, inflatable_utils.pull_objects)
    with warm.retry_sooner(0.05):
        assert [pull.__kwdefaults__["initial_backoff"] for pull in pulls] == [0.05, 0.05]
        assert pull_after_one_miss() < 0.5  # Flower's first retry waits 1 s ± 20 %
    assert [pull.__kwdefaults__["initial_backoff"] for pull in pulls] == [PULL_INITIAL_BACKOFF] * 2


class FlowersSuperExec:
    """flower-superexec, as the script calls it: what it saw when it started."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    def __call__(self) -> None:
        self.seen = {
            "argv": list(sys.argv),
            "subprocess": subprocess_executor.subprocess,
        }
        # A task: in the warm SuperExec, a request line to the warm parent.
        SubprocessExecutor().launch(clientapp_task(suppress_output=True))


@pytest.fixture
def superexec(monkeypatch: pytest.MonkeyPatch) -> FlowersSuperExec:
    started = FlowersSuperExec()
    cli = importlib.import_module("flwr.supercore.cli.flower_superexec")  # the package's
    monkeypatch.setattr(cli, "flower_superexec", started)  # name is the function's
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    return started


ARGUMENTS = ["--runtime-api-address", "127.0.0.1:9094", "--insecure", "--parent-pid", "1"]


def test_the_warm_superexec_forks_its_parent_and_sends_it_flowers_tasks(
    superexec: FlowersSuperExec, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``main`` on the tested Flower, up to the fork (the warm parent is not started here):
    Flower's flower-superexec runs with the patch in place, and it is undone after."""
    pipes: list[int] = []
    real_pipe = os.pipe

    def pipe() -> tuple[int, int]:
        read_end, write_end = real_pipe()
        pipes.append(os.dup(read_end))  # the warm parent's end, read here
        return read_end, write_end

    monkeypatch.setattr(os, "pipe", pipe)
    monkeypatch.setattr(os, "fork", lambda: 4321)  # this is the SuperExec, not the fork
    with caplog.at_level(logging.WARNING, logger="flwr.engine"):
        warm_superexec.main([*ARGUMENTS, "--app", "fl_app.client_app"])
    assert caplog.records == []
    assert superexec.seen["argv"] == ["flower-superexec", *ARGUMENTS]
    assert isinstance(superexec.seen["subprocess"], warm.WarmPopen)
    assert subprocess_executor.subprocess is subprocess
    with os.fdopen(pipes[0]) as requests:
        assert json.loads(requests.readline())["quiet"] is True


def test_with_a_shared_warm_parent_the_tasks_go_to_its_socket_and_nothing_forks(
    superexec: FlowersSuperExec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_fork() -> int:
        raise AssertionError("a SuperExec with --warm-parent forks no parent of its own")

    monkeypatch.setattr(os, "fork", no_fork)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "warm.sock"))
        listener.listen()
        warm_superexec.main([*ARGUMENTS, "--warm-parent", str(tmp_path / "warm.sock")])
        connection, _ = listener.accept()
        with connection, connection.makefile() as requests:
            assert json.loads(requests.readline())["quiet"] is True
    assert superexec.seen["argv"] == ["flower-superexec", *ARGUMENTS]


def test_a_shared_warm_parent_reads_whole_requests_from_every_superexec(tmp_path: Path) -> None:
    """Lines from several connections, split anywhere, each come out whole; a SuperExec that
    goes away leaves the others served."""
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "warm.sock"))
        listener.listen()
        requests = iter(warm_superexec.Requests(listener))
        first, second = (socket.socket(socket.AF_UNIX) for _ in range(2))
        for connection in (first, second):
            connection.connect(str(tmp_path / "warm.sock"))
        first.sendall(b'{"arguments": ["a"], "quiet": true}\n{"argum')
        assert next(requests) == {"arguments": ["a"], "quiet": True}
        second.sendall(b'{"arguments": ["b"], "quiet": false}\n')
        assert next(requests) == {"arguments": ["b"], "quiet": False}
        second.close()
        first.sendall(b'ents": ["c"], "quiet": true}\n')
        assert next(requests) == {"arguments": ["c"], "quiet": True}
        first.close()


@pytest.mark.parametrize("change", ["untested flower", "moved object"])
def test_where_the_patches_do_not_fit_it_is_flowers_plain_superexec_after_one_warning(
    change: str,
    superexec: FlowersSuperExec,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if change == "untested flower":
        monkeypatch.setitem(engine.TESTED, "flwr", "0.0.1")
    else:  # a Flower whose executor no longer starts tasks as the patch expects
        launch = ("self", "spec", "env")
        moved = engine.Touch(
            f"{warm.EXECUTOR}.subprocess_executor", "SubprocessExecutor.launch", launch
        )
        monkeypatch.setattr(warm, "TOUCHES", [*warm.TOUCHES, moved])
    popen = RealSubprocess()
    monkeypatch.setattr(subprocess_executor, "subprocess", popen)

    def no_fork() -> int:
        raise AssertionError("Flower's plain SuperExec forks no warm parent")

    monkeypatch.setattr(os, "fork", no_fork)
    with caplog.at_level(logging.WARNING, logger="flwr.engine"):
        warm_superexec.main(ARGUMENTS)
    (record,) = caplog.records
    assert record.message.startswith("running Flower's plain SuperExec (a fresh flwr-clientapp")
    assert superexec.seen["argv"] == ["flower-superexec", *ARGUMENTS]
    assert superexec.seen["subprocess"] is popen  # Flower's own: the task is a new process
    assert popen.started[0][0] == "flwr-clientapp"
    if change == "moved object":  # the simulation's patches do not depend on these
        assert engine.problem() is None
        with engine.engine() as patched:
            assert patched


# ---- end to end: a SuperLink and SuperNodes on loopback -----------------------------------

ONE_ROUND = "num-server-rounds=1 fraction-evaluate=0.0 min-evaluate-clients=0"


def children(parents: list[int]) -> dict[int, tuple[int, str]]:
    """``{pid: (parent, command line)}`` of the live children of ``parents``."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = stat_fields(entry.name)
            if stat[0] != "Z" and int(stat[1]) in parents:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found[int(entry.name)] = (int(stat[1]), cmdline.strip())
        except (OSError, IndexError):  # gone, or no process
            continue
    return found


@contextmanager
def watching_children(parents: list[int]) -> Iterator[dict[int, tuple[int, str]]]:
    """Every child ``parents`` have at any time during the ``with`` block."""
    seen: dict[int, tuple[int, str]] = {}
    with polling(lambda: seen.update(children(parents)), 0.1):
        yield seen


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


@pytest.mark.slow
def test_each_clientapp_is_a_fork_of_the_warm_parent(tmp_path: Path, app_copy: Path) -> None:
    """A deployment of two SuperNodes, each beside the script, trains a round: every ClientApp
    process is a fork of the one warm parent they share (it keeps its command line), none
    starts ``flwr-clientapp``, and no SuperExec has a child. (On another Flower it is Flower's
    plain SuperExec: the quick test above; that one trains in a deployment in
    tests/test_deployment.py.)"""
    directory = tmp_path / "deployment"
    with isolated_env() as env:
        deployment = ld.up(directory, 2, env=env, isolation="warm")
        try:
            parent, superexecs = deployment.warm_parent_pid, deployment.superexec_pids
            with watching_children([parent, *superexecs]) as seen:
                run_id = ld.submit(deployment, app_copy, f"run-name='warm' {ONE_ROUND}", env=env)
                status = ld.wait_for_run(deployment, run_id, env=env, timeout=400)
            ours = command_line(parent)
            theirs = {command_line(pid) for pid in superexecs}
        finally:
            ld.down(directory)
        assert leftovers(env[TAG_VARIABLE]) == []
    assert status == "finished:completed"
    rounds = read_history(directory / "outputs" / "warm")["rounds"]
    assert [r["accepted"] for r in rounds[1:]] == [2]
    # flwr-clientapp started as a new process (a fork of the warm parent keeps its command line)
    started = [pid for pid, (_, cmdline) in seen.items() if "bin/flwr-clientapp" in cmdline]
    forks = [pid for pid, (of, cmdline) in seen.items() if of == parent and cmdline == ours]
    logs = [(directory / "logs" / f"supernode_{i}-superexec.log").read_text() for i in range(2)]
    assert started == []
    assert len(forks) >= 2  # a training task on each SuperNode, at least
    # A SuperExec starts no process but Flower's telemetry helpers (its start event runs
    # `uname -p` and `file -b`, each seen with the SuperExec's command line until it execs).
    helper = ("uname -p", "file -b ", *theirs)
    others = {pid: seen[pid] for pid in seen if seen[pid][0] != parent}
    assert {pid: s for pid, s in others.items() if not s[1].startswith(helper)} == {}
    assert [log.count("running Flower's plain SuperExec") for log in logs] == [0, 0]
