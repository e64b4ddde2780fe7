"""Flower apps written the way Flower's own docs write them, run against this project.

``python -m tests.message_apps SCENARIO OUT.json`` runs one scenario on Flower's
simulation engine (4 virtual clients, digits) and writes what the test asserts on:

- ``quickstart``: a ClientApp as in Flower's current ``examples/quickstart-pytorch``
  (``@app.train`` reads ``msg.content["arrays"]``, replies ``ArrayRecord`` +
  ``MetricRecord`` with ``num-examples``) trained by each of the four Message-API
  strategies of :mod:`strategies.message`, through ``strategy.start(...)``;
- ``flower-fedavg``: this project's ClientApp under Flower's own Message-API ``FedAvg``;
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp as MessageClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.simulation import run_simulation
from torch import nn

import strategies
from fl_app.client_app import client_app_for
from fl_app.kit.config import RunConfig
from fl_app.kit.data import data_spec, load_client_data, load_server_data
from fl_app.task import build_model, evaluate, get_weights, set_weights
from strategies.core.metrics import ROUND

NUM_CLIENTS = 4
ROUNDS = 3
CFG = RunConfig(local_epochs=1, device="cpu", fraction_evaluate=0.0, min_evaluate_clients=0)


def net() -> nn.Module:
    spec = data_spec(CFG)
    return build_model(CFG.model, spec.input_shape, spec.num_classes, seed=0)


def central_loss(model: nn.Module) -> dict[str, float]:
    data = load_server_data(CFG)
    return evaluate(model, data.test, device=torch.device("cpu"))


def train_epoch(model: nn.Module, partition_id: int) -> tuple[float, int]:
    """One epoch of plain SGD on the client's partition, as the quickstart's ``train``."""
    data = load_client_data(CFG, partition_id, NUM_CLIENTS).train
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    total = 0.0
    for start in range(0, len(data), 16):
        x = torch.from_numpy(data.x[start : start + 16])
        y = torch.from_numpy(data.y[start : start + 16])
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(y)
    return total / len(data), len(data)


# ---- quickstart: Flower's Message-API ClientApp, the project's Message-API strategies --

quickstart_client = MessageClientApp()


@quickstart_client.train()
def quickstart_train(msg: Message, context: Context) -> Message:
    model = net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    train_loss, num_examples = train_epoch(model, int(context.node_config["partition-id"]))
    metrics = {"train_loss": train_loss, "num-examples": num_examples}
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)}
    )
    return Message(content=content, reply_to=msg)


def quickstart_server(results: dict[str, Any]) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        for name, rule in sorted(strategies.REGISTRY.items()):
            # The client reports only train_loss: the quality rules weigh by it.
            quality = (
                {"quality_metric": "train_loss"}
                if "quality_metric" in (rule.Options.field_names())
                else {}
            )
            strategy = strategies.build(name, api="message", fraction_evaluate=0.0, **quality)

            def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
                model = net()
                model.load_state_dict(arrays.to_torch_state_dict())
                return MetricRecord(central_loss(model))

            result = strategy.start(
                grid=grid,
                initial_arrays=ArrayRecord(net().state_dict()),
                num_rounds=ROUNDS,
                evaluate_fn=global_evaluate,
            )
            results[name] = {
                "loss": [result.evaluate_metrics_serverapp[r]["loss"] for r in range(ROUNDS + 1)],
                "accepted": [
                    result.train_metrics_clientapp[r][ROUND + "accepted"]
                    for r in range(1, ROUNDS + 1)
                ],
            }

    return app


# ---- flower-fedavg: the project's ClientApp under Flower's own FedAvg ------------------


def flower_fedavg_server(results: dict[str, Any]) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        model = net()

        def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            set_weights(model, arrays.to_numpy_ndarrays())
            return MetricRecord(central_loss(model))

        result = FlowerFedAvg(fraction_evaluate=1.0).start(
            grid=grid,
            initial_arrays=ArrayRecord(get_weights(model)),
            num_rounds=ROUNDS,
            evaluate_fn=global_evaluate,
        )
        results["accuracy"] = [
            result.evaluate_metrics_serverapp[r]["accuracy"] for r in range(ROUNDS + 1)
        ]
        results["federated"] = dict(result.evaluate_metrics_clientapp[ROUNDS])

    return app


def simulate(server_app: Any, client_app: Any, results: dict[str, Any], out: Path) -> None:
    """Run the two apps on Flower's simulation engine; write ``results`` to ``out``."""
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=NUM_CLIENTS,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    out.write_text(json.dumps(results))


def main(scenario: str, out: Path) -> None:
    results: dict[str, Any] = {}
    apps: dict[str, tuple[Any, Any]] = {
        "quickstart": (quickstart_server(results), quickstart_client),
        "flower-fedavg": (flower_fedavg_server(results), client_app_for(CFG)),
    }
    simulate(*apps[scenario], results, out)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
