"""Flower ClientApp: :class:`FlowerClient` trains and evaluates on one client's partition; the
app answers the Message API (an ``ArrayRecord`` and a ``MetricRecord`` with ``num-examples``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.common import NDArrays, Scalar
from torch import nn

from fl_app.engine.loopback import loopback_in_flowers_simulation
from fl_app.kit.config import RunConfig
from fl_app.kit.data import ClientData, data_spec, load_client_data, task_of
from fl_app.kit.seeds import seed_for
from fl_app.kit.training import pick_device, train_as_configured
from fl_app.parts.faulty_client import faulty  # part: faults
from fl_app.parts.legacy.client import answering_legacy, securely_weighted  # part: legacy-api
from fl_app.parts.private_client import private  # part: dp
from fl_app.parts.ray_nodes import on_ray_node  # part: ray-cluster
from fl_app.task import DataSpec, build_model, evaluate, get_weights, set_weights
from strategies.message import TEXT_METRICS
from strategies.pools import named_partition  # part: fast-engine
from strategies.sampling import NUM_PARTITIONS_KEY, PARTITION_KEY

loopback_in_flowers_simulation()  # before Flower's simulation runtime starts its Ray


@functools.lru_cache(maxsize=4)
def _model(name: str, spec: DataSpec, seed: int, device: str) -> nn.Module:
    # One model per process, reused by every client it runs: fit and evaluate overwrite all
    # of its weights first, so nothing leaks from one client to the next.
    return build_model(name, spec.input_shape, spec.num_classes, seed).to(device)


class FlowerClient(NumPyClient):
    """``fit`` trains on the partition and reports ``train_loss``, then ``val_loss`` and
    ``val_accuracy`` on its held-out validation split (the signal of the quality-weighted
    rules); ``evaluate`` scores the global model on that split."""

    def __init__(self, cfg: RunConfig, partition_id: int, data: ClientData, model: nn.Module):
        self.cfg = cfg
        self.task = task_of(cfg.dataset)
        self.partition_id = partition_id
        self.data = data
        self.model = model
        self.device = torch.device(next(model.parameters()).device)

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        return get_weights(self.model)

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        set_weights(self.model, parameters)
        server_round = int(config.get("server-round", 0))
        seed = seed_for(self.cfg.seed, "local-training", server_round, self.partition_id)
        train = self.data.train
        loss = train_as_configured(self.cfg, self.model, train, device=self.device, seed=seed)
        val = evaluate(self.model, self.data.val, device=self.device, task=self.task)
        metrics: dict[str, Scalar] = {"train_loss": loss, **val.metrics(prefix="val_")}
        return get_weights(self.model), len(train), metrics

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        set_weights(self.model, parameters)
        result = evaluate(self.model, self.data.val, device=self.device, task=self.task)
        metrics: dict[str, Scalar] = {k: v for k, v in result.metrics().items() if k != "loss"}
        return result.loss, result.num_examples, metrics


def make_client(cfg: RunConfig, node_config: dict[str, Any]) -> NumPyClient:
    """The client of the node whose ``node_config`` names its partition."""
    partition_id = int(node_config[PARTITION_KEY])
    num_partitions = int(node_config[NUM_PARTITIONS_KEY])
    data = load_client_data(cfg, partition_id, num_partitions)
    model = _model(cfg.model, data_spec(cfg), cfg.seed, str(pick_device(cfg.device)))
    honest = FlowerClient(cfg, partition_id, data, model)
    client: NumPyClient = honest
    client = on_ray_node(client)  # part: ray-cluster
    client = private(cfg, client, partition_id)  # part: dp
    client = faulty(cfg, client, honest, num_partitions)  # part: faults
    client = securely_weighted(cfg, client)  # part: legacy-api
    return client


def sent_config(message: Message, key: str) -> Any:
    """The value of ``key`` in any of the message's ConfigRecords, or None."""
    for record in message.content.config_records.values():
        if key in record:
            return record[key]
    return None


