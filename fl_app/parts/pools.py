"""A pool of virtual nodes (the optional part ``fast-engine``): ``run_simulation.py
--num-nodes N|auto|per-client`` gives Flower's simulation engine fewer virtual nodes than
logical clients. Each message names the partition it is for and the node runs that client
(:mod:`strategies.pools`); seeded, the runs are the same as with one node per client."""

from __future__ import annotations

from collections.abc import Sequence

from fl_app.kit.config import RunConfig
from fl_app.server_app import ServerRun

# --num-nodes: a pool sized by the clients a round asks for, or one node per client.
AUTO_NODES = "auto"
PER_CLIENT = "per-client"


def pool_size(num_nodes: str, configs: Sequence[RunConfig]) -> int | None:
    """The engine's virtual nodes for ``configs`` (None: one per client). Auto: the most
    clients any of their rounds asks for, so that every node gets one message a round."""
    if num_nodes == PER_CLIENT:
        return None
    if num_nodes != AUTO_NODES:
        return int(num_nodes)
    if any(cfg.secure_aggregation for cfg in configs):  # part: legacy-api
        return None  # part: legacy-api
    asked = max(
        max(c.fit_clients(c.num_clients), evaluate_clients(c, c.num_clients)) for c in configs
    )
    return max(1, min(configs[0].num_clients, asked))


def evaluate_clients(cfg: RunConfig, available: int) -> int:
    """Clients an evaluation round asks of ``available`` (none at fraction-evaluate 0)."""
    asked = max(int(cfg.fraction_evaluate * available), cfg.min_evaluate_clients)
    return asked if cfg.fraction_evaluate else 0


def pool_runs(runs: Sequence[ServerRun], num_nodes: str) -> None:
    """When a pool serves the runs' clients, each run's messages name them."""
    if pool_size(num_nodes, [run.cfg for run in runs]) is not None:
        for run in runs:
            run.num_partitions = runs[0].cfg.num_clients
