"""Stand-ins for what Flower hands a Message-API strategy: a grid's nodes and replies.

Replies are built the way Flower's quickstart ClientApp builds them: one ``ArrayRecord``
and one ``MetricRecord`` holding ``num-examples``. :class:`Update` describes a client's
reply whichever Flower API half carries it, and :class:`MessageHalf` hands updates to a
Message-API strategy (``tests/halves.py`` lists the halves this copy has).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import strategy as flower_strategies
from flwr.serverapp.strategy import FedAvg as FlowersFedAvg

import strategies
from strategies.core.metrics import ROUND
from strategies.message import MessageStrategy


class Nodes:
    """A grid with nodes 1..n connected, enough for ``configure_train`` to sample them."""

    def __init__(self, count: int) -> None:
        self.count = count

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.count + 1))


def sent_to(node: int) -> Message:
    return Message(RecordDict(), dst_node_id=node, message_type="train")


def reply(node: int, arrays: Sequence[np.ndarray], num_examples: Any, **metrics: Any) -> Message:
    """A quickstart-style reply from ``node`` (no ``num-examples`` when it is None)."""
    reported = {**metrics} if num_examples is None else {**metrics, "num-examples": num_examples}
    content = RecordDict({"arrays": ArrayRecord(list(arrays)), "metrics": MetricRecord(reported)})
    return Message(content, reply_to=sent_to(node))


def replies_of(
    models: Sequence[Sequence[np.ndarray]],
    counts: Sequence[Any],
    metrics: Sequence[dict[str, Any]] | None = None,
) -> list[Message]:
    """One reply a model, from nodes 1, 2, ... (named ``1``, ``2``, ... in the results)."""
    metrics = metrics or [{} for _ in models]
    return [
        reply(i + 1, m, n, **q)
        for i, (m, n, q) in enumerate(zip(models, counts, metrics, strict=True))
    ]


def start(strategy: MessageStrategy, global_model: Sequence[np.ndarray], nodes: int) -> None:
    """``configure_train`` as ``start`` calls it: the strategy learns the global model."""
    strategy.configure_train(1, ArrayRecord(list(global_model)), ConfigRecord(), Nodes(nodes))  # type: ignore[arg-type]


def message_with(
    global_model: Sequence[np.ndarray], name: str, nodes: int, **knobs: Any
) -> MessageStrategy:
    """Rule ``name``'s Message-API strategy, started from ``global_model`` on ``nodes`` nodes."""
    strategy = strategies.build(name, min_available_nodes=1, min_train_nodes=1, **knobs)
    assert isinstance(strategy, MessageStrategy)
    start(strategy, global_model, nodes)
    return strategy


def aggregated(
    strategy: MessageStrategy, server_round: int, replies: Sequence[Message]
) -> tuple[list[np.ndarray] | None, dict[str, Any]]:
    """``aggregate_train`` of ``replies``: the new model (None: nothing aggregated) and the
    metrics, as :func:`own_names` gives them."""
    arrays, metrics = strategy.aggregate_train(server_round, replies)
    reported = own_names(strategy, metrics or {})
    return (None if arrays is None else arrays.to_numpy_ndarrays()), reported


