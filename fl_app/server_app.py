"""Flower ServerApp: builds the configured strategy, evaluates centrally, records results.

One ServerApp runs either Flower API half, chosen by the config key ``flower-api``:
``legacy`` (Flower's ``Server`` loop with a ``flwr.server.strategy`` strategy, talking
to NumPyClients) or ``message`` (``flwr.serverapp.strategy`` strategy, ``ArrayRecord``
messages). Both record the same rounds, write the same files and give the same model.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.common import Scalar, ndarrays_to_parameters
from flwr.common.logger import log
from flwr.server import ServerConfig, SimpleClientManager
from flwr.server.compat import start_grid
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

import strategies
from fl_app.engine import arrivals
from fl_app.kit.checkpoint import CHECKPOINT_FILE, Checkpoint
from fl_app.kit.config import RunConfig
from fl_app.kit.results import RunListener, RunWriter, run_directory
from fl_app.kit.training import ServerModel
from fl_app.server_loop import (
    ExperimentServer,
    RoundRecorder,
    SecureAggregationServer,
    SecureRound,
    run_message_rounds,
)
from strategies.legacy import LegacyStrategy
from strategies.message import MessageStrategy


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


class PolledGrid(Grid):
    """``grid`` whose ``send_and_receive`` looks for the replies every ``interval`` s.

    Flower's grids wait between looks 0.1 s in memory (``InMemoryGrid.pull_interval``) and
    3 s over HTTP (``flwr/superlink/grid/http_grid.py``, line 412, no setting): a round
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


def round_config(tags: Mapping[str, Scalar], server_round: int) -> dict[str, Scalar]:
    return {**tags, "server-round": server_round}


# Flower's names of the sampling arguments on each API half, in the order of SAMPLING_KEYS.
SAMPLING_ARGUMENTS = {
    "legacy": ("fraction_fit", "fraction_evaluate", "min_fit_clients", "min_evaluate_clients"),
    "message": ("fraction_train", "fraction_evaluate", "min_train_nodes", "min_evaluate_nodes"),
}
SAMPLING_KEYS = ("fraction_fit", "fraction_evaluate", "min_fit_clients", "min_evaluate_clients")


def build_strategy(
    cfg: RunConfig,
    server: ServerModel,
    *,
    num_partitions: int | None = None,
    tags: Mapping[str, Scalar] | None = None,
) -> LegacyStrategy | MessageStrategy:
    """The strategy named by ``cfg.strategy``, for the half named by ``cfg.flower_api``.

    ``num_partitions``: the logical clients a simulation's pool of nodes serves (None:
    one client a node). ``tags`` go into every message's config (a sweep's run name).
    """
    rule_type = strategies.rule_type(cfg.strategy)
    rule = rule_type(rule_type.Options.from_config(cfg), score_fn=server.score)
    sampling: dict[str, Any] = {
        name: getattr(cfg, key)
        for name, key in zip(SAMPLING_ARGUMENTS[cfg.flower_api], SAMPLING_KEYS, strict=True)
    }
    # Clients are sampled by (seed, round, partition ids): reproducible, also on resume.
    seeded = cfg.client_sampling == "seeded"
    sampling |= {
        "sampling_seed": cfg.seed if seeded else None,
        "query_timeout": cfg.round_timeout or None,
        "num_partitions": num_partitions,
    }
    if cfg.flower_api == "message":
        return MessageStrategy(rule=rule, min_available_nodes=cfg.min_available_clients, **sampling)
    config_fn = functools.partial(round_config, dict(tags or {}))
    return LegacyStrategy(
        rule=rule,
        secure_aggregation=cfg.secure_aggregation,
        min_available_clients=cfg.min_available_clients,
        initial_parameters=ndarrays_to_parameters(server.initial),
        on_fit_config_fn=config_fn,
        on_evaluate_config_fn=config_fn,
        **sampling,
    )


@dataclass
class ServerRun:
    """One run of the server: its config, who is told about its rounds, where it resumes,
    the logical clients of a simulation's pool, and the tags its messages carry."""

    cfg: RunConfig
    listeners: Sequence[RunListener] = ()
    resume: Checkpoint | None = None
    num_partitions: int | None = None
    tags: Mapping[str, Scalar] = field(default_factory=dict)


