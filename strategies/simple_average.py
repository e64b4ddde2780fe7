"""SimpleAverage: every client counts the same."""

from __future__ import annotations

from strategies.aggregate import uniform_weights
from strategies.core.rule import Rule
from strategies.core.update import ClientUpdate, Coefficients


class SimpleAverageRule(Rule):
    """Unweighted mean of the accepted client models: ``θ = (1/K) Σ θ_i``.

    A client with 10 examples counts as much as one with 10,000. Use it when clients
    hold similar amounts of data, or when their reported example counts cannot be
    trusted. Knobs: :class:`~strategies.core.options.ServerOptions` (the server step).
    """

    def coefficients(self, server_round: int, updates: list[ClientUpdate]) -> Coefficients:
        return Coefficients(uniform_weights(len(updates)))
