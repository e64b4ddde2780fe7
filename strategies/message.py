"""The rules as Flower Message-API strategies (``flwr.serverapp.strategy``).

Each class is a thin adapter over a :class:`~strategies.core.rule.Rule`, used exactly like
Flower's own Message-API ``FedAvg``:

    strategy = Hybrid(fraction_train=0.5, hybrid_lambda=0.3, robust_filter="mad")
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                            num_rounds=10, evaluate_fn=central_evaluation)

Flower's ``FedAvg`` gives node sampling, the train/evaluate messages and the evaluate
metric aggregation. ``aggregate_train`` hands the rule the ``.npy`` bytes of each reply's
``ArrayRecord`` and the ``num-examples`` of its ``MetricRecord``; one bad reply is
rejected, counted and logged while the others are aggregated (Flower's ``FedAvg`` raises
``InconsistentMessageReplies`` for the whole round instead). On the same replies the
model is bit for bit the legacy twin's (:mod:`strategies.legacy`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
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

from strategies.core.adapter import RuleAdapter
from strategies.core.codec import decode_tensors, encode_tensors
from strategies.core.metrics import evaluation_metrics, weighted_metrics
from strategies.core.options import ServerOptions
from strategies.core.rule import Rule
from strategies.core.update import ClientUpdate, ScoreFn
from strategies.fedavg import FedAvgRule
from strategies.hybrid import HybridRule
from strategies.quality_weighted import QualityWeightedRule
from strategies.sampling import PARTITION_KEY
from strategies.simple_average import SimpleAverageRule

MetricsAggregation = Callable[[list[RecordDict], str], MetricRecord]
# The ConfigRecord of a train reply holding its text metrics (a MetricRecord holds numbers).
TEXT_METRICS = "text-metrics"


class MessageStrategy(RuleAdapter, FlowerFedAvg):
    """Flower Message-API strategy over a :class:`~strategies.core.rule.Rule`.

    Parameters
    ----------
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes,
    min_available_nodes, weighted_by_key, arrayrecord_key, configrecord_key,
    train_metrics_aggr_fn, evaluate_metrics_aggr_fn
        Flower's Message-API ``FedAvg`` arguments, with Flower's defaults (the train
        metrics default to the example-weighted mean of the accepted replies).
    rule : Rule, optional
        The rule to run; the named subclasses build theirs from ``options`` or knobs.
    options : the rule's options dataclass, optional
    score_fn : callable, optional
        ``score_fn(arrays) -> metrics`` scores a client model on server-held data.
    sampling_seed : int, optional
        Sample nodes reproducibly (:mod:`strategies.sampling`): each node is asked once,
        with a ``query`` message, for its ``partition-id``; None keeps Flower's
        unseeded sampling.
    query_timeout : float, optional
        How long to wait for those answers (None: as long as it takes).
    num_partitions : int, optional
        Logical clients served by a pool of nodes (a simulation's virtual nodes): each
        round samples ``fraction_train`` of these partitions, not of the nodes, deals them
        over the nodes and names each one in its message's ConfigRecord (``partition-id``,
        ``num-partitions``); replies are named by partition. None: each node is one client.
    **knobs
        The rule's knobs (fields of its options, e.g. ``server_momentum=0.9``).

    After each round ``last_result`` holds the rule's full :class:`RoundResult`
    (including ``weights``, a JSON string a ``MetricRecord`` cannot carry).
    """

    def __init__(
        self,
        *,
        rule: Rule | None = None,
        options: ServerOptions | None = None,
        score_fn: ScoreFn | None = None,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: MetricsAggregation | None = None,
        evaluate_metrics_aggr_fn: MetricsAggregation | None = None,
        sampling_seed: int | None = None,
        query_timeout: float | None = None,
        num_partitions: int | None = None,
        **knobs: Any,
    ) -> None:
        self.adopt(
            rule,
            options,
            score_fn,
            knobs,
            sampling_seed=sampling_seed,
            query_timeout=query_timeout,
            num_partitions=num_partitions,
        )
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
        )
        self.custom_train_metrics = train_metrics_aggr_fn is not None
        self.custom_evaluate_metrics = evaluate_metrics_aggr_fn is not None
        self._keys: list[str] = []
        self._sampled: list[int] = []
        self._sent: list[Message] = []  # a pool's train messages (their ids name the replies)

    # ---- Flower Strategy API --------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.set_global_model(arrays)
        if self.num_partitions is not None:
            messages = self._pooled(
                server_round,
                MessageType.TRAIN,
                (self.fraction_train, self.min_train_nodes),
                arrays,
                config,
                grid,
            )
            self._sent = messages
            self.rule.sampling = (len(messages), self.num_partitions)
            return messages
        messages = list(super().configure_train(server_round, arrays, config, grid))
        available = sorted(grid.get_node_ids())
        messages = self._reseeded(server_round, "train", messages, grid, available)
        self._sampled = [m.metadata.dst_node_id for m in messages]
        self.rule.sampling = (len(messages), len(available))
        return messages

    def set_global_model(self, arrays: ArrayRecord) -> None:
        """The current global model, which replies are validated against and the server
        step starts from (``configure_train`` sets it every round); its keys name the layers
        of the result (a torch ``state_dict``'s names survive)."""
        self._keys = list(arrays.keys())
        self.rule.global_model = decode_tensors([a.data for a in arrays.values()])

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.num_partitions is not None:
            return self._pooled(
                server_round,
                MessageType.EVALUATE,
                (self.fraction_evaluate, self.min_evaluate_nodes),
                arrays,
                config,
                grid,
            )
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        return self._reseeded(server_round, "evaluate", messages, grid)

    def _pooled(
        self,
        server_round: int,
        message_type: str,
        sampling: tuple[float, int],
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,
    ) -> list[Message]:
        """A pool's round: one message per sampled partition, to the node that runs it,
        its config naming the partition. ``sampling`` is (fraction, minimum) of the logical
        clients, Flower's ``FedAvg`` rule (no message at fraction 0)."""
        fraction, minimum = sampling
        if fraction == 0.0:
            return []
        assert self.num_partitions is not None
        size = max(int(self.num_partitions * fraction), minimum)
        sent = dict(config.items()) | {"server-round": server_round}
        purpose = "train" if message_type == MessageType.TRAIN else "evaluate"
        nodes = sorted(grid.get_node_ids())
        return [
            Message(
                RecordDict(
                    {
                        self.arrayrecord_key: arrays,
                        self.configrecord_key: ConfigRecord(sent | named),
                    }
                ),
                dst_node_id=node,
                message_type=message_type,
            )
            for node, named in self.assign(server_round, purpose, size, nodes)
        ]

    @staticmethod
    def _who(node: int, partition: str | None) -> str:
        """How a failure names the client: its node, and a pool's partition first."""
        return f"node {node}" if partition is None else f"client {partition} (node {node})"

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        updates: list[ClientUpdate] = []
        failures: list[str] = []
        answered: set[int | str] = set()
        contents: dict[str, RecordDict] = {}
        # A pool's replies are named by the partition their message was for.
        partitions = {
            m.metadata.message_id: str(m.content[self.configrecord_key][PARTITION_KEY])
            for m in self._sent
        }
        for msg in replies:
            node = msg.metadata.src_node_id
            partition = partitions.get(msg.metadata.reply_to_message_id)
            answered.add(node if partition is None else msg.metadata.reply_to_message_id)
            if msg.has_error():
                failures.append(f"{self._who(node, partition)}: {msg.error.reason}")
                continue
            name = self.client_name(node) if partition is None else partition
            update = self._update_of(name, msg.content)
            contents[update.client_id] = msg.content
            updates.append(update)
        if self.num_partitions is None:
            missing = [self._who(node, None) for node in self._sampled if node not in answered]
        else:
            missing = [
                self._who(m.metadata.dst_node_id, partitions[m.metadata.message_id])
                for m in self._sent
                if m.metadata.message_id not in answered
            ]
        failures += [f"{who}: no reply (round timeout)" for who in missing]
        result = self.rule.aggregate(server_round, updates, failures)
        self.last_result = result
        metrics: dict[str, Any] = {
            k: v for k, v in result.metrics.items() if isinstance(v, int | float)
        }
        if result.accepted:
            client_metrics: dict[str, Any]
            if self.custom_train_metrics:
                accepted = [contents[u.client_id] for u in result.accepted]
                client_metrics = dict(self.train_metrics_aggr_fn(accepted, self.weighted_by_key))
            else:
                client_metrics = weighted_metrics(
                    [(u.num_examples, u.metrics) for u in result.accepted]
                )
            metrics = client_metrics | metrics
        return self._array_record(result.arrays), MetricRecord(metrics)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The example-weighted metrics of the replies that carry ``num-examples``, in a
        canonical order (the same floats as the legacy twin); one odd reply is skipped
        (Flower's ``FedAvg`` raises ``InconsistentMessageReplies`` for the round)."""
        contents = [msg.content for msg in replies if not msg.has_error()]
        usable = []
        for content in contents:
            record = self._metric_record(content)
            n = record.get(self.weighted_by_key)
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                usable.append((content, n, record))
        if not usable:
            return None
        if self.custom_evaluate_metrics:
            return self.evaluate_metrics_aggr_fn([c for c, _, _ in usable], self.weighted_by_key)
        results = [
            (n, {k: v for k, v in record.items() if k != self.weighted_by_key})
            for _, n, record in usable
        ]
        aggregated: dict[str, Any] = evaluation_metrics(results)
        return MetricRecord(aggregated)

    # ---- internals ------------------------------------------------------------------

    def _reseeded(
        self,
        server_round: int,
        purpose: str,
        messages: list[Message],
        grid: Grid,
        available: list[int] | None = None,
    ) -> list[Message]:
        """Flower's messages, readdressed to the seeded sampler's nodes (same number), among
        ``available`` (the grid's nodes when not given)."""
        if self.sampler is None:
            return messages
        flower_sample = [m.metadata.dst_node_id for m in messages]
        if available is None:
            available = sorted(grid.get_node_ids())

        def ask(nodes: list[int]) -> dict[int, object]:
            return ask_partition_ids(grid, nodes, self.query_timeout)

        chosen = self.reseed(server_round, purpose, flower_sample, available, ask)
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
        """A reply as the core's update; what is wrong with it is rejected by the core."""
        array_records = content.array_records
        array_record = array_records.get(self.arrayrecord_key)
        if array_record is None and len(array_records) == 1:
            array_record = next(iter(array_records.values()))
        metric_record = self._metric_record(content)
        metrics: dict[str, Any] = {
            k: v for k, v in metric_record.items() if k != self.weighted_by_key
        }
        text = content.config_records.get(TEXT_METRICS)
        if text is not None:  # a MetricRecord holds numbers only
            metrics |= {k: v for k, v in text.items() if isinstance(v, str)}
        update = ClientUpdate(client_id, [], metric_record.get(self.weighted_by_key), metrics)
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
        shapes = [(str(a.dtype), tuple(a.shape)) for a in arrays]
        record = ArrayRecord()
        for key, (dtype, shape), data in zip(
            self._keys, shapes, encode_tensors(arrays), strict=True
        ):
            record[key] = Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data)
        return record


def ask_partition_ids(grid: Grid, nodes: list[int], timeout: float | None) -> dict[int, object]:
    """The ``partition-id`` each node reports to a ``query`` message (None: an error reply
    or no such key); nodes that do not answer in time are left out."""
    query = RecordDict({"config": ConfigRecord()})
    messages = [Message(query, dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
    reports: dict[int, object] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        records: list[Mapping[str, Any]] = []
        if not reply.has_error():
            records = [
                *reply.content.config_records.values(),
                *reply.content.metric_records.values(),
            ]
        reported = (r[PARTITION_KEY] for r in records if PARTITION_KEY in r)
        reports[reply.metadata.src_node_id] = next(reported, None)
    return reports


# The four rules as Message-API strategies, e.g. ``Hybrid(hybrid_lambda=0.3, ...)``.
SimpleAverage = MessageStrategy.of(SimpleAverageRule, "SimpleAverage")
FedAvg = MessageStrategy.of(FedAvgRule, "FedAvg")
QualityWeighted = MessageStrategy.of(QualityWeightedRule, "QualityWeighted")
Hybrid = MessageStrategy.of(HybridRule, "Hybrid")
