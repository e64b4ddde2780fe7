"""Stand-ins for what Flower hands a legacy strategy: client proxies and fit results, and
:class:`LegacyHalf`, which hands :class:`tests.fakes.Update` to a legacy strategy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.compat.common.recorddict_compat import fitins_to_recorddict, recorddict_to_fitres
from flwr.server import strategy as flower_strategies
from flwr.server.strategy import FedAvg as FlowersFedAvg

import strategies
from strategies.legacy import LegacyStrategy
from tests.fakes import Half, Update, own_names

OK = Status(code=Code.OK, message="")


@dataclass(frozen=True)
class Proxy:
    """Stand-in for a ClientProxy: the strategies only read ``cid``."""

    cid: str


def fit_res(arrays: Sequence[np.ndarray], num_examples: Any, **metrics: Any) -> FitRes:
    return FitRes(
        status=OK,
        parameters=ndarrays_to_parameters(list(arrays)),
        num_examples=num_examples,
        metrics=dict(metrics),
    )


def results_of(
    models: Sequence[Sequence[np.ndarray]],
    counts: Sequence[int],
    metrics: Sequence[dict[str, Any]] | None = None,
    prefix: str = "c",
) -> list[tuple[Proxy, FitRes]]:
    metrics = metrics or [{} for _ in models]
    return [
        (Proxy(f"{prefix}{i}"), fit_res(m, n, **q))
        for i, (m, n, q) in enumerate(zip(models, counts, metrics, strict=True))
    ]


def make(cls: Callable[..., LegacyStrategy], global_model=None, **kwargs):
    """Build a strategy; with ``global_model``, start from it via initial_parameters."""
    if global_model is None:
        return cls(**kwargs)
    strategy = cls(initial_parameters=ndarrays_to_parameters(list(global_model)), **kwargs)
    assert strategy.initialize_parameters(client_manager=None) is not None
    return strategy


class NoClients:
    """A client manager with nobody connected, enough for ``configure_fit`` to run."""

    def num_available(self) -> int:
        return 0

    def all(self) -> dict[str, Any]:
        return {}

    def sample(self, num_clients: int, min_num_clients: int | None = None, criterion=None):  # type: ignore[no-untyped-def]
        return []


class OneClient(NoClients):
    """A client manager with one client connected, ``"1"``."""

    def num_available(self) -> int:
        return 1

    def all(self) -> dict[str, Any]:
        return {"1": Proxy("1")}

    def sample(self, num_clients: int, min_num_clients: int | None = None, criterion=None):  # type: ignore[no-untyped-def]
        return [Proxy("1")]


class LegacyHalf(Half):
    """The legacy half's strategies (:mod:`strategies.legacy`); the i-th update comes from
    the client ``str(i + 1)``."""

    name = "legacy"
    flowers_class = FlowersFedAvg
    flowers_module = flower_strategies
    fraction = "fraction_fit"

    @staticmethod
    def train_message(weights: Sequence[np.ndarray], config: dict[str, Any]) -> Message:
        ins = FitIns(ndarrays_to_parameters(list(weights)), {"server-round": 1, **config})
        content = fitins_to_recorddict(ins, keep_input=True)
        return Message(content, dst_node_id=101, message_type="train")

    @staticmethod
    def train_loss(reply: Message) -> float:
        metrics = recorddict_to_fitres(reply.content, keep_input=False).metrics
        return float(metrics["train_loss"])

    def flowers_fedavg(self, updates: Sequence[Update]) -> list[np.ndarray]:
        parameters, _ = FlowersFedAvg().aggregate_fit(1, *self.prepare(updates))
        assert parameters is not None
        return parameters_to_ndarrays(parameters)

    def flowers(
        self, name: str, global_model: Sequence[np.ndarray], **kwargs: Any
    ) -> tuple[Any, Callable[[int, Sequence[Update]], list[np.ndarray]]]:
        initial = ndarrays_to_parameters(list(global_model))
        strategy = getattr(self.flowers_module, name)(initial_parameters=initial, **kwargs)

        def round_(server_round: int, updates: Sequence[Update]) -> list[np.ndarray]:
            parameters, _ = strategy.aggregate_fit(server_round, *self.prepare(updates))
            return parameters_to_ndarrays(parameters)

        return strategy, round_

    @staticmethod
    def train_config(strategy: Any) -> dict[str, Any]:
        (_, ins), *_ = strategy.configure_fit(1, ndarrays_to_parameters([np.zeros(1)]), OneClient())
        return dict(ins.config)

    def make(
        self, name: str, global_model: Sequence[np.ndarray] | None = None, **knobs: Any
    ) -> Any:
        if global_model is None:
            return strategies.build(name, api=self.name, **knobs)
        initial = ndarrays_to_parameters(list(global_model))
        strategy = strategies.build(name, api=self.name, initial_parameters=initial, **knobs)
        strategy.initialize_parameters(client_manager=None)  # type: ignore[attr-defined]
        return strategy

    def set_global(self, strategy: Any, global_model: Sequence[np.ndarray]) -> None:
        strategy.configure_fit(1, ndarrays_to_parameters(list(global_model)), NoClients())

    def prepare(self, updates: Sequence[Update], failures: Sequence[BaseException] = ()) -> Any:
        results = [(Proxy(str(u.node or i + 1)), self.fit_res(u)) for i, u in enumerate(updates)]
        return results, list(failures)

    def run(
        self, strategy: Any, prepared: Any, server_round: int = 1
    ) -> tuple[list[np.ndarray] | None, dict[str, Any]]:
        parameters, metrics = self.call(strategy, prepared, server_round)
        arrays = None if parameters is None else parameters_to_ndarrays(parameters)
        return arrays, own_names(strategy, metrics)

    def call(self, strategy: Any, prepared: Any, server_round: int = 1) -> Any:
        results, failures = prepared
        return strategy.aggregate_fit(server_round, results, failures)

    @staticmethod
    def fit_res(update: Update) -> FitRes:
        if update.tensors is None:
            return fit_res(update.arrays, update.num_examples, **update.metrics)
        parameters = Parameters(tensors=list(update.tensors), tensor_type="numpy.ndarray")
        return FitRes(OK, parameters, update.num_examples, dict(update.metrics))
