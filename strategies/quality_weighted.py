"""QualityWeighted: clients whose model scores better count more."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from strategies.aggregate import quality_weights, uniform_weights
from strategies.core.options import ServerOptions
from strategies.core.rule import Rule
from strategies.core.update import LOG, ClientUpdate, Coefficients

QUALITY_SOURCES = ("client", "server")
QUALITY_DIRECTIONS = ("auto", "max", "min")
QUALITY_WEIGHTINGS = ("softmax", "linear")


def higher_is_better(metric: str, direction: str) -> bool:
    """``direction`` is "max", "min", or "auto" (lower is better iff the name mentions loss)."""
    return "loss" not in metric.lower() if direction == "auto" else direction == "max"


@dataclass(frozen=True, kw_only=True)
class QualityOptions(ServerOptions):
    """Knobs of :class:`QualityWeightedRule`: the quality's source, metric and direction, and
    ``g``'s (:func:`.aggregate.quality_weights`; a small τ > 0 favours the best clients)."""

    quality_source: str = "client"
    quality_metric: str = "val_accuracy"
    quality_direction: str = "auto"
    quality_weighting: str = "softmax"
    quality_temperature: float = 0.1
    quality_floor: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require_one_of("quality_source", QUALITY_SOURCES)
        self._require_one_of("quality_weighting", QUALITY_WEIGHTINGS)
        self._require(self.quality_temperature > 0, "quality_temperature", "must be > 0")
        self._require_one_of("quality_direction", QUALITY_DIRECTIONS)

    def _require(self, ok: bool, field: str, rule: str) -> None:
        if not ok:
            raise ValueError(f"{field}={getattr(self, field)!r}: {rule}")

    def _require_one_of(self, field: str, choices: Sequence[str]) -> None:
        self._require(getattr(self, field) in choices, field, f"choose one of {', '.join(choices)}")

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.quality_metric, self.quality_direction)


class QualityWeightedRule(Rule):
    """Quality-weighted mean: ``θ = Σ w_i θ_i`` with ``w_i = g(q_i) / Σ g(q)``. ``q_i`` is
    ``quality_metric`` as client i reports it, or as ``score_fn`` computes it on server-held data
    (``quality_source="server"``: clients cannot lie). An update without a finite quality is
    rejected; if every weight is zero the round takes the simple average."""

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
        scores: Mapping[str, Any] = update.metrics
        if self.score_fn is not None and self.options.quality_source == "server":
            scores = self.score_fn(update.arrays)
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
        metrics = [item for update, _ in rejected for item in update.metrics.items()]
        sent = {k for k, v in metrics if isinstance(v, numbers.Real) and not isinstance(v, bool)}
        return (
            f"the clients sent the metrics [{', '.join(sorted(sent))}]: set quality-metric "
            "(quality_metric) to one of them, or quality-source=server "
            "(quality_source='server') to score each model on server-held data"
        )

    def coefficients(self, server_round: int, updates: list[ClientUpdate]) -> Coefficients:
        options = self.options
        weights = quality_weights(
            [u.quality for u in updates],
            higher_is_better=options.higher_is_better,
            weighting=options.quality_weighting,
            temperature=options.quality_temperature,
            floor=options.quality_floor,
        )
        if fallback := weights is None:
            LOG.warning("round %d: every quality weight is 0: simple average instead", server_round)
            weights = uniform_weights(len(updates))
        return Coefficients(weights, metrics={"quality_fallback": int(fallback)})
