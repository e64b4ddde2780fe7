"""A grid that looks for replies more often than Flower's, and in a simulation waits for
them (:mod:`fl_app.engine.arrivals`): part of the optional part ``fast-engine``."""

from __future__ import annotations

import math
import time
from typing import Any

from flwr.serverapp import Grid
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from fl_app import engine
from fl_app.engine import arrivals
from fl_app.engine.arrivals import poll_interval
from fl_app.parts.legacy.server import legacy_pollers  # part: legacy-api

# The grid a simulation's ServerApp gets (a deployment's talks HTTP to the SuperLink).
TOUCHES = [engine.Touch("flwr.superlink.grid.inmemory_grid", "InMemoryGrid")]


class PolledGrid(Grid):
    """``grid`` whose ``send_and_receive`` looks for the replies every ``interval`` s.

    Flower's grids wait between looks 0.1 s in memory (``InMemoryGrid.pull_interval``) and
    3 s over HTTP (``HttpGrid.send_and_receive``'s ``time.sleep(3)``, no setting): a round
    of a deployment waits about 3 s for replies that came in 1 s, twice. Both API halves
    reach the grid through ``send_and_receive`` (the legacy half through Flower's
    ``GridClientProxy``, one call per client), so this is where both wait less.
    """

    def __init__(self, grid: Grid, interval: float) -> None:
        self.grid, self.interval = grid, interval

    def set_run(self, run: Any) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        return self.grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Any:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Any:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Any:
        return self.grid.get_nodes()

    def push_messages(self, messages: Any) -> Any:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Any) -> Any:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        """Flower's loop (push, then pull until every reply is in or ``timeout`` s
        passed), waiting ``interval`` s between pulls; in a simulation's LinkState
        (``fl_app.engine.arrivals``), until a reply to one of these messages is stored, and at
        least ``interval`` s."""
        counts = arrivals.CURRENT if isinstance(self.grid, InMemoryGrid) else None
        waiting = set(self.grid.push_messages(messages))
        end = time.monotonic() + (timeout if timeout is not None else math.inf)
        replies: list[Any] = []
        while (looked := time.monotonic()) < end:
            pulled = list(self.grid.pull_messages(waiting))
            replies += pulled
            answered = {reply.metadata.reply_to_message_id for reply in pulled}
            waiting -= answered
            if counts is not None:
                counts.pulled(answered)
            if not waiting:
                break
            if counts is not None:
                counts.wait_replies(waiting, end - time.monotonic())
            time.sleep(max(0.0, looked + self.interval - time.monotonic()))
        return replies


def polled_grid(grid: Grid, cfg: Any, num_partitions: int | None) -> Grid:
    """``grid`` looking for a round's replies sooner (the Message API waits for them in
    one call; a part may wait in more)."""
    pollers = 1
    pollers = legacy_pollers(cfg, pollers, num_partitions, grid)  # part: legacy-api
    return PolledGrid(grid, poll_interval(pollers, over_http=not isinstance(grid, InMemoryGrid)))
