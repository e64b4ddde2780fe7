"""A simulation's clients in this process: Flower's simulation engine without Ray (the
backend ``inprocess``, in the optional part ``fast-engine``).

Flower's engine hands every message to a ``Backend``, and the one it builds is always its
``RayBackend`` (``vce_api.start_vce`` imports it when it builds the backend; no setting
names another). Ray costs a start (Ray's processes, client actors importing torch and
Flower: seconds, docs/performance.md) and, per message, an actor call that serialises the message and its context both ways. :class:`InProcessBackend` runs the
ClientApp in the engine's own worker thread instead; everything else is Flower's engine
as it is: the LinkState, the grid, the nodes' contexts, message ids, error replies.

One client at a time, on one torch thread (as a Ray actor with one CPU runs it), so a
run's results are the ones it has on Ray, bit for bit. It suits light workloads, where
the engine's costs outweigh training, and debugging (a breakpoint in the ClientApp
stops the run); Ray runs clients in parallel, on several cores, GPUs or machines.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager

import torch
from flwr.app import Context, Message
from flwr.clientapp.client_app import ClientApp, ClientAppException, LoadClientAppError
from flwr.server.superlink.fleet.vce.backend import Backend, BackendConfig

from fl_app import engine

# What this replaces: the class start_vce imports when it builds the backend.
TOUCHES = [
    engine.Touch(
        "flwr.server.superlink.fleet.vce.backend.raybackend", "RayBackend", ("backend_config",)
    ),
    engine.Touch(
        "flwr.server.superlink.fleet.vce.vce_api",
        "start_vce",
        source="from .backend.raybackend import RayBackend",
    ),
]


class InProcessBackend(Backend):
    """Flower's ``Backend`` that runs each message's ClientApp here, one at a time."""

    def __init__(self, backend_config: BackendConfig) -> None:
        super().__init__(backend_config)
        self.app_fn: Callable[[], ClientApp] | None = None

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        self.app_fn = app_fn

    @property
    def num_workers(self) -> int:
        return 1

    def is_worker_idle(self) -> bool:
        return True

    def terminate(self) -> None:
        """Nothing to stop."""

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        """The ClientApp's reply, as Flower's Ray actor gives it (``ClientAppActor.run``):
        a failing app is a ``ClientAppException``, which the engine answers with an error
        reply.

        The app gets its own copy of the message, as an actor does (Ray pickles it): the
        LinkState's message may share records with other nodes' messages (SecAgg+'s
        workflow sends one ConfigRecord to all, and Flower's ``secaggplus_mod`` pops its
        ``stage`` key), so an app that changes what it received must not change theirs.
        """
        if self.app_fn is None:
            raise ValueError("build() the backend before it processes messages")
        own = pickle.loads(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self.app_fn()(message=own, context=context), context
        except LoadClientAppError:
            raise
        except Exception as ex:
            raise ClientAppException(str(ex)) from ex
        finally:
            torch.set_num_threads(threads)


@contextmanager
def in_process_clients() -> Iterator[None]:
    """Flower's simulation engine started inside this block builds an
    :class:`InProcessBackend` where it would build its ``RayBackend``."""
    from flwr.server.superlink.fleet.vce.backend import raybackend

    ray_backend = raybackend.RayBackend
    raybackend.RayBackend = InProcessBackend  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        raybackend.RayBackend = ray_backend  # type: ignore[misc]


BACKEND = in_process_clients  # this module's backend: the clients in this process
RAY = "ray"  # Flower's own backend: its Ray actors


def backends() -> dict[str, Callable[[], AbstractContextManager[None]] | None]:
    """Where the clients can run: Flower's Ray actors, and the ``BACKEND`` of each module of
    :mod:`fl_app.engine` by its name (adding a backend is adding such a module)."""
    found: dict[str, Callable[[], AbstractContextManager[None]] | None] = {RAY: None}
    for module in engine.modules():
        if hasattr(module, "BACKEND"):
            found[module.__name__.rpartition(".")[2]] = module.BACKEND
    return found


@contextmanager
def on_backend(patches: AbstractContextManager[bool], backend: str) -> Iterator[bool]:
    """The engine's ``patches`` (:func:`fl_app.engine.engine`), with the clients on ``backend``
    where they are in place."""
    with patches as patched, ExitStack() as stack:
        if patched and (put_in_place := backends()[backend]) is not None:
            stack.enter_context(put_in_place())
        yield patched
