"""Seeded, reproducible client sampling. No Flower.

Flower samples with its own unseeded ``random`` over node ids, which are new on every run
(simulation and deployment alike): two runs with the same seed train different clients,
so their histories differ and a resumed run cannot match an uninterrupted one. Here the
nodes of round r are a function of (seed, r, purpose, the keys of the available nodes)
only, where a node's key is the partition id it reports, or, for a node that reports
none, a stable id the adapter gives it (its node id, stable while the node runs).

    sampler = SeededSampler(seed=7)
    sampler.learn(node, partition_id=3)            # what each node reported, once
    chosen = sampler.sample(server_round, "train", available_nodes, size=3)
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Sequence
from typing import TypeVar

import numpy as np

LOG = logging.getLogger("flwr.strategies")

Node = TypeVar("Node", bound=Hashable)
# How nodes are ordered before the draw: reported partition ids first, then stable ids.
NodeKey = tuple[int, int, str]
# One independent stream per purpose: the train sample does not move the evaluate sample.
PURPOSES = ("train", "evaluate")
# The config key a node reports its partition under (the simulation engine's node-config key).
PARTITION_KEY = "partition-id"
# The node-config key of the number of partitions; with PARTITION_KEY, what a message to a
# node of a pool names: the logical client it is for (see ``RuleAdapter.assign``).
NUM_PARTITIONS_KEY = "num-partitions"
# How a run samples clients: seeded (here), or flower (Flower's unseeded random.sample,
# which asks nothing: for federations too large to ask every node once).
SAMPLINGS = ("seeded", "flower")


class SeededSampler:
    """Which nodes a round asks, from the seed, the round and what the nodes reported.

    Nodes are identified by whatever handle the Flower half uses (a node id, a client
    proxy's cid); ``learn`` records the partition id each one reported (None: it reports
    none and is ordered by ``str(node)``). Nodes that have not reported are never sampled.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.keys: dict[Hashable, NodeKey] = {}
        self.claimed: set[int] = set()  # partition ids reported so far

    def unknown(self, nodes: Iterable[Node]) -> list[Node]:
        """The nodes that have not reported yet (to ask before sampling)."""
        return [node for node in nodes if node not in self.keys]

    def learn(self, node: Hashable, partition_id: object) -> None:
        """Record what ``node`` reported: an int partition id, or anything else for none.

        A partition id another node already reported is not taken twice: this node is
        then ordered by its stable id (two SuperNodes configured with the same partition).
        """
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
        """``size`` of the reported ``nodes`` (all of them if fewer), in key order.

        The draw depends on (seed, round, purpose, the keys of ``nodes``) only: not on
        node ids, on the order ``nodes`` come in, or on what earlier rounds drew.
        """
        ordered: Sequence[Node] = sorted(
            (node for node in nodes if node in self.keys), key=self.keys.__getitem__
        )
        return [ordered[i] for i in self.draw(server_round, purpose, len(ordered), size)]

    def draw(self, server_round: int, purpose: str, population: int, size: int) -> list[int]:
        """``size`` of ``range(population)`` (all if fewer), ascending, from (seed, round,
        purpose) only: partitions 0..N-1 drawn directly are the nodes reporting them."""
        size = max(0, min(size, population))
        stream = [self.seed, server_round, PURPOSES.index(purpose)]
        rng = np.random.default_rng(np.random.SeedSequence(stream))
        return [int(i) for i in np.sort(rng.choice(population, size=size, replace=False))]
