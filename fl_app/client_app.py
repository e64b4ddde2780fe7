"""Flower ClientApp: a NumPyClient that trains the model on one client's partition."""

from __future__ import annotations

import functools
import time
from typing import Any

import torch
from flwr.client import Client, ClientApp, NumPyClient
from flwr.common import Context, NDArrays, Scalar
from torch import nn

from fl_app.config import RunConfig, task_of
from fl_app.data import ClientData, DataSpec, data_spec, load_client_data
from fl_app.faults import BEFORE_TRAINING, is_faulty, poison
from fl_app.models import build_model
from fl_app.training import evaluate, get_weights, pick_device, set_weights, train


@functools.lru_cache(maxsize=4)
def _model(name: str, spec: DataSpec, seed: int, device: str) -> nn.Module:
    # One model per process, reused by every client it runs: fit/evaluate overwrite all
    # of its weights first, so nothing leaks from one client to the next.
    return build_model(name, spec.input_shape, spec.num_classes, seed).to(device)


class FlowerClient(NumPyClient):
    """Trains on its partition; reports ``train_loss`` and validation metrics.

    ``fit`` returns the updated weights, the number of training examples and the
    metrics ``train_loss``, ``val_loss``, ``val_accuracy`` (classification only),
    measured after training on the client's held-out validation split: the quality
    signal for QualityWeighted.
    ``evaluate`` scores the global model on that validation split.

    ``fault`` (see :mod:`fl_app.faults`) makes it misbehave on purpose; "none" by default.
    """

    def __init__(
        self,
        cfg: RunConfig,
        partition_id: int,
        data: ClientData,
        model: nn.Module,
        fault: str = "none",
    ) -> None:
        self.cfg = cfg
        self.task = task_of(cfg.dataset)
        self.partition_id = partition_id
        self.data = data
        self.model = model
        self.device = torch.device(next(model.parameters()).device)
        self.fault = fault

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        return get_weights(self.model)

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        if self.fault == "raise":
            raise RuntimeError(f"injected fault: client {self.partition_id} fails in fit")
        if self.fault == "straggle":
            time.sleep(self.cfg.straggle_seconds)
        set_weights(self.model, parameters)
        server_round = int(config.get("server-round", 0))
        train_loss = train(
            self.model,
            self.data.train,
            epochs=self.cfg.local_epochs,
            batch_size=self.cfg.batch_size,
            learning_rate=self.cfg.learning_rate,
            momentum=self.cfg.momentum,
            device=self.device,
            seed=self.cfg.seed * 1_000_003 + server_round * 10_007 + self.partition_id,
            task=self.task,
        )
        val = evaluate(self.model, self.data.val, device=self.device, task=self.task)
        metrics: dict[str, Scalar] = {"train_loss": train_loss, **val.metrics(prefix="val_")}
        if self.fault in BEFORE_TRAINING or self.fault == "none":
            return get_weights(self.model), len(self.data.train), metrics
        return poison(
            self.fault,
            parameters,
            get_weights(self.model),
            len(self.data.train),
            metrics,
            self.cfg.fault_scale,
        )

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        set_weights(self.model, parameters)
        result = evaluate(self.model, self.data.val, device=self.device, task=self.task)
        metrics: dict[str, Scalar] = {k: v for k, v in result.metrics().items() if k != "loss"}
        return result.loss, result.num_examples, metrics


def make_client(cfg: RunConfig, node_config: dict[str, Any]) -> Client:
    """The client of the node whose ``node_config`` names its partition."""
    partition_id = int(node_config["partition-id"])
    num_partitions = int(node_config["num-partitions"])
    data = load_client_data(cfg, partition_id, num_partitions)
    model = _model(cfg.model, data_spec(cfg), cfg.seed, str(pick_device(cfg.device)))
    fault = cfg.fault_kind if is_faulty(cfg, partition_id, num_partitions) else "none"
    return FlowerClient(cfg, partition_id, data, model, fault).to_client()


def client_fn(context: Context) -> Client:
    """Entry point under ``flwr run``: the run config comes with the context."""
    return make_client(RunConfig.from_mapping(context.run_config), dict(context.node_config))


def client_app_for(cfg: RunConfig) -> ClientApp:
    """A ClientApp bound to ``cfg`` (the simulation API gives clients no run config)."""
    return ClientApp(client_fn=lambda context: make_client(cfg, dict(context.node_config)))


app = ClientApp(client_fn=client_fn)
