"""A NumPyClient around another (the internal part ``client-wrappers``): an optional part's
client changes what it needs of the wrapped client's answers and passes the rest through."""

from __future__ import annotations

from flwr.client import NumPyClient
from flwr.common import NDArrays, Scalar

Config = dict[str, Scalar]
FitAnswer = tuple[NDArrays, int, dict[str, Scalar]]


class WrappedClient(NumPyClient):
    """``client``, passed through: a subclass overrides what it changes."""

    def __init__(self, client: NumPyClient) -> None:
        self.client = client

    def get_parameters(self, config: Config) -> NDArrays:
        return self.client.get_parameters(config)

    def fit(self, parameters: NDArrays, config: Config) -> FitAnswer:
        return self.client.fit(parameters, config)

    def evaluate(self, parameters: NDArrays, config: Config) -> tuple[float, int, Config]:
        return self.client.evaluate(parameters, config)
