"""The simulation's engine and grid wake on what Flower's in-memory LinkState stores (the
optional part ``fast-engine``): the patch takes effect, and Flower's code is back after."""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

import run_simulation
from fl_app.engine import arrivals, polled
from fl_app.kit.simulation import run
from tests.halves import API_FLAGS

ROUNDS, CLIENTS, PER_ROUND = 2, 10, 4


def test_a_grid_caller_wakes_for_a_reply_to_its_own_messages_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(arrivals, "REPLY_FALLBACK", 30.0)  # no wake-up but a reply's
    counts = arrivals.Arrivals()
    waiter = threading.Thread(target=counts.wait_replies, args=({"a", "b"}, 30.0))
    waiter.start()
    counts.store("res", reply_to="c")  # another caller's reply
    waiter.join(0.3)
    assert waiter.is_alive()
    counts.store("res", reply_to="b")
    waiter.join(5)
    assert not waiter.is_alive()
    assert counts.waiters == {}
    # A reply stored before its caller waits (and not yet pulled) returns at once.
    counts.wait_replies({"b"}, 30.0)
    counts.pulled({"b", "c"})
    assert counts.replied == set()
    assert counts.stored == {"ins": 0, "res": 2}


@pytest.mark.slow  # Flower's engine, with the clients in this process
@pytest.mark.parametrize("api", list(API_FLAGS))
def test_every_message_and_reply_of_a_run_is_counted_and_flowers_code_is_back_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api: str
) -> None:
    flowers = (
        InMemoryLinkState.store_message_ins,
        InMemoryLinkState.store_message_res,
        vce_api.add_messages_to_queue,
        vce_api.Queue,
    )
    seen: list[arrivals.Arrivals] = []
    waiting = arrivals.PATCH

    @contextmanager
    def watched(*, joins_ray: bool, pollers: int) -> Iterator[arrivals.Arrivals]:
        with waiting(joins_ray=joins_ray, pollers=pollers) as counts:
            seen.append(counts)
            yield counts

    monkeypatch.setattr(arrivals, "PATCH", watched)
    invocation = run_simulation.parse(
        [
            "--backend", "inprocess", *API_FLAGS[api], "--output-dir", str(tmp_path),
            "--num-clients", str(CLIENTS), "--num-server-rounds", str(ROUNDS),
            "--fraction-fit", str(PER_ROUND / CLIENTS), "--fraction-evaluate", "0",
        ]
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        records = run(invocation.cfg, invocation.simulation)
    assert [len(r["sampled_partitions"]) for r in records[1:]] == [PER_ROUND] * ROUNDS
    (counts,) = seen
    # Only training messages (no federated evaluation): one message and one reply each.
    assert counts.stored == {"ins": ROUNDS * PER_ROUND, "res": ROUNDS * PER_ROUND}
    assert arrivals.CURRENT is None
    assert (
        InMemoryLinkState.store_message_ins,
        InMemoryLinkState.store_message_res,
        vce_api.add_messages_to_queue,
        vce_api.Queue,
    ) == flowers


class SlowGrid:
    """A deployment's grid (no LinkState here): each message's reply is there from the
    ``ready``-th pull on."""

    def __init__(self, ready: int) -> None:
        self.ready, self.pulls = ready, 0

    def push_messages(self, messages: list[str]) -> list[str]:
        return list(messages)

    def pull_messages(self, ids: set[str]) -> list[Any]:
        self.pulls += 1
        if self.pulls < self.ready:
            return []
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ids]


def test_the_polled_grid_looks_for_replies_every_interval_not_every_3_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []
    monkeypatch.setattr(polled.time, "sleep", waits.append)
    grid = SlowGrid(ready=4)
    replies = polled.PolledGrid(grid, interval=0.05).send_and_receive(["a", "b"])
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
    assert grid.pulls == 4  # pulled until every reply was in, then stopped
    assert len(waits) == 3
    assert all(0 <= wait <= 0.05 for wait in waits)  # Flower's HTTP grid sleeps 3 s here
