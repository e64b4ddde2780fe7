"""The simulation's engine and grid wake on what Flower's in-memory LinkState stores."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

import run_simulation
import strategies
from fl_app import arrivals

pytestmark = pytest.mark.slow  # Flower's engine, with the clients in this process

ROUNDS, CLIENTS, PER_ROUND = 2, 10, 4


@pytest.mark.parametrize("api", strategies.FLOWER_APIS)
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

    @contextmanager
    def watched(gap: float) -> Iterator[arrivals.Arrivals]:
        with arrivals.arrivals(gap) as counts:
            seen.append(counts)
            yield counts

    monkeypatch.setattr(run_simulation, "arrivals", watched)
    invocation = run_simulation.parse(
        [
            "--backend", "inprocess", "--flower-api", api, "--output-dir", str(tmp_path),
            "--num-clients", str(CLIENTS), "--num-server-rounds", str(ROUNDS),
            "--fraction-fit", str(PER_ROUND / CLIENTS), "--fraction-evaluate", "0",
        ]
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        records = run_simulation.run(invocation.cfg, invocation.simulation)
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
