"""A client that misbehaves on purpose (the optional part ``faults``, :mod:`fl_app.parts.faults`)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from flwr.client import NumPyClient
from flwr.common import NDArrays, Scalar

from fl_app.parts.faults import BEFORE_TRAINING, LIE_SHARDS, is_faulty, little_is_enough, poison
from fl_app.task import get_weights


class FaultyClient(NumPyClient):
    """An honest client made to misbehave on purpose (``fault-kind``, see :mod:`fl_app.parts.faults`).

    ``raise`` and ``straggle`` act before the wrapped client trains; the poisonings change
    what it trained before it is sent.
    """

    def __init__(self, client: NumPyClient, honest: Any, kind: str) -> None:
        self.client = client  # what the honest client sends
        self.honest = honest  # and the client itself
        self.kind = kind

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        return self.client.get_parameters(config)

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        cfg = self.honest.cfg
        if self.kind == "raise":
            raise RuntimeError(f"injected fault: client {self.honest.partition_id} fails in fit")
        if self.kind == "straggle":
            time.sleep(cfg.straggle_seconds)
        trained, num_examples, metrics = self.client.fit(parameters, config)
        if self.kind in BEFORE_TRAINING:
            return trained, num_examples, metrics
        if self.kind == "little-is-enough":
            return self.little_is_enough(parameters, config), num_examples, metrics
        return poison(self.kind, parameters, trained, num_examples, metrics, cfg.fault_scale)

    def little_is_enough(self, parameters: NDArrays, config: dict[str, Scalar]) -> NDArrays:
        """Train on each of ``LIE_SHARDS`` disjoint shards of the client's data, then send
        :func:`fl_app.parts.faults.little_is_enough` of the shard models."""
        client = self.honest
        train = client.data.train
        shard_models = []
        for part, indices in enumerate(np.array_split(np.arange(len(train)), LIE_SHARDS), 1):
            client.train_on(train.subset(indices), parameters, config, part)
            shard_models.append(get_weights(client.model))
        return little_is_enough(parameters, shard_models, client.cfg.fault_scale)

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        return self.client.evaluate(parameters, config)


def faulty(cfg: Any, client: NumPyClient, honest: Any, num_partitions: int) -> NumPyClient:
    """``client`` (the FlowerClient ``honest``, as it sends) as a faulty client, when its
    partition is one of the ``fault-fraction`` faulty ones; else itself."""
    if is_faulty(cfg, honest.partition_id, num_partitions):
        return FaultyClient(client, honest, cfg.fault_kind)
    return client
