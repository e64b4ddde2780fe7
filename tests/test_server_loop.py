"""The server's round loop, with in-process client proxies (no Ray, no network)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
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
    ReconnectIns,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from fl_app.kit.results import RoundRecord, RunListener
from fl_app.kit.rounds import RoundRecorder
from fl_app.parts.legacy.server import ExperimentServer
from strategies import FedAvg
from tests.legacy_fakes import OK


class WaitingProxy(ClientProxy):
    """A client whose fit returns only once every client of the round is in fit."""

    def __init__(self, cid: str, everyone: threading.Barrier) -> None:
        super().__init__(cid)
        self.everyone = everyone

    def fit(self, ins: FitIns, timeout: float | None, group_id: int | None) -> FitRes:
        self.everyone.wait()  # raises BrokenBarrierError after its timeout
        update = [a + 1.0 for a in parameters_to_ndarrays(ins.parameters)]
        return FitRes(OK, ndarrays_to_parameters(update), 10, {})

    def get_properties(
        self, ins: GetPropertiesIns, timeout: float | None, group_id: int | None
    ) -> GetPropertiesRes:
        raise NotImplementedError

    def get_parameters(
        self, ins: GetParametersIns, timeout: float | None, group_id: int | None
    ) -> GetParametersRes:
        raise NotImplementedError

    def evaluate(
        self, ins: EvaluateIns, timeout: float | None, group_id: int | None
    ) -> EvaluateRes:
        raise NotImplementedError

    def reconnect(
        self, ins: ReconnectIns, timeout: float | None, group_id: int | None
    ) -> DisconnectRes:
        raise NotImplementedError


class Records(RunListener):
    def __init__(self) -> None:
        self.rounds: Sequence[RoundRecord] = ()

    def round_done(self, rounds: Sequence[RoundRecord]) -> None:
        self.rounds = rounds


def test_a_round_sends_every_sampled_client_its_message_at_once() -> None:
    # Flower's default sends through min(32, CPUs + 4) threads, each waiting for its
    # client's reply: on 2 cores only 6 of these 40 clients would be in fit together,
    # the barrier would break and every fit would fail.
    num_clients = 40
    everyone = threading.Barrier(num_clients, timeout=10)
    manager = SimpleClientManager()
    for i in range(num_clients):
        manager.register(WaitingProxy(str(i), everyone))
    listener = Records()
    server = ExperimentServer(
        client_manager=manager,
        strategy=FedAvg(
            initial_parameters=ndarrays_to_parameters([np.zeros(3, dtype=np.float32)]),
            fraction_evaluate=0.0,
        ),
        recorder=RoundRecorder([listener]),
    )
    server.fit(num_rounds=1, timeout=None)
    last = listener.rounds[-1]
    assert (last["results"], last["failures"], last["accepted"]) == (num_clients, 0, num_clients)
    # Every client sent θ + 1 with 10 examples: the average is 1 (up to float32 sums).
    np.testing.assert_allclose(parameters_to_ndarrays(server.parameters)[0], 1.0, rtol=1e-6)
