"""The Ray a simulation starts listens on loopback only.

On Linux Ray binds its services to every interface (``*:port``), so anyone who can reach
the machine could connect and run code in it while a simulation runs. Every run that
starts its own Ray goes through :data:`PATCH` (:func:`fl_app.engine.engine`) or, under
``flwr run``, :func:`loopback_in_flowers_simulation`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from fl_app import engine

# Ray's single-machine mode, its default on macOS and Windows (``ray._private.services.
# get_node_ip_address``): the node's address is 127.0.0.1, so the GCS, the raylet, the
# workers and the runtime-env agent all listen on loopback only, and no other node can join.
SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
TOUCHES = [engine.Touch("ray._private.ray_constants", "ENABLE_RAY_CLUSTER")]


def _single_machine() -> Callable[[], None]:
    """Turn Ray's single-machine mode on, for Ray's own processes (they inherit the
    variable) and for this driver's already-imported Ray; return what turns it back."""
    saved = os.environ.get(SINGLE_MACHINE)
    os.environ[SINGLE_MACHINE] = "0"
    from ray._private import ray_constants

    enabled = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False

    def restore() -> None:
        ray_constants.ENABLE_RAY_CLUSTER = enabled
        if saved is None:
            os.environ.pop(SINGLE_MACHINE, None)
        else:
            os.environ[SINGLE_MACHINE] = saved

    return restore


@contextmanager
def loopback_ray() -> Iterator[None]:
    """A Ray started by ``ray.init()`` inside this block listens on loopback only."""
    restore = _single_machine()
    try:
        yield
    finally:
        restore()


def loopback_in_flowers_simulation() -> None:
    """``flwr run .`` on the local simulation federation: the Ray of Flower's
    ``flwr-simulation`` process listens on loopback only, as :func:`loopback_ray` makes it.

    That process loads the ClientApp (importing this module) before it starts Ray with a
    plain ``ray.init()`` (in ``vce_api.start_vce``, after loading the app), and nothing in
    a federation's config can reach that call. Anywhere else, when ``RAY_ADDRESS`` names a
    cluster to join, or when the seam does not fit the installed Ray, this does nothing.
    """
    if Path(sys.argv[0]).name != "flwr-simulation" or os.environ.get("RAY_ADDRESS"):
        return
    why = engine.problem()
    if why is None:
        _single_machine()  # for the rest of that process: it runs one simulation
    else:
        engine.LOG.warning("the simulation's Ray listens on Ray's defaults: %s", why)


def on_loopback(*, joins_ray: bool, pollers: int) -> Any:
    """Loopback for the Ray that Flower starts (a joined cluster is the user's)."""
    return nullcontext() if joins_ray else loopback_ray()


PATCH = on_loopback