def partition_config(message: Message, node: dict[str, Any]) -> dict[str, Any]:
    """``node`` (a node config), which the message's client runs with: a message naming
    another partition is refused, a node runs its own partition only."""
    named = {k: sent_config(message, k) for k in (PARTITION_KEY, NUM_PARTITIONS_KEY)}
    own = {k: node.get(k) for k in named}
    if named[PARTITION_KEY] is not None and own != named:
        raise ValueError(
            f"this node is partition {own[PARTITION_KEY]} of {own[NUM_PARTITIONS_KEY]} "
            f"(its node config), the server sent a message for partition "
            f"{named[PARTITION_KEY]} of {named[NUM_PARTITIONS_KEY]}: a node runs "
            "its own partition only"
        )
    return node


def _the_one(records: Any, key: str, what: str, *, optional: bool = False) -> Any:
    """The record named ``key`` (Flower's default), or the message's only record of its
    kind; None when there is none and it is ``optional``."""
    if key in records:
        return records[key]
    if len(records) == 1:
        return next(iter(records.values()))
    if optional and not records:
        return None
    raise ValueError(f"expected one {what} (named {key!r}) in the message, got {list(records)}")


def _received(message: Message) -> tuple[list[str], NDArrays, dict[str, Scalar]]:
    """The layer names, arrays and config the server sent."""
    content = message.content
    arrays = _the_one(content.array_records, "arrays", "ArrayRecord")
    config = _the_one(content.config_records, "config", "ConfigRecord", optional=True)
    return list(arrays.keys()), arrays.to_numpy_ndarrays(), dict(config or {})


# The run config a message is for, when one engine runs several runs.
ConfigFor = Callable[[Context, Message], RunConfig]


def client_app_for(
    cfg: RunConfig | None = None,
    *,
    config: ConfigFor | None = None,
    pooled: bool = False,  # part: fast-engine
) -> ClientApp:
    """A ClientApp bound to ``cfg`` (Flower's ``run_simulation`` gives clients no run config),
    or reading the run config when None (``config``: the run config each message is for)."""

    def config_of(context: Context, message: Message) -> RunConfig:
        if config is not None:
            return config(context, message)
        return cfg or RunConfig.from_mapping(context.run_config)

    def client(context: Context, message: Message) -> NumPyClient:
        node = dict(context.node_config)
        node |= named_partition(message) if pooled else {}  # part: fast-engine
        return make_client(config_of(context, message), partition_config(message, node))

    client_app = ClientApp()

    @client_app.train()
    def train_message(message: Message, context: Context) -> Message:
        numpy_client = client(context, message)
        keys, arrays, sent = _received(message)
        trained, num_examples, metrics = numpy_client.fit(arrays, sent)
        # The server's layer names come back (a torch state_dict's names survive the round).
        names = keys if len(keys) == len(trained) else [str(i) for i in range(len(trained))]
        record = ArrayRecord({name: Array(a) for name, a in zip(names, trained, strict=True)})
        # A MetricRecord holds numbers only: text metrics go in a ConfigRecord.
        text: dict[str, Any] = {k: v for k, v in metrics.items() if isinstance(v, str)}
        numbers: dict[str, Any] = {k: v for k, v in metrics.items() if k not in text}
        numbers["num-examples"] = num_examples
        content = RecordDict({"arrays": record, "metrics": MetricRecord(numbers)})
        if text:
            content[TEXT_METRICS] = ConfigRecord(text)
        return Message(content=content, reply_to=message)

    @client_app.evaluate()
    def evaluate_message(message: Message, context: Context) -> Message:
        numpy_client = client(context, message)
        _, arrays, sent = _received(message)
        loss, num_examples, metrics = numpy_client.evaluate(arrays, sent)
        reported: dict[str, Any] = {"loss": loss, **metrics, "num-examples": num_examples}
        return Message(content=RecordDict({"metrics": MetricRecord(reported)}), reply_to=message)

    @client_app.query()
    def query_message(message: Message, context: Context) -> Message:
        """The node's partition id, from its node config (the server's seeded sampling asks)."""
        own: dict[str, Any] = {k: v for k, v in context.node_config.items() if k == PARTITION_KEY}
        return Message(content=RecordDict({"config": ConfigRecord(own)}), reply_to=message)

    client_app = answering_legacy(client_app, client, config_of)  # part: legacy-api
    return client_app


app = client_app_for()
