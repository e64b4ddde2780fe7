"""Robust filters of the hybrid rule, the optional part ``robust``: MAD, norm clipping, and
a direction and cosine test, on the updates ``Δ_i = θ_i − θ_g`` before the weights.

- ``"mad"`` drops the updates whose norm exceeds ``median + k · MAD`` (``robust_mad_k``);
- ``"clip"`` scales each to norm at most ``c`` (``robust_clip_norm``; 0: the median norm);
  what clipping takes off the updates stays on the global model;
- ``"direction"`` drops those whose norm exceeds ``ρ · median`` (``robust_norm_ratio``: a
  bound honest updates do not reach, unlike MAD's on IID rounds) and those whose cosine to
  ``r = (1/K) Σ min(1, m/‖Δ_i‖) Δ_i`` (the mean of the updates clipped to their median
  norm ``m``, which a minority cannot turn around) is below ``robust_min_cosine``:
  sign-flipped updates keep their norm, not their direction.

A round reports ``filtered`` (updates dropped) and ``clipped`` (updates scaled down).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from strategies import aggregate
from strategies.aggregate import Array, Floats
from strategies.core.codec import decode_tensors
from strategies.core.update import ClientUpdate, Metrics

ROBUST_FILTERS = ("none", "mad", "clip", "direction")


def mad_inliers(norms: Floats, k: float) -> NDArray[np.bool_]:
    """Mask of the norms kept by ``norm ≤ median + k · MAD`` (MAD: median absolute deviation)."""
    values = np.asarray(norms, dtype=np.float64)
    median = np.median(values)
    return np.asarray(values <= median + k * np.median(np.abs(values - median)))


def inner(arrays: Sequence[Array], reference: Sequence[Array], direction: Sequence[Array]) -> float:
    """``⟨θ − θ_ref, d⟩``, as :func:`.aggregate.distance`; in float64 where the layers'
    precision overflows."""
    flat = [np.ascontiguousarray(d).reshape(-1) for d in direction]

    def total(precision: type | None) -> float:
        chunks = aggregate.difference_chunks(arrays, reference, precision)
        return sum(
            float(np.dot(buf, flat[index][start:stop].astype(buf.dtype, copy=False)))
            for index, start, stop, buf in chunks
        )

    with np.errstate(over="ignore", invalid="ignore"):
        fast = total(None)
        return fast if math.isfinite(fast) else total(np.float64)


@dataclass(frozen=True, kw_only=True)
class RobustOptions:
    """The filter's knobs (a base of :class:`~strategies.hybrid.HybridOptions`): which
    filter, MAD's k, the clipping norm c (0: the median norm), the direction filter's norm
    ratio ρ and least cosine."""

    robust_filter: str = "none"
    robust_mad_k: float = 3.0
    robust_clip_norm: float = 0.0
    robust_min_cosine: float = 0.0
    robust_norm_ratio: float = 3.0

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]
        rules = (
            (self.robust_filter in ROBUST_FILTERS, "robust_filter", "choose one of "),
            (self.robust_mad_k > 0, "robust_mad_k", "must be > 0"),
            (self.robust_clip_norm >= 0, "robust_clip_norm", "must be >= 0 (0: median)"),
            (self.robust_norm_ratio > 1.0, "robust_norm_ratio", "must be > 1"),
            (-1 <= self.robust_min_cosine < 1, "robust_min_cosine", "must be in [-1, 1)"),
        )
        for ok, name, rule in rules:
            if not ok:
                rule += ", ".join(ROBUST_FILTERS) if name == "robust_filter" else ""
                raise ValueError(f"{name}={getattr(self, name)!r}: {rule}")


class RobustFilter:
    """The filter in every round of the hybrid rule (a base of
    :class:`~strategies.hybrid.HybridRule`, before the core's, which keeps every update)."""

    options: RobustOptions
    require_global: Callable[[], list[Array]]

    def needs_distance(self, server_round: int) -> bool:
        return self.options.robust_filter != "none"

    def filtered(
        self, server_round: int, updates: list[ClientUpdate]
    ) -> tuple[NDArray[np.bool_], NDArray[np.float64], Metrics]:
        """Which ``updates`` are kept, the factor each is scaled by, and the counts."""
        options = self.options
        count = len(updates)
        kept = np.ones(count, dtype=bool)
        scale = np.ones(count)
        if options.robust_filter != "none":
            norms = np.array([u.distance for u in updates])
            median = float(np.median(norms))
            if options.robust_filter == "mad":
                kept = mad_inliers(norms, options.robust_mad_k)
            elif options.robust_filter == "clip":
                scale = aggregate.clip_factors(norms, options.robust_clip_norm or median)
            else:  # direction
                aligned = self.cosines(updates, aggregate.clip_factors(norms, median))
                short = norms <= options.robust_norm_ratio * median
                kept = short & (aligned >= options.robust_min_cosine)
        dropped, scaled = int(count - kept.sum()), int(np.sum(scale < 1.0))
        return kept, scale, {"filtered": dropped, "clipped": scaled}

    def cosines(self, updates: list[ClientUpdate], scale: Array) -> Array:
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
                product = inner(decode_tensors(update.tensors), global_model, reference)
                cosines[index] = product / (update.distance * length)
        return cosines
