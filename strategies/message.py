"""The rules as Flower Message-API strategies: drop-ins for ``flwr.serverapp.strategy.FedAvg``,
e.g. ``Hybrid(fraction_train=0.5, hybrid_lambda=0.3).start(grid=grid, initial_arrays=...,
num_rounds=10)``. Flower's ``FedAvg`` samples nodes and sends the messages; the rule aggregates."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any

from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords  # its default

from strategies.core.adapter import RuleAdapter
from strategies.core.codec import decode_tensors, encode_tensors
from strategies.core.metrics import evaluation_metrics, train_metrics, weighted_metrics
from strategies.core.update import ClientUpdate
from strategies.fedavg import FedAvgRule
from strategies.hybrid import HybridRule
from strategies.pools import PooledMessages  # part: fast-engine
from strategies.quality_weighted import QualityWeightedRule
from strategies.sampling import PARTITION_KEY
from strategies.scaffold_messages import ScaffoldMessages  # part: scaffold
from strategies.server_optimizer import flower_optimizers  # part: server-optimizer
from strategies.simple_average import SimpleAverageRule
from strategies.stateful_messages import StatefulMessages  # part: client-state

# The ConfigRecord of a train reply holding its text metrics (a MetricRecord holds numbers).
TEXT_METRICS = "text-metrics"


class MessageStrategy(
    PooledMessages,  # part: fast-engine
    ScaffoldMessages,  # part: scaffold
    StatefulMessages,  # part: client-state
    RuleAdapter,
    FlowerFedAvg,
):
    """Flower's Message-API ``FedAvg`` (its arguments, keyword-only) aggregating with a rule:
    ``rule``, or one built from ``options`` or from its knobs; ``score_fn(arrays) -> metrics``
    scores a model on server-held data; ``sampling_seed``: seeded sampling
    (:mod:`strategies.sampling`). A bad reply is rejected, not the round."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # Flower's positional arguments too
        self._keys: list[str] = []  # the global model's layer names
        self._sent: list[Message] = []  # this round's train messages

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.set_global_model(arrays)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._sent = self._reseeded(server_round, "train", messages, grid)
        self.attach_states(self._sent)  # part: client-state
        return self._sent

    def set_global_model(self, arrays: ArrayRecord | Mapping[str, Any]) -> None:
        """The model replies are checked against and the step starts from; its keys name layers."""
        if not isinstance(arrays, ArrayRecord):  # arrays by name, as Flower's FedOpt holds them
            arrays = ArrayRecord({k: Array(v) for k, v in dict[str, Any](arrays).items()})
        self._keys = list(arrays.keys())
        self.rule.global_model = decode_tensors([a.data for a in arrays.values()])

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        messages = self._reseeded(server_round, "evaluate", messages, grid)
        self.attach_states(messages)  # part: client-state
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        updates: list[ClientUpdate] = []
        failures: list[str] = []
        answered: set[Hashable] = set()
        contents: dict[str, RecordDict] = {}
        for msg in replies:
            key, name, who = self.sender(msg.metadata.src_node_id, msg.metadata.reply_to_message_id)
            answered.add(key)
            if msg.has_error():
                failures.append(f"{who}: {msg.error.reason}")
                continue
            update = self._update_of(name, msg.content)
            contents[update.client_id] = msg.content
            updates.append(update)
        for sent in self._sent:
            key, _, who = self.sender(sent.metadata.dst_node_id, sent.metadata.message_id)
            if key not in answered:
                failures.append(f"{who}: no reply (round timeout)")
        result = self.last_result = self.rule.aggregate(server_round, updates, failures)
        self.keep_states(result.accepted, contents)  # part: client-state
        from_clients: Mapping[str, Any] = {}
        if result.accepted and self.train_metrics_aggr_fn is not aggregate_metricrecords:
            accepted = [contents[u.client_id] for u in result.accepted]
            from_clients = self.train_metrics_aggr_fn(accepted, self.weighted_by_key)
        elif result.accepted:
            from_clients = weighted_metrics([(u.num_examples, u.metrics) for u in result.accepted])
        record = self._array_record(result.arrays)
        if record is not None:  # the next round's model, should no configure_train come first
            self.set_global_model(record)
        return record, MetricRecord(train_metrics(from_clients, result.metrics))

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Example-weighted metrics of the replies with a ``num-examples``, in a canonical order."""
        key = self.weighted_by_key
        usable = []
        for content in (msg.content for msg in replies if not msg.has_error()):
            record = self._metric_record(content)
            n = record.get(key)
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                usable.append((content, n, {k: v for k, v in record.items() if k != key}))
        if not usable:
            return None
        if self.evaluate_metrics_aggr_fn is not aggregate_metricrecords:  # Flower's mean: ours
            return self.evaluate_metrics_aggr_fn([c for c, _, _ in usable], key)
        aggregated: dict[str, Any] = evaluation_metrics([(n, m) for _, n, m in usable])
        return MetricRecord(aggregated)

    def _reseeded(
        self, server_round: int, purpose: str, messages: list[Message], grid: Grid
    ) -> list[Message]:
        """Flower's messages, readdressed to the seeded sampler's choice among the nodes."""
        chosen = self.reseed(
            server_round,
            purpose,
            [m.metadata.dst_node_id for m in messages],
            sorted(grid.get_node_ids()),
            lambda nodes: ask_partition_ids(grid, nodes, self.query_timeout),
        )
        for message, node in zip(messages, chosen, strict=False):
            message.metadata.dst_node_id = node
        return messages[: len(chosen)]

    def _metric_record(self, content: RecordDict) -> MetricRecord:
        """The reply's MetricRecord holding ``weighted_by_key`` (or its only one)."""
        records = content.metric_records
        return next(
            (r for r in records.values() if self.weighted_by_key in r),
            next(iter(records.values()), MetricRecord()),
        )

    def _update_of(self, client_id: str, content: RecordDict) -> ClientUpdate:
        """A reply as the core's update; the core rejects what is wrong with it."""
        array_records = content.array_records
        array_record = array_records.get(self.arrayrecord_key)
        if array_record is None and len(array_records) == 1:
            array_record = next(iter(array_records.values()))
        metrics: dict[str, Any] = dict(self._metric_record(content))
        num_examples = metrics.pop(self.weighted_by_key, None)
        text: Mapping[str, Any] = content.config_records.get(TEXT_METRICS) or {}
        metrics |= {k: v for k, v in text.items() if isinstance(v, str)}
        update = ClientUpdate(client_id, [], num_examples, metrics)
        if array_record is not None and self.rule.global_model is None and not self._keys:
            self._keys = list(array_record.keys())  # no global model known: the first names them
        if array_record is None:
            update.problem = f"no ArrayRecord (expected one, {self.arrayrecord_key!r})"
        elif list(array_record.keys()) == self._keys:
            update.tensors = [a.data for a in array_record.values()]
        elif set(array_record.keys()) == set(self._keys):  # the same layers, reordered
            update.tensors = [array_record[key].data for key in self._keys]
        else:
            update.problem = (
                f"layer names {list(array_record.keys())[:3]}... differ from the global "
                f"model's {self._keys[:3]}..."
            )
        return update

    def _array_record(self, arrays: list[Any] | None) -> ArrayRecord | None:
        """The rule's result under the global model's keys, one copy per layer."""
        if arrays is None:
            return None
        shapes = [(str(a.dtype), tuple(a.shape)) for a in arrays]  # encode_tensors empties arrays
        record, encoded = ArrayRecord(), encode_tensors(arrays)
        for key, (dtype, shape), data in zip(self._keys, shapes, encoded, strict=True):
            record[key] = Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data)
        return record


