"""A pool of nodes serving more clients (the optional part ``fast-engine``): a simulation's
engine runs fewer virtual nodes than logical clients. Each round samples clients (their
partitions), not nodes, deals them over the nodes in turn and names each one in its
instruction's config (``partition-id``, ``num-partitions``); the node runs that client, and
the reply is named by that partition. Seeded, a pool draws the partitions that one node per
client would (nodes reporting 0..N-1), so both give the same run.

``num_partitions=N`` (None: each node is one client) makes a pool of either Flower API
half: :class:`PooledMessages` is a base of :class:`strategies.message.MessageStrategy`,
:class:`PooledProxies` of the ClientProxy half's strategy.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common import (
    DisconnectRes,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetParametersIns,
    GetParametersRes,
    GetPropertiesIns,
    GetPropertiesRes,
    Parameters,
    ReconnectIns,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as ProxyFedAvg
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as MessageFedAvg

from strategies.core.adapter import RuleAdapter
from strategies.sampling import NUM_PARTITIONS_KEY, PARTITION_KEY, Node


class Pool(RuleAdapter):
    """What both halves' pools share: how many clients, and each round's partitions."""

    def __init__(self, *args: Any, num_partitions: int | None = None, **kwargs: Any) -> None:
        if num_partitions is not None and num_partitions < 1:
            raise ValueError(f"num_partitions={num_partitions} is not allowed: must be >= 1")
        self.num_partitions = num_partitions
        super().__init__(*args, **kwargs)

    def assign(
        self, server_round: int, purpose: str, size: int, nodes: Sequence[Node]
    ) -> list[tuple[Node, dict[str, int]]]:
        """A pool's round: ``size`` partitions, each with its node (dealt in turn over
        ``nodes``) and the config entries naming it. Seeded, they are the partitions the
        sampler would draw among nodes that report 0..N-1, one a node."""
        total = self.num_partitions
        assert total is not None, "assign() is for a pool (num_partitions set)"
        if not nodes or size <= 0:
            return []
        size = min(size, total)
        if self.sampler is None:
            partitions = sorted(random.sample(range(total), size))
        else:
            partitions = self.sampler.draw(server_round, purpose, total, size)
        if purpose == "train":
            self.last_sampled = list(partitions)
        return [
            (nodes[i % len(nodes)], {PARTITION_KEY: p, NUM_PARTITIONS_KEY: total})
            for i, p in enumerate(partitions)
        ]

    def reseed(
        self,
        server_round: int,
        purpose: str,
        flower_sample: Sequence[Node],
        available: Sequence[Node],
        ask: Callable[[list[Node]], Mapping[Node, object]],
    ) -> list[Node]:
        """A pool's round keeps its own sample (:meth:`assign`'s), of the logical clients."""
        if self.num_partitions is None:
            return super().reseed(server_round, purpose, flower_sample, available, ask)
        if purpose == "train":
            self.rule.sampling = (len(flower_sample), self.num_partitions)
        return list(flower_sample)


class PooledMessages(Pool, MessageFedAvg):
    """The Message API's pool: a message per sampled partition, naming it, to the node that
    runs it; a reply is named by the partition its message was for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._round: list[Message] = []  # this round's train messages
        self._named: dict[str, str] = {}  # their partitions by message id (the grid sets ids)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.num_partitions is None:
            return super().configure_train(server_round, arrays, config, grid)
        self._round = self._messages(server_round, "train", arrays, config, grid)
        self._named = {}
        return self._round

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.num_partitions is None:
            return super().configure_evaluate(server_round, arrays, config, grid)
        return self._messages(server_round, "evaluate", arrays, config, grid)

    def sender(self, node: Hashable, instruction: str) -> tuple[Hashable, str, str]:
        if self.num_partitions is not None and instruction not in self._named:
            self._named = {
                m.metadata.message_id: str(m.content[self.configrecord_key][PARTITION_KEY])
                for m in self._round
            }
        partition = self._named.get(instruction)
        if partition is None:
            return super().sender(node, instruction)
        return instruction, partition, f"client {partition} (node {node})"

    def _messages(
        self, server_round: int, purpose: str, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """A message per sampled partition, naming it, to the node that runs it."""
        train = purpose == "train"
        fraction = self.fraction_train if train else self.fraction_evaluate
        if fraction == 0.0:
            return []
        assert self.num_partitions is not None
        minimum = self.min_train_nodes if train else self.min_evaluate_nodes
        size = max(int(self.num_partitions * fraction), minimum)
        sent = dict(config.items()) | {"server-round": server_round}
        message_type = MessageType.TRAIN if train else MessageType.EVALUATE
        messages = []
        for node, named in self.assign(server_round, purpose, size, sorted(grid.get_node_ids())):
            content = RecordDict({self.arrayrecord_key: arrays})
            content[self.configrecord_key] = ConfigRecord(sent | named)
            messages.append(Message(content, dst_node_id=node, message_type=message_type))
        return messages


def named_partition(message: Message) -> dict[str, Any]:
    """The partition a pool's message is for, as node-config entries (none: it names none):
    what a node of the pool runs instead of its own."""
    for record in message.content.config_records.values():
        if PARTITION_KEY in record:
            return {key: record.get(key) for key in (PARTITION_KEY, NUM_PARTITIONS_KEY)}
    return {}


class PooledProxies(Pool, ProxyFedAvg):
    """The ClientProxy half's pool: each round samples ``fraction_fit`` of the partitions,
    not of the nodes; each sampled one is a :class:`PartitionProxy` (named by the
    partition, sent through its node) whose ``FitIns``/``EvaluateIns`` config names it."""

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        if self.num_partitions is None:
            return super().configure_fit(server_round, parameters, client_manager)
        config = self.on_fit_config_fn(server_round) if self.on_fit_config_fn else {}
        size = self.num_fit_clients(self.num_partitions)[0]
        return [
            (proxy, FitIns(parameters, config | named))
            for proxy, named in self._proxies(server_round, "train", size, client_manager)
        ]

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        if self.num_partitions is None:
            return super().configure_evaluate(server_round, parameters, client_manager)
        if self.fraction_evaluate == 0.0:
            return []
        fn = self.on_evaluate_config_fn
        config = fn(server_round) if fn else {}
        size = self.num_evaluation_clients(self.num_partitions)[0]
        return [
            (proxy, EvaluateIns(parameters, config | named))
            for proxy, named in self._proxies(server_round, "evaluate", size, client_manager)
        ]

    def _proxies(
        self, server_round: int, purpose: str, size: int, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, dict[str, Any]]]:
        """Each sampled partition's proxy and the config entries that name it."""
        nodes = client_manager.all()
        order = sorted(nodes, key=lambda cid: (len(cid), cid))  # node ids, numerically
        return [
            (PartitionProxy(nodes[cid], int(named[PARTITION_KEY])), dict(named))
            for cid, named in self.assign(server_round, purpose, size, order)
        ]


class PartitionProxy(ClientProxy):
    """One logical client of a pool: ``cid`` is its partition id, messages go through the
    proxy of the node that runs it (several partitions may share a node in one round)."""

    def __init__(self, node: ClientProxy, partition_id: int) -> None:
        super().__init__(str(partition_id))
        self.node = node

    def get_properties(
        self, ins: GetPropertiesIns, timeout: float | None, group_id: int | None
    ) -> GetPropertiesRes:
        return self.node.get_properties(ins, timeout, group_id)

    def get_parameters(
        self, ins: GetParametersIns, timeout: float | None, group_id: int | None
    ) -> GetParametersRes:
        return self.node.get_parameters(ins, timeout, group_id)

    def fit(self, ins: FitIns, timeout: float | None, group_id: int | None) -> FitRes:
        return self.node.fit(ins, timeout, group_id)

    def evaluate(
        self, ins: EvaluateIns, timeout: float | None, group_id: int | None
    ) -> EvaluateRes:
        return self.node.evaluate(ins, timeout, group_id)

    def reconnect(
        self, ins: ReconnectIns, timeout: float | None, group_id: int | None
    ) -> DisconnectRes:
        return self.node.reconnect(ins, timeout, group_id)
