"""One Ray for all the runs of an invocation: a private local head the runs connect to.

Flower's simulation engine starts Ray when no Ray is running and shuts it down after
each run (``RayBackend.terminate`` calls ``ray.shutdown()``): seconds per run
(docs/performance.md). Connected to a running cluster, the same calls only connect and
disconnect, in a fraction of that. So a comparison starts one head for all of
its runs and stops it at the end, by its PID: the head is the leader of its own process
group, and stopping it stops every Ray process it started. Should this process die
first, the kernel sends the head SIGTERM (Linux's parent-death signal), so no Ray
outlives the invocation.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import IO, Any

from fl_app.kit.extensions import Extension
from fl_app.kit.keys import ConfigError
from fl_app.kit.local import free_port
from fl_app.kit.simulation import Simulation

READY_LINE = "Ray runtime started"
START_TIMEOUT = 120.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextmanager
def ray_node(
    join: str | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """A Ray node on this machine for the duration of the ``with`` block: a head (``join``
    None, with this machine's CPUs unless ``num_cpus``) or a worker node joining the
    cluster at ``join``; yields the cluster's address (``ray.init(address=...)``)."""
    # Its own temp dir: `ray start` leaves the head's address in <temp-dir>/ray_current_cluster,
    # which every later plain ray.init() on this machine would try to join (in /tmp/ray).
    temp_dir = tempfile.mkdtemp(prefix="fl-ray-")
    address = join or f"127.0.0.1:{free_port()}"
    command = [
        sys.executable,  # the `ray` command of this environment, wherever its scripts are
        "-m",
        "ray.scripts.scripts",
        "start",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--disable-usage-stats",
        f"--num-cpus={num_cpus if num_cpus is not None else os.cpu_count() or 1:g}",
    ]
    if join is None:
        port = address.rsplit(":", 1)[1]
        command += [
            "--head",
            f"--port={port}",
            "--include-dashboard=false",
            f"--temp-dir={temp_dir}",
        ]
    else:
        command.append(f"--address={join}")
    if num_gpus is not None:
        command.append(f"--num-gpus={num_gpus:g}")
    with tempfile.TemporaryFile("w+") as log:
        node = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            start_new_session=True,
            preexec_fn=_die_with_parent,  # before any thread of ours is started
        )
        try:
            _wait_until_ready(node, log)
            yield address
        finally:
            _stop(node)
            shutil.rmtree(temp_dir, ignore_errors=True)


def check_cluster(address: str, num_cpus: float, num_gpus: float) -> str:
    """One line describing the running Ray cluster at ``address``; a ConfigError (one line)
    when nothing answers there or when not even one client fits on it."""
    flag = f"--ray-address {address!r}"
    if "://" not in address and address != "auto":
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"{flag} is not allowed: no Ray cluster answers there ({err}); "
                "expected HOST:PORT of a running head (`ray start --head` prints it)"
            ) from err
    import ray

    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        resources = ray.cluster_resources()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ConfigError(f"{flag} is not allowed: cannot join that Ray cluster ({err})") from err
    finally:
        ray.shutdown()
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    have = f"{len(nodes)} nodes with {cpus:g} CPUs and {gpus:g} GPUs in all"
    # A client runs in one actor, on one node: some node must hold a whole client.
    if not any(
        n["Resources"].get("CPU", 0) >= num_cpus and n["Resources"].get("GPU", 0) >= num_gpus
        for n in nodes
    ):
        raise ConfigError(
            f"{flag} is not allowed here: each client needs --num-cpus {num_cpus:g} "
            f"--num-gpus {num_gpus:g} on one node, and no node of the cluster ({have}) has "
            "that, so none could run"
        )
    return f"Ray cluster at {address}: {have}"


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


class ClusterFlags(Extension):
    """``--ray-address``: the runs join that Ray cluster; before any run, one line about it, or
    one line saying why the runs cannot use it."""

    def add_flags(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--ray-address",
            default="",
            help="run the clients on this running Ray cluster (e.g. 10.0.0.5:6379) instead of "
            "starting Ray; the cluster is left running",
        )

    def check(self, args: argparse.Namespace, cfg: Any, simulation: Simulation) -> Simulation:
        return dataclasses.replace(simulation, ray_address=args.ray_address)

    def before(self, simulation: Simulation) -> None:
        if simulation.ray_address:
            print(check_cluster(simulation.ray_address, simulation.num_cpus, simulation.num_gpus))