def ask_partition_ids(grid: Grid, nodes: list[int], timeout: float | None) -> dict[int, object]:
    """The ``partition-id`` each answering node reports to a ``query`` message (or None)."""
    query = RecordDict({"config": ConfigRecord()})
    messages = [Message(query, dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
    reports: dict[int, object] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        content = RecordDict() if reply.has_error() else reply.content
        records: list[Mapping[str, Any]] = [*content.config_records.values()]
        records += content.metric_records.values()
        reported = (r[PARTITION_KEY] for r in records if PARTITION_KEY in r)
        reports[reply.metadata.src_node_id] = next(reported, None)
    return reports


SimpleAverage = MessageStrategy.of(SimpleAverageRule, "SimpleAverage")
FedAvg = MessageStrategy.of(FedAvgRule, "FedAvg")
QualityWeighted = MessageStrategy.of(QualityWeightedRule, "QualityWeighted")
Hybrid = MessageStrategy.of(HybridRule, "Hybrid")


class FedProx(MessageStrategy):
    """Flower's FedProx: FedAvg sending ``proximal-mu`` μ for the clients' (μ/2)‖w − w_global‖²."""

    rule_type = FedAvgRule

    def __init__(self, *, proximal_mu: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.proximal_mu = proximal_mu

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config["proximal-mu"] = self.proximal_mu
        return super().configure_train(server_round, arrays, config, grid)


FedAvgM, FedAdagrad, FedAdam, FedYogi = flower_optimizers(FedAvg)  # part: server-optimizer
