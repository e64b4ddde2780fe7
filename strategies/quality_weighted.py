"""QualityWeighted: clients whose model scores better count more."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from logging import WARNING
from typing import Any, Literal

import numpy as np
from flwr.common.logger import log

from strategies.aggregate import Array, Weighting, quality_weights, uniform_weights
from strategies.base import AggregationStrategy, ClientUpdate, Coefficients

QualitySource = Literal["client", "server"]
ScoreFn = Callable[[Sequence[Array]], Mapping[str, float]]

QUALITY_WEIGHTINGS: tuple[Weighting, ...] = ("softmax", "linear")


def higher_is_better(metric: str, direction: str) -> bool:
    """``direction`` is "max", "min", or "auto" (lower is better iff the name mentions loss)."""
    if direction == "auto":
        return "loss" not in metric.lower()
    if direction not in ("max", "min"):
        raise ValueError(f"quality_direction={direction!r}: choose one of auto, max, min")
    return direction == "max"


class QualityWeighted(AggregationStrategy):
    """Quality-weighted mean: ``θ = Σ w_i θ_i`` with ``w_i = g(q_i) / Σ g(q)``.

    ``q_i`` is the quality of client i's model, read from ``quality_metric`` in the
    metrics the client reported (``quality_source="client"``) or in the metrics that
    ``score_fn`` computes for the client's model on a server-held validation set
    (``quality_source="server"``: clients cannot lie about it).

    ``g`` is ``softmax`` (``exp(s_i/τ)`` with ``s = q``, or ``−q`` when lower is better)
    or ``linear`` (``max(q − floor, 0)``, or ``max(floor − q, 0)`` when lower is better).
    An update whose quality is missing or not finite is rejected. If every weight is zero
    (linear, nobody above the floor) the round falls back to the simple average and
    reports ``quality_fallback=1``.

    Parameters
    ----------
    quality_source : "client" | "server"
    quality_metric : str
        Metric key, e.g. ``val_accuracy`` (higher is better) or ``val_loss``.
    quality_direction : "auto" | "max" | "min"
        "auto": lower is better iff the metric name contains "loss".
    quality_weighting : "softmax" | "linear"
    quality_temperature : float
        τ > 0; small τ concentrates the weight on the best clients.
    quality_floor : float
        The linear map's zero point.
    score_fn : callable, required when ``quality_source="server"``
        ``score_fn(arrays) -> metrics`` evaluates a client model on server data.

    Use it when clients' data differ in quality (label noise, bad sensors): weight goes
    to the models that generalise. Prefer server-side scoring when clients may lie.
    """

    def __init__(
        self,
        *,
        quality_source: QualitySource = "client",
        quality_metric: str = "val_accuracy",
        quality_direction: str = "auto",
        quality_weighting: Weighting = "softmax",
        quality_temperature: float = 0.1,
        quality_floor: float = 0.0,
        score_fn: ScoreFn | None = None,
        **kwargs: Any,
    ) -> None:
        if quality_source not in ("client", "server"):
            raise ValueError(f"quality_source={quality_source!r}: choose one of client, server")
        if quality_source == "server" and score_fn is None:
            raise ValueError("quality_source='server' needs a score_fn")
        if quality_weighting not in QUALITY_WEIGHTINGS:
            raise ValueError(
                f"quality_weighting={quality_weighting!r}: choose one of softmax, linear"
            )
        if not quality_temperature > 0:
            raise ValueError(f"quality_temperature={quality_temperature!r}: must be > 0")
        super().__init__(**kwargs)
        self.quality_source = quality_source
        self.quality_metric = quality_metric
        self.higher_is_better = higher_is_better(quality_metric, quality_direction)
        self.quality_weighting = quality_weighting
        self.quality_temperature = quality_temperature
        self.quality_floor = quality_floor
        self.score_fn = score_fn

    def needs_quality(self, server_round: int) -> bool:
        """Whether this round's weights use the quality score."""
        return True

    def check_update(self, server_round: int, update: ClientUpdate) -> str | None:
        if not self.needs_quality(server_round):
            return None
        if self.score_fn is not None and self.quality_source == "server":
            scores: Mapping[str, Any] = self.score_fn(update.arrays)
        else:
            scores = update.metrics
        value = scores.get(self.quality_metric)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return f"quality metric {self.quality_metric!r} missing or not a number ({value!r})"
        if not math.isfinite(value):
            return f"quality metric {self.quality_metric!r} is not finite ({value!r})"
        update.quality = float(value)
        return None

    def quality_coefficients(
        self, server_round: int, updates: list[ClientUpdate]
    ) -> tuple[np.ndarray[Any, np.dtype[np.float64]], bool]:
        """Normalised quality weights, and whether they fell back to the simple average."""
        weights = quality_weights(
            [u.quality for u in updates],
            higher_is_better=self.higher_is_better,
            weighting=self.quality_weighting,
            temperature=self.quality_temperature,
            floor=self.quality_floor,
        )
        if weights is None:
            log(
                WARNING,
                "round %d: every quality weight is zero; using the simple average",
                server_round,
            )
            return uniform_weights(len(updates)), True
        return weights, False

    def coefficients(self, server_round: int, updates: list[ClientUpdate]) -> Coefficients:
        weights, fallback = self.quality_coefficients(server_round, updates)
        return Coefficients(weights, metrics={"quality_fallback": int(fallback)})
