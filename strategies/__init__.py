"""Aggregation strategies for both Flower API halves, from one Flower-free core.

- :mod:`strategies.core` and the rule modules (``simple_average``, ``fedavg``,
  ``quality_weighted``, ``hybrid``): the math, numpy only.
- :mod:`strategies.legacy`: the rules as ``flwr.server.strategy`` strategies
  (``strategies.FedAvg`` ... are these).
- :mod:`strategies.message`: the rules as ``flwr.serverapp.strategy`` strategies.

Importing this package imports no Flower: the legacy classes load on first use.

Add a strategy: write ``strategies/my_rule.py`` with a subclass of
:class:`~strategies.core.rule.Rule` that implements ``coefficients`` (and, for new knobs, an
``Options`` dataclass), then add one line to ``REGISTRY`` below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from strategies import flower_robust  # part: flower-baselines
from strategies.core.adapter import build_rule, take_knobs
from strategies.core.options import ServerOptions
from strategies.core.rule import Rule, secure_aggregation_problem
from strategies.core.update import ScoreFn
from strategies.fedavg import FedAvgRule
from strategies.hybrid import HybridRule
from strategies.quality_weighted import QualityWeightedRule
from strategies.simple_average import SimpleAverageRule

if TYPE_CHECKING:
    from strategies.legacy import FedAvg, Hybrid, LegacyStrategy, QualityWeighted, SimpleAverage
    from strategies.message import MessageStrategy

REGISTRY: dict[str, type[Rule]] = {
    "simple": SimpleAverageRule,
    "quality": QualityWeightedRule,
    "fedavg": FedAvgRule,
    "hybrid": HybridRule,
}

# The Flower API halves a strategy can run on (config key ``flower-api``).
FLOWER_APIS = ("legacy", "message")


# Flower's robust aggregators as experiment baselines (strategies.flower_robust, not part
# of the strategies' API): the optional part flower-baselines (docs/template.md).
BASELINES: dict[str, type[Rule]] = {
    **flower_robust.BASELINES,  # part: flower-baselines
}

# What a run can name as its strategy: the four, and the baselines.
CHOICES: dict[str, type[Rule]] = {**REGISTRY, **BASELINES}


def rule_type(name: str) -> type[Rule]:
    """The rule registered as ``name`` (one of :data:`CHOICES`)."""
    if name not in CHOICES:
        raise ValueError(f"unknown strategy {name!r}: choose one of {', '.join(CHOICES)}")
    return CHOICES[name]


def build(
    name: str,
    *,
    api: str = "legacy",
    options: ServerOptions | None = None,
    score_fn: ScoreFn | None = None,
    **kwargs: Any,
) -> LegacyStrategy | MessageStrategy:
    """The strategy of rule ``name`` for Flower API half ``api`` (``legacy`` or ``message``).

    ``kwargs`` are the rule's knobs (when no ``options`` are given) and the Flower
    strategy's own arguments (``fraction_fit`` ... for legacy, ``fraction_train`` ... for
    message).
    """
    if api not in FLOWER_APIS:
        raise ValueError(f"unknown Flower API {api!r}: choose one of {', '.join(FLOWER_APIS)}")
    chosen = rule_type(name)
    rule = build_rule(
        chosen, rule=None, options=options, score_fn=score_fn, knobs=take_knobs(chosen, kwargs)
    )
    from strategies.legacy import LegacyStrategy
    from strategies.message import MessageStrategy

    adapter = LegacyStrategy if api == "legacy" else MessageStrategy
    return adapter(rule=rule, **kwargs)


_LEGACY_NAMES = ("SimpleAverage", "QualityWeighted", "FedAvg", "Hybrid", "LegacyStrategy")


def __getattr__(name: str) -> Any:
    # strategies.FedAvg & co. (the legacy classes, as before) without importing Flower
    # until someone asks for them.
    if name in _LEGACY_NAMES:
        from strategies import legacy

        return getattr(legacy, name)
    raise AttributeError(f"module 'strategies' has no attribute {name!r}")


__all__ = [
    "BASELINES",
    "CHOICES",
    "FLOWER_APIS",
    "REGISTRY",
    "FedAvg",
    "FedAvgRule",
    "Hybrid",
    "HybridRule",
    "LegacyStrategy",
    "QualityWeighted",
    "QualityWeightedRule",
    "Rule",
    "ServerOptions",
    "SimpleAverage",
    "SimpleAverageRule",
    "build",
    "rule_type",
    "secure_aggregation_problem",
]
