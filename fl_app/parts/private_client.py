"""The clients' side of DP (the optional part ``dp``): a local-DP client clips and noises
its own update before sending it; a DP-SGD client reports its schedule."""

from __future__ import annotations

from typing import Any

from flwr.client import NumPyClient

from fl_app.kit.seeds import rng_for
from fl_app.parts.wrapped_client import Config, FitAnswer, WrappedClient
from fl_app.task import Weights
from strategies.accounting import DP_SGD_METRICS, dp_sgd_schedule
from strategies.privacy import privatize_update


class PrivateClient(WrappedClient):
    """A client under local DP (it clips and noises its own update: the server never sees
    it) or DP-SGD (it reports its schedule, which the server accounts)."""

    def __init__(self, client: Any, cfg: Any, partition_id: int) -> None:
        super().__init__(client)
        self.cfg, self.partition_id = cfg, partition_id

    def fit(self, parameters: Weights, config: Config) -> FitAnswer:
        trained, num_examples, metrics = self.client.fit(parameters, config)
        cfg = self.cfg
        if cfg.dp == "local":
            server_round = int(config.get("server-round", 0))
            rng = rng_for(cfg.seed, "local-dp", server_round, self.partition_id)
            trained = privatize_update(
                parameters, trained, cfg.dp_clipping_norm, cfg.dp_noise_multiplier, rng
            )
        else:
            schedule = dp_sgd_schedule(num_examples, cfg.batch_size, cfg.local_epochs)
            metrics = metrics | dict(zip(DP_SGD_METRICS, schedule, strict=True))
        return trained, num_examples, metrics


def private(cfg: Any, client: Any, partition_id: int) -> NumPyClient:
    """The FlowerClient ``client`` as DP has it send its updates (itself without DP or with
    central DP)."""
    return PrivateClient(client, cfg, partition_id) if cfg.dp in ("local", "dp-sgd") else client
