"""Which Ray nodes the clients trained on (the optional part ``ray-cluster``): each client
on Ray reports its node (the ``ray_node`` fit metric); a round's record lists the nodes of
its aggregated clients (``ray_nodes``), a run's summary every one, and the run's last line
says "on N Ray nodes" when there were several."""

from __future__ import annotations

import sys

from flwr.client import NumPyClient
from flwr.common import NDArrays

from fl_app.parts.wrapped_client import Config, FitAnswer, WrappedClient
from strategies.core.update import RoundResult

# The fit metric naming the Ray node a client trained on.
RAY_NODE = "ray_node"


class RayNodeClient(WrappedClient):
    """``client``, whose fit reports the Ray node it trained on."""

    def __init__(self, client: NumPyClient, node: str) -> None:
        super().__init__(client)
        self.node = node

    def fit(self, parameters: NDArrays, config: Config) -> FitAnswer:
        trained, num_examples, metrics = self.client.fit(parameters, config)
        return trained, num_examples, metrics | {RAY_NODE: self.node}


def on_ray_node(client: NumPyClient) -> NumPyClient:
    """``client`` reporting the Ray node it trains on (its id's first 12 hex digits, as ``ray
    list nodes`` shows it) when it runs on Ray; itself elsewhere (on a SuperNode)."""
    ray = sys.modules.get("ray")  # loaded in a Ray worker; never imported here
    if ray is None or not ray.is_initialized():
        return client
    return RayNodeClient(client, str(ray.get_runtime_context().get_node_id())[:12])


def trained_on(result: RoundResult | None) -> dict[str, list[str]]:
    """A round's ``ray_nodes``: where its aggregated clients trained (nothing off Ray)."""
    nodes = {u.metrics.get(RAY_NODE) for u in result.accepted} - {None} if result else set()
    return {"ray_nodes": sorted(map(str, nodes))} if nodes else {}
