"""Hybrid: robust filter + λ-mix of data-size and quality weights + server step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from strategies import aggregate
from strategies.base import ClientUpdate, Coefficients
from strategies.quality_weighted import QualityWeighted

RobustFilter = Literal["none", "mad", "clip"]
ROBUST_FILTERS: tuple[RobustFilter, ...] = ("none", "mad", "clip")
LambdaSchedule = float | Callable[[int], float]


def linear_schedule(start: float, end: float, num_rounds: int) -> Callable[[int], float]:
    """λ moving linearly from ``start`` at round 1 to ``end`` at round ``num_rounds``."""

    def lam(server_round: int) -> float:
        if num_rounds <= 1:
            return start
        progress = min(max(server_round - 1, 0), num_rounds - 1) / (num_rounds - 1)
        return start + (end - start) * progress

    return lam


class Hybrid(QualityWeighted):
    """One rule that has the other strategies as special cases.

    1. Robust filter on ``‖θ_i − θ_g‖`` (optional): ``"mad"`` drops updates whose norm
       exceeds ``median + k · MAD``; ``"clip"`` scales each update ``Δ_i = θ_i − θ_g`` to
       norm at most ``c`` (``c = robust_clip_norm``, or this round's median norm when 0).
    2. Weights ``w_i = λ · n_i / Σ n + (1 − λ) · q_i`` over the kept updates, with ``q_i``
       the quality weights of :class:`QualityWeighted` (same knobs). λ is a constant or a
       function of the round (see :func:`linear_schedule`).
    3. The server step (η, β) of :class:`FedAvg`.

    ``λ = 1`` without filter is exactly FedAvg; ``λ = 0`` without filter is exactly
    QualityWeighted. Quality is only required (and missing quality only rejected) in
    rounds where λ < 1.

    Use it on non-IID federations with unreliable clients: the data-size term keeps
    FedAvg's convergence, the quality term discounts poor models, and the filter bounds
    what a single malicious or broken client can do.
    """

    def __init__(
        self,
        *,
        hybrid_lambda: LambdaSchedule = 0.5,
        robust_filter: RobustFilter = "none",
        robust_mad_k: float = 3.0,
        robust_clip_norm: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if not callable(hybrid_lambda) and not 0.0 <= hybrid_lambda <= 1.0:
            raise ValueError(f"hybrid_lambda={hybrid_lambda!r}: must be in [0, 1]")
        if robust_filter not in ROBUST_FILTERS:
            raise ValueError(f"robust_filter={robust_filter!r}: choose one of none, mad, clip")
        if not robust_mad_k > 0:
            raise ValueError(f"robust_mad_k={robust_mad_k!r}: must be > 0")
        if not robust_clip_norm >= 0:
            raise ValueError(f"robust_clip_norm={robust_clip_norm!r}: must be >= 0 (0: median)")
        super().__init__(**kwargs)
        self.hybrid_lambda = hybrid_lambda
        self.robust_filter = robust_filter
        self.robust_mad_k = robust_mad_k
        self.robust_clip_norm = robust_clip_norm

    def lambda_at(self, server_round: int) -> float:
        lam = (
            self.hybrid_lambda(server_round) if callable(self.hybrid_lambda) else self.hybrid_lambda
        )
        return float(min(max(lam, 0.0), 1.0))

    def needs_quality(self, server_round: int) -> bool:
        return self.lambda_at(server_round) < 1.0

    def needs_distance(self, server_round: int) -> bool:
        return self.robust_filter != "none"

    def coefficients(self, server_round: int, updates: list[ClientUpdate]) -> Coefficients:
        count = len(updates)
        kept = np.ones(count, dtype=bool)
        scale = np.ones(count)
        if self.robust_filter != "none":
            norms = [u.distance for u in updates]
            if self.robust_filter == "mad":
                kept = aggregate.mad_inliers(norms, self.robust_mad_k)
            else:
                bound = self.robust_clip_norm or float(np.median(norms))
                scale = aggregate.clip_factors(norms, bound)

        kept_updates = [u for u, keep in zip(updates, kept, strict=True) if keep]
        lam = self.lambda_at(server_round)
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
