"""Flower's step-by-step tutorial app against this project's legacy half:
``python -m tests.legacy_apps OUT.json``.

A NumPyClient as in Flower's step-by-step tutorial (it reports only ``train_loss``) under
the legacy ``strategies.QualityWeighted`` with default settings: nothing can be
aggregated, and the run must stop with an error instead of freezing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flwr.client import Client, ClientApp, NumPyClient
from flwr.common import Context, NDArrays, Scalar, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

import strategies
from fl_app.task import get_weights, set_weights
from tests.message_apps import ROUNDS, net, simulate, train_epoch


class TutorialClient(NumPyClient):
    def __init__(self, partition_id: int) -> None:
        self.partition_id = partition_id
        self.model = net()

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        set_weights(self.model, parameters)
        train_loss, num_examples = train_epoch(self.model, self.partition_id)
        return get_weights(self.model), num_examples, {"train_loss": train_loss}


def tutorial_client(context: Context) -> Client:
    return TutorialClient(int(context.node_config["partition-id"])).to_client()


def tutorial_server(context: Context) -> ServerAppComponents:
    strategy = strategies.QualityWeighted(
        initial_parameters=ndarrays_to_parameters(get_weights(net())), fraction_evaluate=0.0
    )
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=ROUNDS + 2))


if __name__ == "__main__":
    apps = ServerApp(server_fn=tutorial_server), ClientApp(client_fn=tutorial_client)
    simulate(*apps, {}, Path(sys.argv[1]))
