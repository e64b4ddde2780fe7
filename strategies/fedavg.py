"""FedAvg (McMahan et al. 2017); its defaults give Flower's ``FedAvg`` to float tolerance."""

from __future__ import annotations

from strategies.aggregate import example_weights
from strategies.core.rule import Rule
from strategies.core.update import ClientUpdate, Coefficients


class FedAvgRule(Rule):
    """Example-weighted mean ``θ = Σ n_i θ_i / Σ n_i``."""

    def coefficients(self, server_round: int, updates: list[ClientUpdate]) -> Coefficients:
        return Coefficients(example_weights([u.num_examples for u in updates]))
