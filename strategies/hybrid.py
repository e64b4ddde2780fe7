"""Hybrid: a λ-mix of data-size and quality weights (an optional part may filter first)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from strategies import aggregate
from strategies.core.update import ClientUpdate, Coefficients, Metrics
from strategies.quality_weighted import QualityOptions, QualityWeightedRule
from strategies.robust import RobustFilter, RobustOptions  # part: robust

LambdaSchedule = float | Callable[[int], float]
# Which updates are kept, the factor each is scaled by, and the round's metrics.
Filtered = tuple[NDArray[np.bool_], NDArray[np.float64], Metrics]


def linear_schedule(start: float, end: float, num_rounds: int) -> Callable[[int], float]:
    """λ moving linearly from ``start`` at round 1 to ``end`` at round ``num_rounds``."""

    def lam(server_round: int) -> float:
        if num_rounds <= 1:
            return start
        progress = min(max(server_round - 1, 0), num_rounds - 1) / (num_rounds - 1)
        return start + (end - start) * progress

    return lam


@dataclass(frozen=True, kw_only=True)
class HybridOptions(
    RobustOptions,  # part: robust
    QualityOptions,
):
    """Knobs of :class:`HybridRule`: the quality knobs, and λ (a constant, a function of the
    round, or moving linearly to ``hybrid_lambda_end`` >= 0 at round ``num_server_rounds``)."""

    hybrid_lambda: LambdaSchedule = 0.5
    hybrid_lambda_end: float = -1.0
    num_server_rounds: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        lam, end, rounds = self.hybrid_lambda, self.hybrid_lambda_end, self.num_server_rounds
        self._require(callable(lam) or 0.0 <= lam <= 1.0, "hybrid_lambda", "must be in [0, 1]")
        self._require(end <= 1.0, "hybrid_lambda_end", "must be <= 1 (< 0: constant λ)")
        whole = isinstance(rounds, int) and not isinstance(rounds, bool)
        self._require(whole and rounds >= 1, "num_server_rounds", "must be an int >= 1")
        moves = f"needs num_server_rounds >= 2 (the rounds over which λ moves), got {rounds}"
        self._require(end < 0 or rounds >= 2, "hybrid_lambda_end", moves)

    def lambda_at(self, server_round: int) -> float:
        """λ of ``server_round``, clipped to [0, 1]."""
        lam = self.hybrid_lambda
        if not callable(lam) and self.hybrid_lambda_end >= 0:
            lam = linear_schedule(lam, self.hybrid_lambda_end, self.num_server_rounds)
        return float(min(max(lam(server_round) if callable(lam) else lam, 0.0), 1.0))


class KeepEvery:
    """Which updates :class:`HybridRule` folds, and by what factor: an optional part may
    drop or scale some; the core keeps every one as it is and reports nothing."""

    def filtered(self, server_round: int, updates: list[ClientUpdate]) -> Filtered:
        count = len(updates)
        return np.ones(count, dtype=bool), np.ones(count), {}


class HybridRule(
    RobustFilter,  # part: robust
    KeepEvery,
    QualityWeightedRule,
):
    """One rule that has the other rules as special cases: ``w_i = λ · n_i / Σ n + (1 − λ) · q_i``
    over the kept updates (:meth:`filtered`), ``q_i`` the quality weights of
    :class:`QualityWeightedRule`. ``λ = 1`` over every update is exactly FedAvg, ``λ = 0`` exactly
    QualityWeighted; quality is only required in rounds where λ < 1."""

    Options = HybridOptions
    options: HybridOptions

    def needs_quality(self, server_round: int) -> bool:
        return self.options.lambda_at(server_round) < 1.0

    def coefficients(self, server_round: int, updates: list[ClientUpdate]) -> Coefficients:
        kept, scale, filtered = self.filtered(server_round, updates)
        kept_updates = [u for u, keep in zip(updates, kept, strict=True) if keep]
        lam = self.options.lambda_at(server_round)
        data_weights = aggregate.example_weights([u.num_examples for u in kept_updates])
        quality = Coefficients(np.zeros(len(kept_updates)), metrics={"quality_fallback": 0})
        if lam < 1.0:  # the quality weights of QualityWeightedRule
            quality = super().coefficients(server_round, kept_updates)
        weights = np.zeros(len(updates))
        weights[kept] = aggregate.mix_weights(lam, data_weights, quality.clients)
        return Coefficients(
            weights * scale,
            global_model=float(np.sum(weights * (1.0 - scale))),  # what scaling takes off
            weights=weights,
            metrics={"lambda": lam, **quality.metrics, **filtered},
        )
