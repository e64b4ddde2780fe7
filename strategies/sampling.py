"""Seeded client sampling, no Flower: round r's nodes depend on (seed, r, purpose, the nodes'
keys) only, so runs repeat (Flower samples node ids, new each run, unseeded). A node's key is
the partition id it reports, else its node id (stable while it runs)."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable
from typing import TypeVar

import numpy as np

LOG = logging.getLogger("flwr.strategies")

Node = TypeVar("Node", bound=Hashable)  # the Flower half's handle: a node id, a proxy's cid
# How nodes are ordered before the draw: reported partition ids first, then stable ids.
NodeKey = tuple[int, int, str]
# One independent stream per purpose: the train sample does not move the evaluate sample.
PURPOSES = ("train", "evaluate")
# The node-config keys of a node's partition and of their number.
PARTITION_KEY = "partition-id"
NUM_PARTITIONS_KEY = "num-partitions"
# seeded (here), or flower (Flower's unseeded sampling: asks nothing, for huge federations).
SAMPLINGS = ("seeded", "flower")


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
        """Record ``node``'s partition id (anything but an int: none). An id already claimed
        (two SuperNodes configured alike) is not taken twice: ``node`` goes by its own id."""
        key: NodeKey = (1, 0, str(node))
        if isinstance(partition_id, int) and not isinstance(partition_id, bool):
            if partition_id not in self.claimed:
                key = (0, partition_id, "")
                self.claimed.add(partition_id)
            else:
                LOG.warning(
                    "node %s reports partition id %d, which another node reported first: "
                    "it is sampled by its node id",
                    node,
                    partition_id,
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
        known = [node for node in nodes if node in self.keys]
        ordered = sorted(known, key=self.keys.__getitem__)
        return [ordered[i] for i in self.draw(server_round, purpose, len(ordered), size)]

    def draw(self, server_round: int, purpose: str, population: int, size: int) -> list[int]:
        """``size`` of ``range(population)`` (all if fewer), ascending, from (seed, round,
        purpose) only: partitions 0..N-1 drawn directly are the nodes reporting them."""
        size = max(0, min(size, population))
        stream = [self.seed, server_round, PURPOSES.index(purpose)]
        rng = np.random.default_rng(np.random.SeedSequence(stream))
        return [int(i) for i in np.sort(rng.choice(population, size=size, replace=False))]
