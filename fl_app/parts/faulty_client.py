"""A client that misbehaves on purpose (the optional part ``faults``, :mod:`fl_app.parts.faults`)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from flwr.client import NumPyClient
from flwr.common import NDArrays

from fl_app.kit.seeds import seed_for
from fl_app.kit.training import train_as_configured
from fl_app.parts.faults import BEFORE_TRAINING, LIE_SHARDS, is_faulty, little_is_enough, poison
from fl_app.parts.wrapped_client import Config, FitAnswer, WrappedClient
from fl_app.task import get_weights, set_weights


class FaultyClient(WrappedClient):
    """An honest client made to misbehave on purpose (``fault-kind``, see :mod:`fl_app.parts.faults`).

    ``raise`` and ``straggle`` act before the wrapped client trains; the poisonings change
    what it trained before it is sent.
    """

    def __init__(self, client: NumPyClient, honest: Any, kind: str) -> None:
        super().__init__(client)  # what the honest client sends
        self.honest = honest  # and the client itself
        self.kind = kind

    def fit(self, parameters: NDArrays, config: Config) -> FitAnswer:
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

    def little_is_enough(self, parameters: NDArrays, config: Config) -> NDArrays:
        """Train on each of ``LIE_SHARDS`` disjoint shards of the client's data (seeded as the
        client's training, plus the shard's number), then send
        :func:`fl_app.parts.faults.little_is_enough` of the shard models."""
        client, cfg = self.honest, self.honest.cfg
        train = client.data.train
        server_round = int(config.get("server-round", 0))
        shard_models = []
        for part, indices in enumerate(np.array_split(np.arange(len(train)), LIE_SHARDS), 1):
            set_weights(client.model, parameters)
            seed = seed_for(cfg.seed, "local-training", server_round, client.partition_id, part)
            shard = train.subset(indices)
            train_as_configured(cfg, client.model, shard, device=client.device, seed=seed)
            shard_models.append(get_weights(client.model))
        return little_is_enough(parameters, shard_models, cfg.fault_scale)


def faulty(cfg: Any, client: NumPyClient, honest: Any, num_partitions: int) -> NumPyClient:
    """``client`` (the FlowerClient ``honest``, as it sends) as a faulty client, when its
    partition is one of the ``fault-fraction`` faulty ones; else itself."""
    if is_faulty(cfg, honest.partition_id, num_partitions):
        return FaultyClient(client, honest, cfg.fault_kind)
    return client
