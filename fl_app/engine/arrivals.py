"""A simulation's engine and grid wait for the next message instead of looking every few ms
(a patch of :func:`fl_app.engine.engine`; the optional part ``fast-engine``).

In a simulation, Flower's grid and its engine meet in one in-memory LinkState
(``InMemoryLinkState``): the grid stores a round's messages (``store_message_ins``) and
looks for the replies; the engine's ``vce_api.add_messages_to_queue`` passes over every
node for messages and then waits 0.1 s, and its ``put_message_into_state`` stores the
replies (``store_message_res``). Looking costs a lock and a pass, waiting costs
latency: at a short interval, the looks of the legacy half's one thread per client and the
engine's passes take the CPU from training; at Flower's 0.1 s, a round waits 50 ms twice.

:func:`arrivals` counts what the LinkState stores and wakes whoever waits for it:
:meth:`Arrivals.wait` returns when something new is stored, but not sooner than
``gap`` s after the look before (so a burst of one message per client does not make one
pass per message over 1,000 nodes), and at the latest after ``FALLBACK`` s (anything the
LinkState makes without storing it, as an error reply for an expired message).
:meth:`Arrivals.wait_replies` wakes a grid's caller only when a reply to one of its own
messages is stored: the legacy half waits in one thread per client, and each one looking
at every reply cost the client that trains a tenth of its CPU.

It also has the engine's threads notice the end of a run within ``STOP_NOTICE`` s: Flower's
worker and reply threads wait on an empty queue for 1 s before they look at the stop event
(``vce_api``'s ``worker`` and ``put_message_into_state``), so every simulation ended with a
second of nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from queue import Queue
from typing import Any, Literal

from fl_app import engine

Kind = Literal["ins", "res"]
FALLBACK = 0.1  # seconds: Flower's own wait, the longest a look is put off
# seconds: the longest a grid's caller waits for its replies between looks. Every reply
# the engine makes is stored (an error reply for a failed client too); only one for a
# message whose TTL ran out is made when looked for: at most this late. Longer than
# FALLBACK: a round of 1,000 clients has 1,000 threads waiting.
REPLY_FALLBACK = 1.0
STOP_NOTICE = 0.05  # seconds: the longest an engine thread waits on an empty queue
LINKSTATE = "flwr.server.superlink.linkstate.in_memory_linkstate"
VCE_API = "flwr.server.superlink.fleet.vce.vce_api"
TOUCHES = [
    engine.Touch(LINKSTATE, "InMemoryLinkState.store_message_ins", ("self", "message")),
    engine.Touch(LINKSTATE, "InMemoryLinkState.store_message_res", ("self", "message")),
    engine.Touch(VCE_API, "add_messages_to_queue", ("state", "queue", "nodes_mapping", "f_stop")),
    engine.Touch(VCE_API, "Queue"),
]


def poll_interval(pollers: int, *, over_http: bool = False) -> float:
    """Seconds between looks for messages or replies, for ``pollers`` looks a pass (nodes
    the simulation engine checks; legacy threads each waiting for a reply).

    In memory (simulation) Flower waits 0.1 s, which every round pays twice (message
    pick-up, reply) for training and again for evaluation; a look costs a lock and a
    dictionary lookup, so passes over a few nodes can come every few ms, and a pass over
    1,000 every 0.1 s. Over HTTP (a deployment's SuperLink) Flower's grid waits 3 s
    between pulls; a look is a request, so here at most 20 a second in all, at least every
    50 ms and never slower than Flower.
    """
    if over_http:
        return min(3.0, max(0.05, pollers / 20))
    return min(0.1, max(0.002, pollers * 1e-4))


class PromptQueue(Queue[Any]):
    """The engine's message queues: a reader's wait is cut to ``STOP_NOTICE`` s, after
    which Flower's loop looks at its stop event and waits again (an item put wakes it at
    once, as before)."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if block and timeout is not None:
            timeout = min(timeout, STOP_NOTICE)
        return super().get(block, timeout)


