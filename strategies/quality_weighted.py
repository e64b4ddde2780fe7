"""QualityWeighted: clients whose model scores better count more."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from strategies.aggregate import Weighting, quality_weights, uniform_weights
from strategies.core.options import ServerOptions
from strategies.core.rule import Rule
from strategies.core.update import LOG, ClientUpdate, Coefficients

QUALITY_SOURCES = ("client", "server")
QUALITY_DIRECTIONS = ("auto", "max", "min")
QUALITY_WEIGHTINGS: tuple[Weighting, ...] = ("softmax", "linear")


def higher_is_better(metric: str, direction: str) -> bool:
    """``direction`` is "max", "min", or "auto" (lower is better iff the name mentions loss)."""
    if direction == "auto":
        return "loss" not in metric.lower()
    if direction not in ("max", "min"):
        raise ValueError(
            f"quality_direction={direction!r}: choose one of {', '.join(QUALITY_DIRECTIONS)}"
        )
    return direction == "max"


@dataclass(frozen=True, kw_only=True)
class QualityOptions(ServerOptions):
    """Knobs of :class:`QualityWeightedRule` (and the server step).

    quality_source : "client" (the metric the client reports) or "server" (the metric
        ``score_fn`` computes for the client's model on server-held data).
    quality_metric : metric key, e.g. ``val_accuracy`` (higher is better) or ``val_loss``.
    quality_direction : "auto" (lower is better iff the name contains "loss"), "max", "min".
    quality_weighting : "softmax" or "linear".
    quality_temperature : τ > 0; small τ concentrates the weight on the best clients.
    quality_floor : the linear map's zero point (for a loss: the worst loss with weight).
    """

    quality_source: str = "client"
    quality_metric: str = "val_accuracy"
    quality_direction: str = "auto"
    quality_weighting: str = "softmax"
    quality_temperature: float = 0.1
    quality_floor: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.quality_source not in QUALITY_SOURCES:
            raise ValueError(
                f"quality_source={self.quality_source!r}: "
                f"choose one of {', '.join(QUALITY_SOURCES)}"
            )
        if self.quality_weighting not in QUALITY_WEIGHTINGS:
            raise ValueError(
                f"quality_weighting={self.quality_weighting!r}: "
                f"choose one of {', '.join(QUALITY_WEIGHTINGS)}"
            )
        if not self.quality_temperature > 0:
            raise ValueError(f"quality_temperature={self.quality_temperature!r}: must be > 0")
        higher_is_better(self.quality_metric, self.quality_direction)  # checks the direction

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.quality_metric, self.quality_direction)


class QualityWeightedRule(Rule):
    """Quality-weighted mean: ``θ = Σ w_i θ_i`` with ``w_i = g(q_i) / Σ g(q)``.

    ``q_i`` is the quality of client i's model, read from ``quality_metric`` in the
    metrics the client reported (``quality_source="client"``) or in the metrics that
    ``score_fn`` computes for the client's model on a server-held validation set
    (``quality_source="server"``: clients cannot lie about it).

    ``g`` is ``softmax`` (``exp(s_i/τ)`` with ``s = q``, or ``−q`` when lower is better)
    or ``linear`` (``max(q − floor, 0)``, or ``max(floor − q, 0)`` when lower is better).
    An update whose quality is missing or not finite is rejected. If every weight is zero
    (linear, nobody above the floor) the round falls back to the simple average and
    reports ``quality_fallback=1``. Knobs: :class:`QualityOptions`.

    Use it when clients' data differ in quality (label noise, bad sensors): weight goes
    to the models that generalise. Prefer server-side scoring when clients may lie.
    """

    Options = QualityOptions
    options: QualityOptions

    def __init__(self, options: QualityOptions | None = None, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        if self.options.quality_source == "server" and self.score_fn is None:
            raise ValueError("quality_source='server' needs a score_fn")

    def needs_quality(self, server_round: int) -> bool:
        """Whether this round's weights use the quality score."""
        return True

    def check_update(self, server_round: int, update: ClientUpdate) -> str | None:
        if not self.needs_quality(server_round):
            return None
        metric = self.options.quality_metric
        scores: Mapping[str, Any]
        if self.score_fn is not None and self.options.quality_source == "server":
            scores = self.score_fn(update.arrays)
        else:
            scores = update.metrics
        value = scores.get(metric)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return f"quality metric {metric!r} missing or not a number ({value!r})"
        if not math.isfinite(value):
            return f"quality metric {metric!r} is not finite ({value!r})"
        update.quality = float(value)
        return None

    def explain_rejections(self, rejected: Sequence[tuple[ClientUpdate, str]]) -> str:
        metric = self.options.quality_metric
        if not any(reason.startswith(f"quality metric {metric!r}") for _, reason in rejected):
            return super().explain_rejections(rejected)
        # The numbers only: a text metric (such as the Ray node) cannot be a quality.
        sent = sorted(
            {
                key
                for update, _ in rejected
                for key, value in update.metrics.items()
                if isinstance(value, numbers.Real) and not isinstance(value, bool)
            }
        )
        return (
            f"the clients sent the metrics [{', '.join(sent)}]: set quality-metric "
            "(quality_metric) to one of them, or quality-source=server "
            "(quality_source='server') to score each model on server-held data"
        )

    def quality_coefficients(
        self, server_round: int, updates: list[ClientUpdate]
    ) -> tuple[np.ndarray[Any, np.dtype[np.float64]], bool]:
        """Normalised quality weights, and whether they fell back to the simple average."""
        options = self.options
        weights = quality_weights(
            [u.quality for u in updates],
            higher_is_better=options.higher_is_better,
            weighting="linear" if options.quality_weighting == "linear" else "softmax",
            temperature=options.quality_temperature,
            floor=options.quality_floor,
        )
        if weights is None:
            LOG.warning(
                "round %d: every quality weight is zero; using the simple average", server_round
            )
            return uniform_weights(len(updates)), True
        return weights, False

    def coefficients(self, server_round: int, updates: list[ClientUpdate]) -> Coefficients:
        weights, fallback = self.quality_coefficients(server_round, updates)
        return Coefficients(weights, metrics={"quality_fallback": int(fallback)})
