"""One Ray for all the runs of an invocation: a private local head the runs connect to.

Flower's simulation engine starts Ray when no Ray is running and shuts it down after
each run (``RayBackend.terminate`` calls ``ray.shutdown()``), about 4.5 s per run here
(3.4 s to start, 1.1 s to stop). Connected to a running cluster, the same calls only
connect and disconnect (0.02 s and 0.25 s). So a comparison starts one head for all of
its runs and stops it at the end, by its PID: the head is the leader of its own process
group, and stopping it stops every Ray process it started. Should this process die
first, the kernel sends the head SIGTERM (Linux's parent-death signal), so no Ray
outlives the invocation.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

READY_LINE = "Ray runtime started"
START_TIMEOUT = 120.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def local_head(num_cpus: int | None = None, num_gpus: int | None = None) -> Iterator[str]:
    """A Ray head on 127.0.0.1 with this machine's CPUs (and GPUs), for the duration of
    the ``with`` block; yields its address (``ray.init(address=...)`` connects to it)."""
    port = _free_port()
    # Its own temp dir: `ray start` leaves the head's address in <temp-dir>/ray_current_cluster,
    # which every later plain ray.init() on this machine would try to join (in /tmp/ray).
    temp_dir = tempfile.mkdtemp(prefix="fl-ray-")
    command = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        f"--num-cpus={num_cpus if num_cpus is not None else os.cpu_count() or 1}",
    ]
    if num_gpus is not None:
        command.append(f"--num-gpus={num_gpus}")
    with tempfile.TemporaryFile("w+") as log:
        head = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # before any thread of ours is started
        )
        try:
            _wait_until_ready(head, log)
            yield f"127.0.0.1:{port}"
        finally:
            _stop(head)
            shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_until_ready(head: subprocess.Popen[bytes], log: IO[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        log.seek(0)
        text = log.read()
        if READY_LINE in text:
            return
        if head.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"could not start a local Ray head: {text.strip()[-2000:]}")
        time.sleep(0.1)


def _stop(head: subprocess.Popen[bytes]) -> None:
    """SIGTERM the head (it stops what it started), then its whole group, by PID."""
    with suppress(ProcessLookupError):
        head.terminate()
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        head.kill()
        head.wait()
    with suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)  # anything left in its process group