class Arrivals:
    """How many messages (``ins``) and replies (``res``) the LinkState has stored."""

    def __init__(self) -> None:
        self.stored: dict[Kind, int] = {"ins": 0, "res": 0}
        self.changed = threading.Condition()
        # Replies stored and not yet pulled, by the message they answer; a waiter's event.
        self.replied: set[str] = set()
        self.waiters: dict[str, threading.Event] = {}

    def count(self, kind: Kind) -> int:
        return self.stored[kind]

    def store(self, kind: Kind, reply_to: str = "") -> None:
        with self.changed:
            self.stored[kind] += 1
            if kind == "res":
                self.replied.add(reply_to)
                if (waiter := self.waiters.get(reply_to)) is not None:
                    waiter.set()
            self.changed.notify_all()

    def wait_replies(self, message_ids: set[str], timeout: float) -> None:
        """Until a reply to one of ``message_ids`` is stored (at most ``timeout`` s, or
        ``REPLY_FALLBACK``); replies already stored and not yet :meth:`pulled` return at once."""
        event = threading.Event()
        with self.changed:
            if self.replied & message_ids:
                return
            self.waiters |= dict.fromkeys(message_ids, event)
        event.wait(min(timeout, REPLY_FALLBACK))
        with self.changed:
            for message_id in message_ids:
                self.waiters.pop(message_id, None)

    def pulled(self, message_ids: set[str]) -> None:
        """The replies to ``message_ids`` were taken from the LinkState."""
        with self.changed:
            self.replied -= message_ids

    def wait(self, kind: Kind, seen: int, looked: float, gap: float, timeout: float) -> None:
        """Until ``kind``'s count is past ``seen`` (or ``timeout`` s), and ``gap`` s after
        ``looked`` (a ``time.monotonic()``)."""
        with self.changed:
            self.changed.wait_for(lambda: self.stored[kind] != seen, min(timeout, FALLBACK))
        time.sleep(max(0.0, looked + gap - time.monotonic()))


CURRENT: Arrivals | None = None  # while arrivals() is in place


@contextmanager
def arrivals(gap: float) -> Iterator[Arrivals]:
    """Flower's in-memory LinkState counting what it stores, and its simulation engine
    looking for messages when one was stored (at most every ``gap`` s) and queueing them in
    :class:`PromptQueue`, in place while the engine runs (``run_api`` looks
    ``add_messages_to_queue`` and ``Queue`` up when it starts).
    """
    global CURRENT  # one engine at a time in a process, as Flower runs it
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    counts = Arrivals()

    def counting(kind: Kind, store: Callable[[Any, Any], str | None]) -> Callable[..., Any]:
        def stored(self: Any, message: Any) -> str | None:
            message_id = store(self, message)
            counts.store(kind, message.metadata.reply_to_message_id)
            return message_id

        return stored

    def add_messages_to_queue(
        state: Any, queue: Any, nodes_mapping: Mapping[int, int], f_stop: threading.Event
    ) -> None:
        while not f_stop.is_set():
            seen, looked = counts.count("ins"), time.monotonic()
            for node_id in nodes_mapping:
                for message in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(message)
            counts.wait("ins", seen, looked, gap, FALLBACK)

    flowers = (
        InMemoryLinkState.store_message_ins,
        InMemoryLinkState.store_message_res,
        vce_api.add_messages_to_queue,
        vce_api.Queue,  # type: ignore[attr-defined]
    )
    InMemoryLinkState.store_message_ins = counting("ins", flowers[0])  # type: ignore[method-assign]
    InMemoryLinkState.store_message_res = counting("res", flowers[1])  # type: ignore[method-assign]
    vce_api.add_messages_to_queue = add_messages_to_queue
    vce_api.Queue = PromptQueue  # type: ignore[attr-defined]
    CURRENT = counts
    try:
        yield counts
    finally:
        CURRENT = None
        (
            InMemoryLinkState.store_message_ins,  # type: ignore[method-assign]
            InMemoryLinkState.store_message_res,  # type: ignore[method-assign]
            vce_api.add_messages_to_queue,
            vce_api.Queue,  # type: ignore[attr-defined]
        ) = flowers


def waiting(*, joins_ray: bool, pollers: int) -> Any:
    """The engine's and the grid's waits, for a pass over ``pollers`` nodes."""
    return arrivals(poll_interval(pollers))


PATCH = waiting
