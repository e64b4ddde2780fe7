"""Run commands whose every descendant can be found and stopped by PID afterwards.

Each command gets an environment variable with a unique tag; every process it starts
(SuperLink, Ray's gcs_server and raylet, workers...) inherits it, even when detached in a
new session, so scanning ``/proc/*/environ`` finds them all.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any

TAG_VARIABLE = "FL_TEMPLATE_TEST_TAG"
ROOT = Path(__file__).resolve().parents[1]


def run_simulation_cli(output_dir: Path, *flags: str, timeout: float = 600) -> str:
    """Run ``run_simulation.py --output-dir OUTPUT_DIR FLAGS`` as a user would; return its stdout.

    Fails when the command fails or leaves a process (Ray, its workers) running.
    """
    done = run_python(["run_simulation.py", "--output-dir", str(output_dir), *flags], timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def simulate(output_dir: Path, *flags: str) -> dict[str, Any]:
    """Run run_simulation.py as run "run"; return its history.json, with the printed output,
    the run's folder and the sockets its processes listened on (:func:`listening`)."""
    sockets: set[tuple[str, int, str]] = set()
    done = run_python(
        ["run_simulation.py", "--output-dir", str(output_dir), "--run-name", "run", *flags],
        sockets=sockets,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    history = read_history(output_dir / "run")
    history["stdout"], history["stderr"] = done.stdout, done.stderr
    history["directory"] = str(output_dir / "run")
    history["sockets"] = sockets
    return history


# The runs that conftest's ``shared_runs`` makes once a session: each strategy on each API
# half, with this many clients (all of them train every round) and rounds, on Ray.
SHARED_CLIENTS, SHARED_ROUNDS = 10, 3

# The flags of run_simulation.py that run the clients on Ray, and in this process (the
# same results bit for bit, without a Ray start per run: the part fast-engine). Without
# that part every simulation runs on Ray.
ON_RAY: list[str] = []
IN_PROCESS: list[str] = []
ON_RAY += ["--backend", "ray"]  # part: fast-engine
IN_PROCESS += ["--backend", "inprocess"]  # part: fast-engine


def run_python(
    arguments: list[str],
    timeout: float = 600,
    cwd: Path = ROOT,
    sockets: set[tuple[str, int, str]] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGUMENTS`` in ``cwd`` (the project root), isolated; fail if it leaves a
    process. Modules in ``cwd`` come before the installed ones. ``sockets`` collects what
    the command's processes listen on while it runs (:func:`listening`)."""
    with isolated_env() as env:
        env["PYTHONPATH"] = str(cwd)
        watch: AbstractContextManager[set[tuple[str, int, str]]]
        watch = nullcontext(set()) if sockets is None else watching_sockets(env[TAG_VARIABLE])
        with watch as seen:
            done = subprocess.run(
                [sys.executable, *arguments],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        if sockets is not None:
            sockets.update(seen)
        assert leftovers(env[TAG_VARIABLE]) == []
    return done


def read_history(run_dir: Path) -> dict[str, Any]:
    """The ``history.json`` a run wrote in ``run_dir``."""
    history: dict[str, Any] = json.loads((run_dir / "history.json").read_text())
    return history


# The only entries of a history that differ between two runs of the same config: wall
# times, what an optional part says of where it ran, and where the run was written.
CIRCUMSTANCES = ["seconds", "elapsed"]
CIRCUMSTANCES += ["ray_nodes"]  # part: ray-cluster
PLACES = ("run-name", "output-dir", "resume-from")


def without_timings(history: dict[str, Any]) -> dict[str, Any]:
    """``history`` less its wall times, where it ran and its places: what two runs of one
    seed share bit for bit."""
    return {
        "config": {k: v for k, v in history["config"].items() if k not in PLACES},
        "rounds": [
            {k: v for k, v in r.items() if k not in CIRCUMSTANCES} for r in history["rounds"]
        ],
        "summary": {k: v for k, v in history["summary"].items() if k not in CIRCUMSTANCES},
    }


def flwr_run_local(
    env: dict[str, str], run_config: str, federation_config: str, timeout: float = 420
) -> subprocess.CompletedProcess[str]:
    """``flwr run . --stream`` on the local simulation federation, from the project root.

    ``flwr`` starts a detached local SuperLink on ports picked here and leaves it running:
    stop it afterwards (:func:`stop_tagged`)."""
    env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(loopback_port())
    env["FLWR_LOCAL_CONTROL_API_PORT"] = str(loopback_port())
    command = [
        str(Path(sys.executable).with_name("flwr")), "run", ".",
        "--run-config", run_config,
        "--federation-config", federation_config,
        "--stream",
    ]  # fmt: skip
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def listening(tag: str) -> set[tuple[str, int, str]]:
    """``(address, port, command)`` of every TCP socket a tagged process listens on, read
    from ``/proc`` (the socket inodes in each ``/proc/PID/fd``, matched in ``/proc/net``)."""
    owners: dict[str, str] = {}
    for pid in tagged_pids(tag):
        with suppress(OSError):
            command = Path(f"/proc/{pid}/comm").read_text().strip()
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:["):
                        owners[link[8:-1]] = command
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in owners:  # 0A: LISTEN
                address, port = fields[1].split(":")
                # The kernel prints each 32-bit word of the address in host byte order.
                words = bytes.fromhex(address)
                raw = b"".join(
                    struct.pack("=I", struct.unpack(">I", words[i : i + 4])[0])
                    for i in range(0, len(words), 4)
                )
                found.add((socket.inet_ntop(family, raw), int(port, 16), owners[fields[9]]))
    return found


def on_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback address (``::ffff:127.0.0.1``)."""
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


@contextmanager
def polling(look: Callable[[], None], every: float) -> Iterator[None]:
    """``look()`` every ``every`` seconds, in a thread, while the ``with`` block runs."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(every):
            look()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


@contextmanager
def watching_sockets(tag: str, every: float = 0.2) -> Iterator[set[tuple[str, int, str]]]:
    """The sockets the tagged processes listen on at any time during the ``with`` block."""
    seen: set[tuple[str, int, str]] = set()
    with polling(lambda: seen.update(listening(tag)), every):
        yield seen


def tagged_pids(tag: str) -> list[int]:
    """PIDs of live processes whose environment carries ``tag``."""
    needle = f"{TAG_VARIABLE}={tag}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return pids


def leftovers(tag: str, wait_seconds: float = 15.0) -> list[str]:
    """Command lines of tagged processes still alive after ``wait_seconds`` (shutdown is async)."""
    deadline = time.monotonic() + wait_seconds
    while _alive(tagged_pids(tag)) and time.monotonic() < deadline:
        time.sleep(0.2)
    described = []
    for pid in tagged_pids(tag):
        try:
            if _state(pid) != "Z":
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                described.append(f"{pid}: {cmdline.decode(errors='replace')[:200]}")
        except OSError:
            continue
    return described


def stop_tagged(tag: str, grace_seconds: float = 5.0) -> list[int]:
    """SIGTERM every tagged process, then SIGKILL what is left; return the PIDs found."""
    found = tagged_pids(tag)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in tagged_pids(tag):
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and _alive(tagged_pids(tag)):
            time.sleep(0.1)
    return found


def _alive(pids: list[int]) -> bool:
    """True if any of ``pids`` is a live (non-zombie) process."""
    for pid in pids:
        try:
            if _state(pid) != "Z":
                return True
        except OSError:
            continue
    return False


def _state(pid: int) -> str:
    """The one-letter state of ``pid`` ("Z": zombie, waiting for its parent to reap it)."""
    return stat_fields(pid)[0]


def stat_fields(pid: int | str) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (which may hold spaces and
    parentheses): [0] the state, [1] the parent's PID, [11] and [12] user and system CPU
    ticks. OSError once the process is gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def isolated_env() -> Iterator[dict[str, str]]:
    """An environment for Flower/Ray subprocesses: this venv's Flower commands first on PATH,
    private Flower and Ray folders, offline, no telemetry, no runtime dependency install (the
    SuperLink would `uv sync` the app: a CUDA torch) and a tag. On exit every process started
    with it is stopped, also when the test failed.
    """
    tag = uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="flwr") as home:
        env = os.environ | {
            TAG_VARIABLE: tag,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(Path(home) / "flwr"),
            "RAY_TMPDIR": str(Path(home) / "ray"),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        Path(env["RAY_TMPDIR"]).mkdir()
        try:
            yield env
        finally:
            stop_tagged(tag)
