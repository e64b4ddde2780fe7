"""Hybrid: robust filter + λ-mix of data-size and quality weights + server step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
    """Knobs of :class:`HybridRule`: the quality knobs, the server step, and

    hybrid_lambda : λ in [0, 1], the share of the data-size weights; or a function of
        the round (see :func:`linear_schedule`).
    hybrid_lambda_end : λ at round ``num_server_rounds``, reached linearly from
        ``hybrid_lambda`` at round 1; a negative value (-1) keeps λ constant.
    num_server_rounds : the rounds over which that schedule runs.
    robust_filter : "none", "mad" (drop norms above median + k·MAD), "clip", or
        "direction" (drop norms above ρ·median and updates pointing away from the others).
    robust_mad_k : k > 0 of the mad filter.
    robust_clip_norm : the clip filter's bound c >= 0 (0: this round's median norm).
    robust_norm_ratio : ρ > 1 of the direction filter.
    robust_min_cosine : the direction filter keeps updates whose cosine to the reference
        direction is at least this, in [-1, 1).
    """

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
        lam = self.hybrid_lambda
        if not callable(lam) and not 0.0 <= lam <= 1.0:
            raise ValueError(f"hybrid_lambda={lam!r}: must be in [0, 1]")
        if not self.hybrid_lambda_end <= 1.0:
            raise ValueError(
                f"hybrid_lambda_end={self.hybrid_lambda_end!r}: must be <= 1 (< 0: constant λ)"
            )
        rounds = self.num_server_rounds
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"num_server_rounds={rounds!r}: must be an int >= 1")
        if self.hybrid_lambda_end >= 0 and rounds < 2:
            raise ValueError(
                f"hybrid_lambda_end={self.hybrid_lambda_end!r} needs num_server_rounds >= 2 "
                f"(the rounds over which λ moves), got {rounds}"
            )
        if self.robust_filter not in ROBUST_FILTERS:
            raise ValueError(
                f"robust_filter={self.robust_filter!r}: choose one of {', '.join(ROBUST_FILTERS)}"
            )
        if not self.robust_mad_k > 0:
            raise ValueError(f"robust_mad_k={self.robust_mad_k!r}: must be > 0")
        if not self.robust_clip_norm >= 0:
            raise ValueError(
                f"robust_clip_norm={self.robust_clip_norm!r}: must be >= 0 (0: median)"
            )
        if not self.robust_norm_ratio > 1.0:
            raise ValueError(f"robust_norm_ratio={self.robust_norm_ratio!r}: must be > 1")
        if not -1.0 <= self.robust_min_cosine < 1.0:
            raise ValueError(f"robust_min_cosine={self.robust_min_cosine!r}: must be in [-1, 1)")

    def lambda_at(self, server_round: int) -> float:
        """λ of ``server_round``, clipped to [0, 1]."""
        lam = self.hybrid_lambda
        if callable(lam):
            value = lam(server_round)
        elif self.hybrid_lambda_end >= 0:
            value = linear_schedule(lam, self.hybrid_lambda_end, self.num_server_rounds)(
                server_round
            )
        else:
            value = lam
        return float(min(max(value, 0.0), 1.0))


class HybridRule(QualityWeightedRule):
    """One rule that has the other rules as special cases.

    1. Robust filter (optional), on the updates ``Δ_i = θ_i − θ_g``: ``"mad"`` drops
       updates whose norm exceeds ``median + k · MAD``; ``"clip"`` scales each update to
       norm at most ``c`` (``c = robust_clip_norm``, or this round's median norm when 0);
       ``"direction"`` drops every update whose norm exceeds ``ρ · median``
       (``robust_norm_ratio``, 3: a bound honest updates do not reach, unlike MAD's,
       which drops honest updates of IID rounds) and every update whose cosine to the
       reference ``r = (1/K) Σ min(1, m/‖Δ_i‖) Δ_i`` (the mean of the updates clipped to
       their median norm ``m``, which a minority cannot turn around) is below
       ``robust_min_cosine``: sign-flipped updates keep their norm but not their
       direction. The kept updates are not changed. It reads the updates twice more (for
       ``r``, then the cosines) and holds ``r``, one model.
    2. Weights ``w_i = λ · n_i / Σ n + (1 − λ) · q_i`` over the kept updates, with ``q_i``
       the quality weights of :class:`QualityWeightedRule` (same knobs). λ is a constant,
       a linear schedule (``hybrid_lambda`` → ``hybrid_lambda_end``) or a function.
    3. The server step (η, β) of FedAvg.

    ``λ = 1`` without filter is exactly FedAvg; ``λ = 0`` without filter is exactly
    QualityWeighted. Quality is only required (and missing quality only rejected) in
    rounds where λ < 1. Knobs: :class:`HybridOptions`.

    Use it on non-IID federations with unreliable clients: the data-size term keeps
    FedAvg's convergence, the quality term discounts poor models, and the filter bounds
    what a single malicious or broken client can do.
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
            else:  # direction: the reference is the mean of the updates clipped to the median
                aligned = self.cosines(updates, aggregate.clip_factors(norms, median))
                kept = (norms <= options.robust_norm_ratio * median) & (
                    aligned >= options.robust_min_cosine
                )

        kept_updates = [u for u, keep in zip(updates, kept, strict=True) if keep]
        lam = options.lambda_at(server_round)
        data_weights = aggregate.example_weights([u.num_examples for u in kept_updates])
        if lam < 1.0:
            quality, fallback = self.quality_coefficients(server_round, kept_updates)
        else:
            quality, fallback = np.zeros(len(kept_updates)), False
        weights = np.zeros(count)
        weights[kept] = aggregate.mix_weights(lam, data_weights, quality)
        clients = weights * scale
        return Coefficients(
            clients,
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

    def cosines(
        self, updates: list[ClientUpdate], scale: np.ndarray[Any, Any]
    ) -> np.ndarray[Any, Any]:
        """Cosine of each update ``Δ_i`` to ``r = (1/K) Σ s_i Δ_i``, the mean of the updates
        scaled by their clip factors ``s_i`` (0 where ``Δ_i`` or ``r`` is zero)."""
        global_model = self.require_global()
        factors = scale / len(updates)
        reference = aggregate.weighted_sum(
            ((decode_tensors(u.tensors), float(f)) for u, f in zip(updates, factors, strict=True)),
            template=[
                np.empty(g.shape, np.promote_types(g.dtype, np.float32)) for g in global_model
            ],
            relative_to=global_model,
        )
        length = aggregate.norm(reference)
        cosines = np.zeros(len(updates))
        for index, update in enumerate(updates):
            size = update.distance
            if size > 0 and length > 0:
                inner = aggregate.inner(decode_tensors(update.tensors), global_model, reference)
                cosines[index] = inner / (size * length)
        return cosines