def own_names(strategy: Any, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Flower's train metrics, the rule's counts under their own names (``results``, ...),
    with the weights the round gave (JSON, as a run's record has them)."""
    reported = {key.removeprefix(ROUND): value for key, value in metrics.items()}
    if strategy.last_result is not None and "weights" in strategy.last_result.metrics:
        reported["weights"] = strategy.last_result.metrics["weights"]
    return reported


@dataclass
class Update:
    """One client's reply: its layers (or ``tensors``, raw ``.npy`` bytes that may not
    decode), its example count and its metrics; ``node`` names the client (0: its place in
    the round, from 1)."""

    arrays: Sequence[np.ndarray] = ()
    num_examples: Any = 1
    metrics: dict[str, Any] = field(default_factory=dict)
    tensors: Sequence[bytes] | None = None
    node: int = 0


def updates_of(
    models: Sequence[Sequence[np.ndarray]],
    counts: Sequence[Any],
    metrics: Sequence[dict[str, Any]] | None = None,
) -> list[Update]:
    return [
        Update(m, n, dict(q), node=i + 1)
        for i, (m, n, q) in enumerate(
            zip(models, counts, metrics or [{} for _ in models], strict=True)
        )
    ]


class Half:
    """What every API half's stand-in does the same way."""

    name: str
    flowers_module: Any  # Flower's own strategies of this half

    def ours(self, name: str) -> Any:
        """This project's strategy class ``name`` on this half (e.g. Flower's names)."""
        module, _, _ = strategies.ADAPTERS[self.name].rpartition(".")
        return getattr(importlib.import_module(module), name)

    def aggregate(
        self,
        strategy: Any,
        updates: Sequence[Update],
        failures: Sequence[BaseException] = (),
        server_round: int = 1,
    ) -> tuple[list[np.ndarray] | None, dict[str, Any]]:
        """The round's new model (None: nothing aggregated) and its metrics."""
        return self.run(strategy, self.prepare(updates, failures), server_round)

    def prepare(self, updates: Sequence[Update], failures: Sequence[BaseException] = ()) -> Any:
        """What the strategy is handed for ``updates`` and ``failures``."""
        raise NotImplementedError

    def run(
        self, strategy: Any, prepared: Any, server_round: int = 1
    ) -> tuple[list[np.ndarray] | None, dict[str, Any]]:
        """The round's new model and its metrics, from what :meth:`prepare` made."""
        raise NotImplementedError


class MessageHalf(Half):
    """The Message API's strategies (:mod:`strategies.message`); the i-th update comes from
    node i + 1, so the results name it ``str(i + 1)``."""

    name = "message"
    flowers_class = FlowersFedAvg  # what every strategy of this half is
    flowers_module = flower_strategies
    fraction = "fraction_train"  # Flower's name of the share of clients sampled to train

    @staticmethod
    def train_message(weights: Sequence[np.ndarray], config: dict[str, Any]) -> Message:
        """What this half's server sends a client to train ``weights`` with ``config``."""
        sent = ConfigRecord({"server-round": 1, **config})
        content = RecordDict({"arrays": ArrayRecord(list(weights)), "config": sent})
        return Message(content, dst_node_id=101, message_type="train")

    @staticmethod
    def train_loss(reply: Message) -> float:
        """The training loss a client's reply to :meth:`train_message` reports."""
        return float(reply.content["metrics"]["train_loss"])

    def flowers_fedavg(self, updates: Sequence[Update]) -> list[np.ndarray]:
        """What Flower's own FedAvg of this half makes of ``updates``."""
        arrays, _ = FlowersFedAvg().aggregate_train(1, self.prepare(updates))
        assert arrays is not None
        return arrays.to_numpy_ndarrays()

    def flowers(
        self, name: str, global_model: Sequence[np.ndarray], **kwargs: Any
    ) -> tuple[Any, Callable[[int, Sequence[Update]], list[np.ndarray]]]:
        """Flower's own strategy ``name`` of this half, from ``global_model``, and a function giving
        its model after a round of updates (the round configured first, as Flower's loop does)."""
        strategy = getattr(self.flowers_module, name)(**kwargs)
        current = list(global_model)

        def round_(server_round: int, updates: Sequence[Update]) -> list[np.ndarray]:
            nonlocal current
            arrays = ArrayRecord(current)
            strategy.configure_train(server_round, arrays, ConfigRecord(), Nodes(len(updates)))
            record, _ = strategy.aggregate_train(server_round, self.prepare(updates))
            current = record.to_numpy_ndarrays()
            return current

        return strategy, round_

    @staticmethod
    def train_config(strategy: Any) -> dict[str, Any]:
        """The config ``strategy`` (Flower's or ours) sends a client to train in round 1."""
        arrays = ArrayRecord([np.zeros(1)])
        message, *_ = strategy.configure_train(1, arrays, ConfigRecord(), Nodes(2))
        return dict(message.content["config"])

    def make(
        self, name: str, global_model: Sequence[np.ndarray] | None = None, **knobs: Any
    ) -> Any:
        """Rule ``name``'s strategy (with ``global_model`` as the current model, if given)."""
        strategy = strategies.build(
            name, api=self.name, min_available_nodes=1, min_train_nodes=1, **knobs
        )
        if global_model is not None:
            self.set_global(strategy, global_model)
        return strategy

    def set_global(self, strategy: Any, global_model: Sequence[np.ndarray]) -> None:
        """Hand the strategy the current global model, as a round's configuration does."""
        strategy.set_global_model(ArrayRecord(list(global_model)))

    def prepare(self, updates: Sequence[Update], failures: Sequence[BaseException] = ()) -> Any:
        """What the strategy is handed for ``updates`` and ``failures`` (replies)."""
        replies = [self.reply(u.node or i + 1, u) for i, u in enumerate(updates)]
        return replies + [
            Message(Error(code=0, reason=str(f)), reply_to=sent_to(900 + i))
            for i, f in enumerate(failures)
        ]

    def run(
        self, strategy: Any, prepared: Any, server_round: int = 1
    ) -> tuple[list[np.ndarray] | None, dict[str, Any]]:
        return aggregated(strategy, server_round, prepared)

    def call(self, strategy: Any, prepared: Any, server_round: int = 1) -> Any:
        """The strategy's own aggregation call, its result as it returns it."""
        return strategy.aggregate_train(server_round, prepared)

    @staticmethod
    def reply(node: int, update: Update) -> Message:
        carried = (update.num_examples, *update.metrics.values())
        if any(isinstance(v, bool | str) for v in carried):
            pytest.skip("a MetricRecord carries numbers only: no client can send this")
        if update.tensors is None:
            return reply(node, update.arrays, update.num_examples, **update.metrics)
        record = ArrayRecord(
            {
                str(i): Array(dtype="float32", shape=(1,), stype="numpy.ndarray", data=data)
                for i, data in enumerate(update.tensors)
            }
        )
        reported = {**update.metrics, "num-examples": update.num_examples}
        content = RecordDict({"arrays": record, "metrics": MetricRecord(reported)})
        return Message(content, reply_to=sent_to(node))