def run_server(grid: Grid, run: ServerRun) -> None:
    """Run ``run.cfg``'s rounds on ``grid``; results go to ``output-dir/<run-name>``.

    The run is checkpointed there after every round; ``run.resume`` continues from one.
    The optional parts' listeners (``cfg.part_listeners``: a tracker) are told too.
    """
    cfg = run.cfg
    waiting = cfg.fit_clients(run.num_partitions or len(list(grid.get_node_ids())))
    pollers = waiting if cfg.flower_api == "legacy" else 1
    grid = PolledGrid(grid, poll_interval(pollers, over_http=not isinstance(grid, InMemoryGrid)))
    directory = run_directory(cfg)
    parts = cfg.part_listeners(directory)  # first: a missing package stops the run at once
    try:
        _run_rounds(grid, run, directory, [*run.listeners, *parts])
    finally:
        for listener in parts:
            listener.stopped()  # a no-op after run_done: only a run that stopped fails


def _run_rounds(
    grid: Grid, run: ServerRun, directory: Path, listeners: Sequence[RunListener]
) -> None:
    cfg = run.cfg
    server = ServerModel(cfg)
    log(INFO, "results of this run (%s Flower API): %s", cfg.flower_api, directory)
    recorder = RoundRecorder(
        [RunWriter(cfg, directory, server.save), *listeners],
        checkpoint_path=directory / CHECKPOINT_FILE,
        resume=run.resume,
    )
    strategy = build_strategy(cfg, server, num_partitions=run.num_partitions, tags=run.tags)
    timeout = cfg.round_timeout or None
    if isinstance(strategy, MessageStrategy):
        run_message_rounds(
            grid,
            strategy,
            initial_model=server.initial,
            num_rounds=cfg.num_server_rounds,
            timeout=timeout,
            central_evaluation=server.central,
            recorder=recorder,
            config=run.tags,
        )
        return
    loop: dict[str, Any] = {
        "client_manager": SimpleClientManager(),
        "strategy": strategy,
        "recorder": recorder,
        "central_evaluation": server.central,
    }
    start_grid(
        grid=grid,
        server=SecureAggregationServer(grid=grid, workflow=secure_round(cfg), **loop)
        if cfg.secure_aggregation
        else ExperimentServer(**loop),
        config=ServerConfig(num_rounds=cfg.num_server_rounds, round_timeout=timeout),
    )


def secure_round(cfg: RunConfig) -> SecureRound:
    """Flower's SecAgg+ workflow with the run's protocol knobs."""
    return SecureRound(
        num_shares=cfg.secagg_num_shares,
        reconstruction_threshold=cfg.secagg_reconstruction_threshold,
        max_weight=cfg.secagg_max_weight,
        clipping_range=cfg.secagg_clipping_range,
        timeout=cfg.round_timeout or None,
    )


def server_app_for(run: ServerRun | None = None) -> ServerApp:
    """A ServerApp for ``run``, or for the run config when None.

    (The deprecated in-process simulation entry point passes no run config.)
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, run or ServerRun(RunConfig.from_mapping(context.run_config)))

    return server_app


def sweep_server_app(runs: Sequence[ServerRun], outcome: SweepOutcome) -> ServerApp:
    """A ServerApp running ``runs`` one after another on one grid (one simulation engine
    for a whole sweep). A run that fails is recorded in ``outcome.failed`` with its
    error and the next one starts; ``outcome.stop`` set ends the sweep after the current
    run."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        for run in runs:
            if outcome.stop.is_set():
                return
            try:
                run_server(grid, run)
            except Exception as error:  # recorded; the sweep goes on
                log(WARNING, "run %s failed: %s", run.cfg.run_name, error)
                outcome.failed[run.cfg.run_name] = error
            else:
                outcome.finished.append(run.cfg.run_name)

    return server_app


@dataclass
class SweepOutcome:
    """What a sweep's runs came to: their names in finishing order, the failed ones'
    errors, and the event that stops the sweep between runs."""

    finished: list[str] = field(default_factory=list)
    failed: dict[str, BaseException] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)


app = server_app_for()
