"""Seeded client sampling on the legacy half (the optional part ``legacy-api``): the
partitions the sampler draws, as on the Message API (tests/test_sampling.py)."""

from __future__ import annotations

import numpy as np
from flwr.common import (
    Code,
    GetPropertiesIns,
    GetPropertiesRes,
    Status,
    ndarrays_to_parameters,
)
from flwr.server import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

import strategies
from strategies.sampling import PARTITION_KEY
from tests.test_sampling import MODEL, drawn, sampler_of


class ReportingProxy(ClientProxy):
    """A legacy client proxy that answers ``get_properties`` only."""

    def __init__(self, cid: str, partition_id: int | None, fails: bool = False) -> None:
        super().__init__(cid)
        self.partition_id = partition_id
        self.fails = fails
        self.asked = 0

    def get_properties(
        self, ins: GetPropertiesIns, timeout: float | None, group_id: int | None
    ) -> GetPropertiesRes:
        self.asked += 1
        if self.fails:
            raise TimeoutError("no reply")
        properties = {} if self.partition_id is None else {PARTITION_KEY: self.partition_id}
        return GetPropertiesRes(Status(Code.OK, ""), properties)

    def get_parameters(self, *args: object) -> None:
        raise NotImplementedError

    fit = evaluate = reconnect = get_parameters


def test_the_legacy_half_samples_the_partitions_the_sampler_draws() -> None:
    rng = np.random.default_rng(1)
    legacy = strategies.build("fedavg", api="legacy", sampling_seed=7, fraction_fit=0.3)
    manager = SimpleClientManager()
    proxies = [ReportingProxy(str(n), p) for p, n in enumerate(rng.permutation(10) + 500)]
    for proxy in rng.permutation(proxies):
        manager.register(proxy)
    partition_of = {proxy.cid: proxy.partition_id for proxy in proxies}
    reference = sampler_of(7, {p: p for p in range(10)})
    parameters = ndarrays_to_parameters(MODEL)
    for server_round in (1, 2, 3):
        want = drawn(reference, server_round, range(10), 3)
        pairs = legacy.configure_fit(server_round, parameters, manager)
        assert [partition_of[proxy.cid] for proxy, _ in pairs] == want
        assert legacy.last_sampled == want
    assert all(proxy.asked == 1 for proxy in proxies)  # each client is asked once


def test_a_legacy_client_that_does_not_answer_is_asked_again_and_not_sampled_meanwhile() -> None:
    strategy = strategies.build("fedavg", api="legacy", sampling_seed=0, fraction_fit=1.0)
    manager = SimpleClientManager()
    silent = ReportingProxy("9", 2, fails=True)
    for proxy in (ReportingProxy("7", 0), ReportingProxy("8", None), silent):
        manager.register(proxy)
    parameters = ndarrays_to_parameters(MODEL)
    assert len(strategy.configure_fit(1, parameters, manager)) == 2
    assert strategy.last_sampled == [0, "node 8"]
    silent.fails = False
    assert len(strategy.configure_fit(2, parameters, manager)) == 3
    assert strategy.last_sampled == [0, 2, "node 8"]
    assert silent.asked == 2
