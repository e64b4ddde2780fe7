"""Hybrid: robust filter + λ-mix of data-size and quality weights + server step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from strategies import aggregate
from strategies.core.codec import decode_tensors
from strategies.core.update import ClientUpdate, Coefficients
from strategies.quality_weighted import QualityOptions, QualityWeightedRule

ROBUST_FILTERS = ("none", "mad", "clip", "direction")
LambdaSchedule = float | Callable[[int], float]


def linear_schedule(start: float, end: float, num_rounds: int) -> Callable[[int], float]:
    """λ moving linearly from ``start`` at round 1 to ``end`` at round ``num_rounds``."""

    def lam(server_round: int) -> float:
        if num_rounds <= 1:
            return start
        progress = min(max(server_round - 1, 0), num_rounds - 1) / (num_rounds - 1)
        return start + (end - start) * progress

    return lam


@dataclass(frozen=True, kw_only=True)
class HybridOptions(QualityOptions):
    """Knobs of :class:`HybridRule`: the quality knobs, the server step, λ (a constant, a function
    of the round, or moving linearly to ``hybrid_lambda_end`` at round ``num_server_rounds``;
    -1: constant), and the robust filter with its k, c (0: the median norm), ρ and min cosine."""

    hybrid_lambda: LambdaSchedule = 0.5
    hybrid_lambda_end: float = -1.0
    num_server_rounds: int = 1
    robust_filter: str = "none"
    robust_mad_k: float = 3.0
    robust_clip_norm: float = 0.0
    robust_min_cosine: float = 0.0
    robust_norm_ratio: float = 3.0

    def __post_init__(self) -> None:
        super().__post_init__()
        lam, end, rounds = self.hybrid_lambda, self.hybrid_lambda_end, self.num_server_rounds
        self._require(callable(lam) or 0.0 <= lam <= 1.0, "hybrid_lambda", "must be in [0, 1]")
        self._require(end <= 1.0, "hybrid_lambda_end", "must be <= 1 (< 0: constant λ)")
        whole = isinstance(rounds, int) and not isinstance(rounds, bool)
        self._require(whole and rounds >= 1, "num_server_rounds", "must be an int >= 1")
        if end >= 0 and rounds < 2:
            raise ValueError(
                f"hybrid_lambda_end={end!r} needs num_server_rounds >= 2 "
                f"(the rounds over which λ moves), got {rounds}"
            )
        self._require_one_of("robust_filter", ROBUST_FILTERS)
        self._require(self.robust_mad_k > 0, "robust_mad_k", "must be > 0")
        self._require(self.robust_clip_norm >= 0, "robust_clip_norm", "must be >= 0 (0: median)")
        self._require(self.robust_norm_ratio > 1.0, "robust_norm_ratio", "must be > 1")
        self._require(-1 <= self.robust_min_cosine < 1, "robust_min_cosine", "must be in [-1, 1)")

    def lambda_at(self, server_round: int) -> float:
        """λ of ``server_round``, clipped to [0, 1]."""
        lam = self.hybrid_lambda
        if not callable(lam) and self.hybrid_lambda_end >= 0:
            lam = linear_schedule(lam, self.hybrid_lambda_end, self.num_server_rounds)
        return float(min(max(lam(server_round) if callable(lam) else lam, 0.0), 1.0))


class HybridRule(QualityWeightedRule):
    """One rule that has the other rules as special cases.

    1. Robust filter (optional) on the updates ``Δ_i = θ_i − θ_g``: ``"mad"`` drops those whose
       norm exceeds ``median + k · MAD``; ``"clip"`` scales each to norm at most ``c``;
       ``"direction"`` drops those whose norm exceeds ``ρ · median`` (a bound honest updates
       do not reach, unlike MAD's on IID rounds) and those whose cosine to
       ``r = (1/K) Σ min(1, m/‖Δ_i‖) Δ_i`` (the mean of the updates clipped to their median
       norm ``m``, which a minority cannot turn around) is below ``robust_min_cosine``:
       sign-flipped updates keep their norm, not their direction.
    2. Weights ``w_i = λ · n_i / Σ n + (1 − λ) · q_i`` over the kept updates, ``q_i`` the
       quality weights of :class:`QualityWeightedRule`; then FedAvg's server step (η, β).

    ``λ = 1`` without filter is exactly FedAvg, ``λ = 0`` exactly QualityWeighted; quality is
    only required in rounds where λ < 1. For non-IID federations with unreliable clients.
    """

    Options = HybridOptions
    options: HybridOptions

    def needs_quality(self, server_round: int) -> bool:
        return self.options.lambda_at(server_round) < 1.0

    def needs_distance(self, server_round: int) -> bool:
        return self.options.robust_filter != "none"

    def coefficients(self, server_round: int, updates: list[ClientUpdate]) -> Coefficients:
        options = self.options
        count = len(updates)
        kept = np.ones(count, dtype=bool)
        scale = np.ones(count)
        if options.robust_filter != "none":
            norms = np.array([u.distance for u in updates])
            median = float(np.median(norms))
            if options.robust_filter == "mad":
                kept = aggregate.mad_inliers(norms, options.robust_mad_k)
            elif options.robust_filter == "clip":
                scale = aggregate.clip_factors(norms, options.robust_clip_norm or median)
            else:  # direction
                aligned = self.cosines(updates, aggregate.clip_factors(norms, median))
                short = norms <= options.robust_norm_ratio * median
                kept = short & (aligned >= options.robust_min_cosine)
        kept_updates = [u for u, keep in zip(updates, kept, strict=True) if keep]
        lam = options.lambda_at(server_round)
        data_weights = aggregate.example_weights([u.num_examples for u in kept_updates])
        if lam < 1.0:
            quality, fallback = self.quality_coefficients(server_round, kept_updates)
        else:
            quality, fallback = np.zeros(len(kept_updates)), False
        weights = np.zeros(count)
        weights[kept] = aggregate.mix_weights(lam, data_weights, quality)
        return Coefficients(
            weights * scale,
            # What clipping takes off the updates stays on the global model.
            global_model=float(np.sum(weights * (1.0 - scale))),
            weights=weights,
            metrics={
                "lambda": lam,
                "quality_fallback": int(fallback),
                "filtered": int(count - kept.sum()),
                "clipped": int(np.sum(scale < 1.0)),
            },
        )

    def cosines(self, updates: list[ClientUpdate], scale: aggregate.Array) -> aggregate.Array:
        """Cosine of each ``Δ_i`` to ``r = (1/K) Σ s_i Δ_i`` (0 where ``Δ_i`` or ``r`` is 0)."""
        global_model = self.require_global()
        factors = scale / len(updates)
        template = [np.empty(g.shape, np.promote_types(g.dtype, np.float32)) for g in global_model]
        reference = aggregate.weighted_sum(
            ((decode_tensors(u.tensors), float(f)) for u, f in zip(updates, factors, strict=True)),
            template=template,
            relative_to=global_model,
        )
        length = aggregate.norm(reference)
        cosines = np.zeros(len(updates))
        for index, update in enumerate(updates):
            if update.distance > 0 and length > 0:
                inner = aggregate.inner(decode_tensors(update.tensors), global_model, reference)
                cosines[index] = inner / (update.distance * length)
        return cosines
