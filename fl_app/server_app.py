"""Flower ServerApp: builds the configured strategy, evaluates centrally, records results."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.common import Context, NDArrays, Scalar, ndarrays_to_parameters
from flwr.common.logger import log
from flwr.server import ServerApp, ServerAppComponents, ServerConfig, SimpleClientManager
from torch import nn

import strategies
from fl_app.checkpoint import CHECKPOINT_FILE, Checkpoint
from fl_app.config import RunConfig
from fl_app.data import ServerData, load_server_data
from fl_app.models import build_model
from fl_app.results import RunWriter, run_directory
from fl_app.server_loop import ExperimentServer, RunListener
from fl_app.training import evaluate, get_weights, pick_device, set_weights


def build_strategy(
    cfg: RunConfig, data: ServerData, model: nn.Module, device: torch.device
) -> strategies.AggregationStrategy:
    """The strategy named by ``cfg.strategy`` with its knobs, central evaluation and scoring.

    ``model`` starts as the initial global model and serves as the server's evaluator.
    """
    task = data.spec.task
    initial = get_weights(model)

    def central_evaluation(
        server_round: int, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, dict[str, Scalar]]:
        set_weights(model, parameters)
        result = evaluate(model, data.test, device=device, task=task)
        return result.loss, {k: v for k, v in result.metrics().items() if k != "loss"}

    def server_score(parameters: Sequence[Any]) -> dict[str, float]:
        set_weights(model, list(parameters))
        return evaluate(model, data.val, device=device, task=task).metrics(prefix="val_")

    def fit_config(server_round: int) -> dict[str, Scalar]:
        return {"server-round": server_round}

    options: dict[str, Any] = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    if cfg.hybrid_lambda_end >= 0:
        options["hybrid_lambda"] = strategies.linear_schedule(
            cfg.hybrid_lambda, cfg.hybrid_lambda_end, cfg.num_server_rounds
        )
    options |= {
        "initial_parameters": ndarrays_to_parameters(initial),
        "evaluate_fn": central_evaluation,
        "on_fit_config_fn": fit_config,
        "on_evaluate_config_fn": fit_config,
        "score_fn": server_score,
    }
    return strategies.get(cfg.strategy, **strategies.own_options(cfg.strategy, options))


def server_components(
    cfg: RunConfig, listeners: Sequence[RunListener] = (), resume: Checkpoint | None = None
) -> ServerAppComponents:
    """Server, strategy and round config for ``cfg``; results go to ``output-dir/<run-name>``.

    The run is checkpointed there after every round; ``resume`` continues from one.
    """
    data = load_server_data(cfg)
    device = pick_device(cfg.device)
    model = build_model(cfg.model, data.spec.input_shape, data.spec.num_classes, cfg.seed).to(
        device
    )
    directory = run_directory(cfg)
    log(INFO, "results of this run: %s", directory)

    def save_model(parameters: NDArrays, path: Path) -> None:
        set_weights(model, parameters)
        torch.save(model.state_dict(), path)

    server = ExperimentServer(
        client_manager=SimpleClientManager(),
        strategy=build_strategy(cfg, data, model, device),
        listeners=[
            RunWriter(cfg, directory, save_model),
            *listeners,
        ],
        checkpoint_path=directory / CHECKPOINT_FILE,
        resume=resume,
    )
    return ServerAppComponents(
        server=server,
        config=ServerConfig(
            num_rounds=cfg.num_server_rounds, round_timeout=cfg.round_timeout or None
        ),
    )


def server_fn(context: Context) -> ServerAppComponents:
    """Entry point under ``flwr run``: the run config comes with the context."""
    return server_components(RunConfig.from_mapping(context.run_config))


def server_app_for(
    cfg: RunConfig, listeners: Sequence[RunListener] = (), resume: Checkpoint | None = None
) -> ServerApp:
    """A ServerApp bound to ``cfg`` (the simulation API passes no run config)."""

    def build(context: Context) -> ServerAppComponents:
        return server_components(cfg, listeners, resume)

    return ServerApp(server_fn=build)


app = ServerApp(server_fn=server_fn)
