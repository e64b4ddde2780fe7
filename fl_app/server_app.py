"""Flower ServerApp: the strategy from the config, central evaluation, the round loop.

The Message API (``flwr.serverapp``): a strategy of :mod:`strategies.message` sends
``ArrayRecord`` messages and aggregates the replies; every round is recorded,
checkpointed and resumable (:class:`~fl_app.kit.rounds.RoundRecorder`).
"""

from __future__ import annotations

import timeit
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.common import Scalar
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

import strategies
from fl_app.engine.polled import polled_grid  # part: fast-engine
from fl_app.kit.checkpoint import CHECKPOINT_FILE, Checkpoint
from fl_app.kit.config import RunConfig
from fl_app.kit.results import RunListener, RunWriter, run_directory
from fl_app.kit.rounds import (
    CentralEvaluation,
    NDArrays,
    RoundRecorder,
    stopped_record,
    train_record,
)
from fl_app.kit.training import ServerModel
from fl_app.parts.legacy.server import legacy_rounds  # part: legacy-api
from strategies.core.update import NothingAggregatedError
from strategies.message import MessageStrategy


def build_strategy(
    cfg: RunConfig, server: ServerModel, *, num_partitions: int | None = None
) -> MessageStrategy:
    """The strategy named by ``cfg.strategy``, with the run's sampling.

    ``num_partitions``: the logical clients a simulation's pool of nodes serves (None:
    one client a node).
    """
    rule_type = strategies.rule_type(cfg.strategy)
    rule = rule_type(rule_type.Options.from_config(cfg), score_fn=server.score)
    return MessageStrategy(
        rule=rule,
        fraction_train=cfg.fraction_fit,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_fit_clients,
        min_evaluate_nodes=cfg.min_evaluate_clients,
        min_available_nodes=cfg.min_available_clients,
        # Clients are sampled by (seed, round, partition ids): reproducible, also on resume.
        sampling_seed=cfg.seed if cfg.client_sampling == "seeded" else None,
        query_timeout=cfg.round_timeout or None,
        num_partitions=num_partitions,
    )


# The rounds of a run: (grid, run, the server's model, its recorder).
Rounds = Callable[[Grid, "ServerRun", ServerModel, RoundRecorder], None]


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
    grid = polled_grid(grid, cfg, run.num_partitions)  # part: fast-engine
    directory = run_directory(cfg)
    parts = cfg.part_listeners(directory)  # first: a missing package stops the run at once
    try:
        server = ServerModel(cfg)
        log(INFO, "results of this run: %s", directory)
        recorder = RoundRecorder(
            [RunWriter(cfg, directory, server.save), *run.listeners, *parts],
            checkpoint_path=directory / CHECKPOINT_FILE,
            resume=run.resume,
        )
        rounds: Rounds = message_rounds
        rounds = legacy_rounds(cfg, rounds)  # part: legacy-api
        rounds(grid, run, server, recorder)
    finally:
        for listener in parts:
            listener.stopped()  # a no-op after run_done: only a run that stopped fails


def message_rounds(
    grid: Grid, run: ServerRun, server: ServerModel, recorder: RoundRecorder
) -> None:
    """The run's rounds on the Message API."""
    cfg = run.cfg
    run_message_rounds(
        grid,
        build_strategy(cfg, server, num_partitions=run.num_partitions),
        initial_model=server.initial,
        num_rounds=cfg.num_server_rounds,
        timeout=cfg.round_timeout or None,
        central_evaluation=server.central,
        recorder=recorder,
        config=run.tags,
    )


def run_message_rounds(
    grid: Grid,
    strategy: MessageStrategy,
    *,
    initial_model: NDArrays,
    num_rounds: int,
    timeout: float | None,
    central_evaluation: CentralEvaluation,
    recorder: RoundRecorder,
    config: Mapping[str, Scalar] | None = None,
) -> NDArrays:
    """The Message-API rounds, as Flower's ``Strategy.start`` runs them, recorded.

    Like ``start``: ``configure_train`` → ``send_and_receive`` → ``aggregate_train``, then
    central and federated evaluation; unlike it, each round is recorded, checkpointed
    and resumable, and a reply that did not come back counts as a failure. ``config``
    goes into every train and evaluate message's ConfigRecord.
    """
    resumed = recorder.restore(strategy)
    model = initial_model if resumed is None else resumed
    arrays = ArrayRecord(model)
    tags: dict[str, Any] = dict(config or {})  # a fresh ConfigRecord each call: FedAvg writes to it
    if resumed is None:
        start = timeit.default_timer()
        recorder.emit({"round": 0, **central_evaluation(model)}, start, model, strategy)
    for server_round in range(recorder.first_round, num_rounds + 1):
        round_start = timeit.default_timer()
        sent = list(strategy.configure_train(server_round, arrays, ConfigRecord(tags), grid))
        replies = _exchange(grid, sent, timeout)
        ok = sum(1 for reply in replies if not reply.has_error())
        counts = {"sampled": len(sent), "results": ok, "failures": len(sent) - ok}
        try:
            new_arrays, metrics = strategy.aggregate_train(server_round, replies)
        except NothingAggregatedError as error:
            recorder.emit(
                stopped_record(server_round, error, **counts), round_start, model, strategy
            )
            raise
        if new_arrays is not None:
            arrays = new_arrays
            model = arrays.to_numpy_ndarrays()
        record = train_record(
            server_round,
            strategy,
            **counts,
            metrics=dict(metrics or {}),
            aggregated=new_arrays is not None,
        )
        record |= central_evaluation(model)
        asked = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(tags), grid))
        federated = strategy.aggregate_evaluate(server_round, _exchange(grid, asked, timeout))
        if federated is not None and "loss" in federated:
            record |= {
                "federated_loss": federated["loss"],
                "federated_accuracy": federated.get("accuracy"),
            }
        recorder.emit(record, round_start, model, strategy)
    recorder.done(model)
    return model


def _exchange(grid: Grid, messages: list[Message], timeout: float | None) -> list[Message]:
    if not messages:
        return []
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    if len(replies) < len(messages):
        log(
            WARNING,
            "%d of %d nodes did not reply in time",
            len(messages) - len(replies),
            len(messages),
        )
    return replies


def server_app_for(run: ServerRun | None = None) -> ServerApp:
    """A ServerApp for ``run``, or for the run config when None.

    (The deprecated in-process simulation entry point passes no run config.)
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, run or ServerRun(RunConfig.from_mapping(context.run_config)))

    return server_app


app = server_app_for()
