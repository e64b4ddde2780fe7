"""Flower ServerApp: the strategy from the config, central evaluation, and the round loop of
the Message API, each round recorded, checkpointed and resumable."""

from __future__ import annotations

import timeit
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.common import Scalar
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

import strategies
from fl_app.engine.polled import polled_grid  # part: fast-engine
from fl_app.kit.checkpoint import CHECKPOINT_FILE, resumed
from fl_app.kit.config import RunConfig
from fl_app.kit.results import RunListener, RunWriter, run_directory
from fl_app.kit.rounds import RoundRecorder, stopped_record, train_record
from fl_app.kit.training import ServerModel
from fl_app.parts.legacy.server import legacy_rounds  # part: legacy-api
from fl_app.parts.plots import RunPlots  # part: plots
from strategies.core.update import NothingAggregatedError
from strategies.message import MessageStrategy


def build_strategy(cfg: RunConfig, server: ServerModel) -> MessageStrategy:
    """The strategy named by ``cfg.strategy``, with the run's sampling."""
    rule_type = strategies.rule_type(cfg.strategy)
    return MessageStrategy(
        rule=rule_type(rule_type.Options.from_config(cfg), score_fn=server.score),
        fraction_train=cfg.fraction_fit,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_fit_clients,
        min_evaluate_nodes=cfg.min_evaluate_clients,
        min_available_nodes=cfg.min_available_clients,
        # Clients are sampled by (seed, round, partition ids): reproducible, also on resume.
        sampling_seed=cfg.seed if cfg.client_sampling == "seeded" else None,
        query_timeout=cfg.round_timeout or None,
    )


@dataclass
class ServerRun:
    """One run of the server: config, listeners, tags for every message's config."""

    cfg: RunConfig
    listeners: Sequence[RunListener] = ()
    num_partitions: int | None = None  # part: fast-engine
    tags: Mapping[str, Scalar] = field(default_factory=dict)


def run_server(grid: Grid, run: ServerRun) -> None:
    """Run ``run.cfg``'s rounds on ``grid``; results and a checkpoint after every round go to
    ``output-dir/<run-name>``; ``resume-from`` continues one. Optional parts listen too."""
    cfg, resume = resumed(run.cfg)
    server = ServerModel(cfg)  # first: a bad split or device stops the run before it writes
    grid = polled_grid(grid, cfg, run.num_partitions)  # part: fast-engine
    directory = run_directory(cfg)
    parts = cfg.part_listeners(directory)  # a missing package stops the run at once
    parts.insert(0, RunPlots(cfg, directory))  # part: plots
    try:
        log(INFO, "results of this run: %s", directory)
        listeners = [RunWriter(cfg, directory, server.save), *run.listeners, *parts]
        recorder = RoundRecorder(listeners, directory / CHECKPOINT_FILE, resume)
        rounds = message_rounds
        rounds = legacy_rounds(cfg, rounds)  # part: legacy-api
        rounds(grid, run, server, recorder)
    finally:
        for listener in parts:
            listener.stopped()  # a no-op after run_done: only a run that stopped fails


def message_rounds(
    grid: Grid, run: ServerRun, server: ServerModel, recorder: RoundRecorder
) -> None:
    """The rounds as Flower's ``Strategy.start`` runs them (train, then central and federated
    evaluation), but each round recorded, and a reply that did not come back a failure."""
    cfg = run.cfg
    strategy = build_strategy(cfg, server)
    strategy.num_partitions = run.num_partitions  # part: fast-engine
    timeout = cfg.round_timeout or None
    resumed = recorder.restore(strategy)
    model = server.initial if resumed is None else resumed
    arrays = ArrayRecord(model)
    tags: dict[str, Any] = dict(run.tags)  # a fresh ConfigRecord each call: FedAvg writes to it
    start = timeit.default_timer()
    if resumed is None:
        recorder.emit({"round": 0, **server.central(model)}, start, model, strategy)
    for server_round in range(recorder.first_round, cfg.num_server_rounds + 1):
        start = timeit.default_timer()
        sent = list(strategy.configure_train(server_round, arrays, ConfigRecord(tags), grid))
        replies = _exchange(grid, sent, timeout)
        ok = sum(1 for reply in replies if not reply.has_error())
        counts = {"sampled": len(sent), "results": ok, "failures": len(sent) - ok}
        try:
            new_arrays, metrics = strategy.aggregate_train(server_round, replies)
        except NothingAggregatedError as error:
            recorder.emit(stopped_record(server_round, error, **counts), start, model, strategy)
            raise
        aggregated = new_arrays is not None
        if new_arrays is not None:
            arrays, model = new_arrays, new_arrays.to_numpy_ndarrays()
        record = train_record(
            server_round, strategy, **counts, metrics=dict(metrics or {}), aggregated=aggregated
        )
        record |= server.central(model)
        asked = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(tags), grid))
        federated = strategy.aggregate_evaluate(server_round, _exchange(grid, asked, timeout))
        if federated is not None and "loss" in federated:
            record["federated_loss"] = federated["loss"]
            record["federated_accuracy"] = federated.get("accuracy")
        recorder.emit(record, start, model, strategy)
    recorder.done(model)


def _exchange(grid: Grid, messages: list[Message], timeout: float | None) -> list[Message]:
    replies = list(grid.send_and_receive(messages, timeout=timeout)) if messages else []
    if (missing := len(messages) - len(replies)) > 0:
        log(WARNING, "%d of %d nodes did not reply in time", missing, len(messages))
    return replies


def server_app_for(run: ServerRun | None = None) -> ServerApp:
    """A ServerApp for ``run`` (None: the context's run config)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, run or ServerRun(RunConfig.from_mapping(context.run_config)))

    return server_app


app = server_app_for()
