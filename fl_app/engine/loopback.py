"""The Ray a simulation starts listens on loopback only: on Linux Ray binds its services to
every interface, so anyone who can reach the machine could run code in it during a run."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from fl_app import engine

# Ray's single-machine mode, its default on macOS and Windows: the node's address is
# 127.0.0.1, so all of Ray's services listen on loopback only and no other node can join.
SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
TOUCHES = [engine.Touch("ray._private.ray_constants", "ENABLE_RAY_CLUSTER")]


def _single_machine() -> Callable[[], None]:
    """Single-machine mode for Ray's own processes (they inherit the variable) and for this
    driver's Ray (imported after the variable is set); return what turns it back."""
    saved = os.environ.get(SINGLE_MACHINE)
    os.environ[SINGLE_MACHINE] = "0"
    from ray._private import ray_constants

    enabled = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False

    def restore() -> None:
        ray_constants.ENABLE_RAY_CLUSTER = enabled
        os.environ.pop(SINGLE_MACHINE, None)
        if saved is not None:
            os.environ[SINGLE_MACHINE] = saved

    return restore


@contextmanager
def loopback_ray(*, joins_ray: bool = False, pollers: int = 1) -> Iterator[None]:
    """The seam's ``PATCH``: a Ray started by ``ray.init()`` inside this block listens on
    loopback only; a Ray it ``joins_ray`` (a cluster of the user's) is left alone."""
    with ExitStack() as undo:
        if not joins_ray:
            undo.callback(_single_machine())
        yield


def loopback_in_flowers_simulation() -> None:
    """Loopback for the Ray of ``flwr run``'s ``flwr-simulation`` process, which imports the
    ClientApp (and this) before its plain ``ray.init()``, a call no config can reach."""
    if Path(sys.argv[0]).name == "flwr-simulation" and not os.environ.get("RAY_ADDRESS"):
        if (why := engine.problem()) is None:
            _single_machine()  # for the rest of that process: it runs one simulation
        else:
            engine.LOG.warning("the simulation's Ray listens on Ray's defaults: %s", why)


PATCH = loopback_ray
