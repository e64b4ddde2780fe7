"""Flower ServerApp: builds the configured strategy, evaluates centrally, records results.

One ServerApp runs either Flower API half, chosen by the config key ``flower-api``:
``legacy`` (Flower's ``Server`` loop with a ``flwr.server.strategy`` strategy, talking
to NumPyClients) or ``message`` (``flwr.serverapp.strategy`` strategy, ``ArrayRecord``
messages). Both record the same rounds, write the same files and give the same model.
"""

from __future__ import annotations

from collections.abc import Sequence
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.common import Scalar, ndarrays_to_parameters
from flwr.common.logger import log
from flwr.server import ServerConfig, SimpleClientManager
from flwr.server.compat import start_grid
from flwr.serverapp import Grid, ServerApp

import strategies
from fl_app.checkpoint import CHECKPOINT_FILE, Checkpoint
from fl_app.config import RunConfig
from fl_app.results import RunListener, RunWriter, run_directory
from fl_app.server_loop import (
    ExperimentServer,
    RoundRecorder,
    SecureAggregationServer,
    SecureRound,
    run_message_rounds,
)
from fl_app.tracking import start_tracker
from fl_app.training import ServerModel
from strategies.legacy import LegacyStrategy
from strategies.message import MessageStrategy


def round_config(server_round: int) -> dict[str, Scalar]:
    return {"server-round": server_round}


# Flower's names of the sampling arguments on each API half, in the order of SAMPLING_KEYS.
SAMPLING_ARGUMENTS = {
    "legacy": ("fraction_fit", "fraction_evaluate", "min_fit_clients", "min_evaluate_clients"),
    "message": ("fraction_train", "fraction_evaluate", "min_train_nodes", "min_evaluate_nodes"),
}
SAMPLING_KEYS = ("fraction_fit", "fraction_evaluate", "min_fit_clients", "min_evaluate_clients")


def build_strategy(cfg: RunConfig, server: ServerModel) -> LegacyStrategy | MessageStrategy:
    """The strategy named by ``cfg.strategy``, for the half named by ``cfg.flower_api``."""
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
    }
    if cfg.flower_api == "message":
        return MessageStrategy(rule=rule, min_available_nodes=cfg.min_available_clients, **sampling)
    return LegacyStrategy(
        rule=rule,
        secure_aggregation=cfg.secure_aggregation,
        min_available_clients=cfg.min_available_clients,
        initial_parameters=ndarrays_to_parameters(server.initial),
        on_fit_config_fn=round_config,
        on_evaluate_config_fn=round_config,
        **sampling,
    )


def run_server(
    grid: Grid,
    cfg: RunConfig,
    listeners: Sequence[RunListener] = (),
    resume: Checkpoint | None = None,
) -> None:
    """Run ``cfg``'s rounds on ``grid``; results go to ``output-dir/<run-name>``.

    The run is checkpointed there after every round; ``resume`` continues from one. The
    tracker ``cfg.tracker`` names (if any) logs every round too.
    """
    directory = run_directory(cfg)
    tracker = start_tracker(cfg, directory)  # first: a missing package stops the run at once
    try:
        _run_rounds(grid, cfg, directory, [*listeners, tracker], resume)
    finally:
        tracker.close(failed=True)  # a no-op after run_done: only a run that stopped fails


def _run_rounds(
    grid: Grid,
    cfg: RunConfig,
    directory: Path,
    listeners: Sequence[RunListener],
    resume: Checkpoint | None,
) -> None:
    server = ServerModel(cfg)
    log(INFO, "results of this run (%s Flower API): %s", cfg.flower_api, directory)
    recorder = RoundRecorder(
        [RunWriter(cfg, directory, server.save), *listeners],
        checkpoint_path=directory / CHECKPOINT_FILE,
        resume=resume,
    )
    strategy = build_strategy(cfg, server)
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


def server_app_for(
    cfg: RunConfig | None = None,
    listeners: Sequence[RunListener] = (),
    resume: Checkpoint | None = None,
) -> ServerApp:
    """A ServerApp bound to ``cfg``, or reading it from the run config when None.

    (The deprecated in-process simulation entry point passes no run config.)
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, cfg or RunConfig.from_mapping(context.run_config), listeners, resume)

    return server_app


app = server_app_for()
