"""Seeded client sampling, no Flower: a round's nodes depend only on the seed, the round, the
purpose and the nodes' keys (the partition id each reports, else its node id): runs repeat."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import TypeVar

import numpy as np

from strategies.core.update import LOG

Node = TypeVar("Node", bound=Hashable)  # the Flower half's handle: a node id, a proxy's cid
NodeKey = tuple[int, int, str]  # the draw's order: reported partition ids, then stable ids
PURPOSES = ("train", "evaluate")  # a stream each: training does not move evaluation's sample
PARTITION_KEY = "partition-id"  # the node-config keys of a node's partition, and their number
NUM_PARTITIONS_KEY = "num-partitions"
SAMPLINGS = ("seeded", "flower")  # flower: Flower's, unseeded (asks nothing: huge federations)


class SeededSampler:
    """Which nodes a round asks, from the seed, the round and what the nodes reported."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.keys: dict[Hashable, NodeKey] = {}
        self.claimed: set[int] = set()  # partition ids reported so far

    def unknown(self, nodes: Iterable[Node]) -> list[Node]:
        """The nodes that have not reported yet (to ask before sampling)."""
        return [node for node in nodes if node not in self.keys]

    def learn(self, node: Hashable, partition_id: object) -> None:
        """Record ``node``'s partition id (not an int, or another node's: it goes by its node id)."""
        key: NodeKey = (1, 0, str(node))
        if isinstance(partition_id, int) and not isinstance(partition_id, bool):
            if partition_id not in self.claimed:
                key = (0, partition_id, "")
                self.claimed.add(partition_id)
            else:
                LOG.warning(
                    f"node {node} reports partition id {partition_id}, which another node "
                    "reported first: it is sampled by its node id"
                )
        self.keys[node] = key

    def label(self, node: Hashable) -> int | str:
        """How records name ``node``: its partition id, else ``"node <id>"``."""
        kind, partition_id, stable = self.keys[node]
        return partition_id if kind == 0 else f"node {stable}"

    def sample(
        self, server_round: int, purpose: str, nodes: Iterable[Node], size: int
    ) -> list[Node]:
        """``size`` of the reported ``nodes`` (all if fewer), in key order, whatever their order."""
        ordered = sorted((n for n in nodes if n in self.keys), key=self.keys.__getitem__)
        return [ordered[i] for i in self.draw(server_round, purpose, len(ordered), size)]

    def draw(self, server_round: int, purpose: str, population: int, size: int) -> list[int]:
        """``size`` of ``range(population)`` (all if fewer), ascending, from (seed, round,
        purpose) only: partitions 0..N-1 drawn directly are the nodes reporting them."""
        size = max(0, min(size, population))
        stream = [self.seed, server_round, PURPOSES.index(purpose)]
        rng = np.random.default_rng(np.random.SeedSequence(stream))
        return [int(i) for i in np.sort(rng.choice(population, size=size, replace=False))]
