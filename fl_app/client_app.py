"""Flower ClientApp: :class:`FlowerClient` trains and evaluates on one client's partition; the
app answers the Message API (an ``ArrayRecord`` and a ``MetricRecord`` with ``num-examples``)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.common import NDArrays, Scalar
from torch import nn

from fl_app.engine.loopback import loopback_in_flowers_simulation
from fl_app.kit.config import RunConfig
from fl_app.kit.data import data_spec, load_client_data, task_of
from fl_app.kit.seeds import seed_for
from fl_app.kit.training import pick_device, train_as_configured
from fl_app.parts.client_state import entering, leaving, personal  # part: client-state
from fl_app.parts.faulty_client import faulty  # part: faults
from fl_app.parts.legacy.client import answering_legacy, securely_weighted  # part: legacy-api
from fl_app.parts.private_client import private  # part: dp
from fl_app.parts.ray_nodes import on_ray_node  # part: ray-cluster
from fl_app.parts.scaffold import scaffold  # part: scaffold
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
    """``fit`` trains on the partition, then reports ``train_loss`` and the ``val_*`` metrics of
    its held-out validation split (the quality-weighted rules' signal); ``evaluate`` scores there."""

    def __init__(self, cfg: RunConfig, partition_id: int, num_partitions: int) -> None:
        self.cfg, self.partition_id, self.task = cfg, partition_id, task_of(cfg.dataset)
        self.data = load_client_data(cfg, partition_id, num_partitions)
        self.device = pick_device(cfg.device)
        self.model = _model(cfg.model, data_spec(cfg), cfg.seed, str(self.device))

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        return get_weights(self.model)

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        set_weights(self.model, parameters)
        server_round = int(config.get("server-round", 0))
        seed = seed_for(self.cfg.seed, "local-training", server_round, self.partition_id)
        train, cfg = self.data.train, self.cfg
        if (mu := config.get("proximal-mu", config.get("proximal_mu"))) is not None:
            cfg = dataclasses.replace(cfg, proximal_mu=float(mu))  # as Flower's FedProx sends it
        loss = train_as_configured(cfg, self.model, train, device=self.device, seed=seed)
        val = evaluate(self.model, self.data.val, device=self.device, task=self.task)
        metrics: dict[str, Scalar] = {"train_loss": loss, **{f"val_{k}": v for k, v in val.items()}}
        return get_weights(self.model), len(train), metrics

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        set_weights(self.model, parameters)
        metrics = evaluate(self.model, self.data.val, device=self.device, task=self.task)
        return metrics.pop("loss"), len(self.data.val), dict(metrics)


def make_client(cfg: RunConfig, node_config: dict[str, Any]) -> NumPyClient:
    """The client of the node whose ``node_config`` names its partition."""
    partition_id = int(node_config[PARTITION_KEY])
    num_partitions = int(node_config[NUM_PARTITIONS_KEY])
    client: NumPyClient = FlowerClient(cfg, partition_id, num_partitions)
    honest = client  # part: faults
    client = scaffold(cfg, client)  # part: scaffold
    client = personal(cfg, client)  # part: client-state
    client = on_ray_node(client)  # part: ray-cluster
    client = private(cfg, client, partition_id)  # part: dp
    client = faulty(cfg, client, honest, num_partitions)  # part: faults
    client = securely_weighted(cfg, client)  # part: legacy-api
    return client


def sent_config(message: Message, key: str) -> Any:
    """The value of ``key`` in any of the message's ConfigRecords, or None."""
    return next((r[key] for r in message.content.config_records.values() if key in r), None)


def _the_one(records: Any, key: str) -> Any:
    """The record named ``key`` (Flower's name for it), or the message's only one of its kind."""
    if key not in records and len(records) != 1:
        raise ValueError(f"expected one record named {key!r} in the message, got {list(records)}")
    return records[key] if key in records else next(iter(records.values()))


def client_app_for(
    cfg: RunConfig | Callable[[Context, Message], RunConfig] | None = None,
    pooled: bool = False,  # part: fast-engine
) -> ClientApp:
    """A ClientApp for run config ``cfg`` (Flower's ``run_simulation`` gives clients none), for
    the one a function of context and message gives (several runs), or (None) the context's."""

    def config_of(context: Context, message: Message) -> RunConfig:
        if callable(cfg):
            return cfg(context, message)
        return cfg or RunConfig.from_mapping(context.run_config)

    def client(context: Context, message: Message) -> NumPyClient:
        node = dict(context.node_config)
        node |= named_partition(message) if pooled else {}  # part: fast-engine
        keys = (PARTITION_KEY, NUM_PARTITIONS_KEY)
        named, own = [sent_config(message, k) for k in keys], [node.get(k) for k in keys]
        if named[0] is not None and named != own:
            raise ValueError(
                "this node is partition {} of {} (its node config), the server sent a message "
                "for partition {} of {}: a node runs its own partition only".format(*own, *named)
            )
        return make_client(config_of(context, message), node)

    def received(message: Message) -> tuple[list[str], NDArrays, dict[str, Scalar]]:
        """The layer names, arrays and config (none: empty) the server sent."""
        arrays = _the_one(message.content.array_records, "arrays")
        configs = message.content.config_records
        sent = dict(_the_one(configs, "config")) if configs else {}
        return list(arrays.keys()), arrays.to_numpy_ndarrays(), sent

    client_app = ClientApp()

    @client_app.train()
    def train_message(message: Message, context: Context) -> Message:
        numpy_client = client(context, message)
        keys, arrays, sent = received(message)
        state = entering(message, sent, config_of(context, message), context)  # part: client-state
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
        content.update(leaving(state))  # part: client-state
        return Message(content=content, reply_to=message)

    @client_app.evaluate()
    def evaluate_message(message: Message, context: Context) -> Message:
        numpy_client = client(context, message)
        _, arrays, sent = received(message)
        entering(message, sent, config_of(context, message), context)  # part: client-state
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
