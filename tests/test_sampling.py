"""Seeded client sampling: a function of (seed, round, purpose, partition ids), not of node ids."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

import strategies
from fl_app.kit.config import RunConfig
from fl_app.kit.training import ServerModel
from fl_app.server_app import build_strategy
from strategies.sampling import PARTITION_KEY, SeededSampler
from tests.halves import API_CONFIG

pytestmark = pytest.mark.usefixtures("task_identity")

MODEL = [np.zeros(3, dtype=np.float32)]


def sampler_of(seed: int, nodes: dict[int, int | None]) -> SeededSampler:
    sampler = SeededSampler(seed)
    for node, partition_id in nodes.items():
        sampler.learn(node, partition_id)
    return sampler


def drawn(sampler: SeededSampler, server_round: int, nodes: Iterable[int], size: int) -> list:
    return [sampler.label(n) for n in sampler.sample(server_round, "train", nodes, size)]


def test_the_draw_depends_on_partitions_not_on_node_ids_or_their_order() -> None:
    rng = np.random.default_rng(0)
    first = {int(node): p for p, node in enumerate(rng.integers(1, 2**63, size=10))}
    second = {int(node): p for p, node in enumerate(rng.integers(1, 2**63, size=10))}
    a, b = sampler_of(7, first), sampler_of(7, second)
    draws = [drawn(a, r, first, 3) for r in range(1, 21)]
    assert draws == [drawn(b, r, reversed(list(second)), 3) for r in range(1, 21)]
    assert all(len(set(d)) == 3 for d in draws)
    assert len({tuple(d) for d in draws}) > 10  # rounds draw different clients


def test_seed_and_purpose_each_give_another_stream() -> None:
    nodes = {n: n for n in range(10)}
    base = sampler_of(7, nodes)
    train = [base.sample(r, "train", nodes, 3) for r in range(1, 11)]
    assert train != [base.sample(r, "evaluate", nodes, 3) for r in range(1, 11)]
    assert train != [sampler_of(8, nodes).sample(r, "train", nodes, 3) for r in range(1, 11)]


def test_every_partition_is_drawn_equally_often() -> None:
    nodes = {n: n for n in range(10)}
    sampler = sampler_of(1, nodes)
    counts = Counter(p for r in range(3000) for p in drawn(sampler, r, nodes, 3))
    # Each count is Binomial(3000, 0.3): mean 900, standard deviation 25.
    assert sorted(counts) == list(range(10))
    assert all(abs(c - 900) < 125 for c in counts.values()), counts


def test_unreported_nodes_are_left_out_and_a_partition_is_claimed_once() -> None:
    sampler = sampler_of(3, {10: 0, 11: 1, 12: None, 13: 1})
    assert sampler.unknown([10, 11, 12, 13, 14]) == [14]
    assert [sampler.label(n) for n in (10, 11, 12, 13)] == [0, 1, "node 12", "node 13"]
    assert sorted(map(str, drawn(sampler, 1, [10, 11, 12, 13, 14], 10))) == sorted(
        ["0", "1", "node 12", "node 13"]
    )


class QueryGrid:
    """A Message-API grid whose nodes answer ``query`` messages with their partition id."""

    def __init__(self, partitions: dict[int, int]) -> None:
        self.partitions = partitions
        self.asked: Counter[int] = Counter()

    def get_node_ids(self) -> list[int]:
        return list(self.partitions)

    def send_and_receive(self, messages: list[Message], timeout: float | None) -> list[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            self.asked[node] += 1
            content = RecordDict({"config": ConfigRecord({PARTITION_KEY: self.partitions[node]})})
            replies.append(Message(content=content, reply_to=message))
        return replies


def test_the_message_half_samples_the_partitions_the_sampler_draws() -> None:
    rng = np.random.default_rng(1)
    message = strategies.build("fedavg", sampling_seed=7, fraction_train=0.3)
    grid = QueryGrid({int(n): p for p, n in enumerate(rng.integers(1, 2**40, size=10))})
    reference = sampler_of(7, {p: p for p in range(10)})
    for server_round in (1, 2, 3):
        want = drawn(reference, server_round, range(10), 3)
        sent = message.configure_train(server_round, ArrayRecord(MODEL), ConfigRecord(), grid)
        assert [grid.partitions[m.metadata.dst_node_id] for m in sent] == want
        assert message.last_sampled == want
        evaluated = message.configure_evaluate(
            server_round, ArrayRecord(MODEL), ConfigRecord(), grid
        )
        want_evaluated = [
            reference.label(n) for n in reference.sample(server_round, "evaluate", range(10), 10)
        ]
        assert [grid.partitions[m.metadata.dst_node_id] for m in evaluated] == want_evaluated
    assert set(grid.asked.values()) == {1}  # each node is asked once for its partition


@pytest.mark.parametrize("api", list(API_CONFIG))
def test_the_run_config_chooses_seeded_or_flowers_sampling(api: str) -> None:
    server = ServerModel(RunConfig())
    seeded = build_strategy(RunConfig.from_mapping({**API_CONFIG[api], "seed": 5}), server)
    assert seeded.sampler is not None
    assert seeded.sampler.seed == 5
    sampling = {**API_CONFIG[api], "client-sampling": "flower"}
    assert build_strategy(RunConfig.from_mapping(sampling), server).sampler is None
