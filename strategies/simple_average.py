"""SimpleAverage: every client counts the same."""

from __future__ import annotations

from strategies.aggregate import uniform_weights
from strategies.core.rule import Rule
from strategies.core.update import ClientUpdate, Coefficients


class SimpleAverageRule(Rule):
    """Unweighted mean ``θ = (1/K) Σ θ_i``, for similar-sized clients or untrusted counts."""

    def coefficients(self, server_round: int, updates: list[ClientUpdate]) -> Coefficients:
        return Coefficients(uniform_weights(len(updates)))
