"""FedAvg (McMahan et al. 2017), with optional server learning rate and momentum."""

from __future__ import annotations

from strategies.aggregate import example_weights
from strategies.core.rule import Rule
from strategies.core.update import ClientUpdate, Coefficients


class FedAvgRule(Rule):
    """Example-weighted mean: ``θ = Σ n_i θ_i / Σ n_i``.

    With ``server_learning_rate`` η and ``server_momentum`` β it becomes FedAvgM
    (Hsu et al. 2019): ``Δ = θ_avg − θ_g``, ``v ← β v + Δ``, ``θ_g ← θ_g + η v``.
    The defaults η=1, β=0 reproduce Flower's built-in ``FedAvg`` to float tolerance.
    Use it as the baseline; server momentum helps on non-IID data.
    """

    def coefficients(self, server_round: int, updates: list[ClientUpdate]) -> Coefficients:
        return Coefficients(example_weights([u.num_examples for u in updates]))
