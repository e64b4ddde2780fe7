"""Aggregation strategies from one Flower-free core.

- :mod:`strategies.core` and the rule modules (``simple_average``, ``fedavg``,
  ``quality_weighted``, ``hybrid``): the math, numpy only.
- :mod:`strategies.message`: the rules as Flower Message-API strategies
  (``flwr.serverapp.strategy``).

Importing this package imports no Flower: an adapter loads when it is asked for.

Add a strategy: write ``strategies/my_rule.py`` with a subclass of
:class:`~strategies.core.rule.Rule` that implements ``coefficients`` (and, for new knobs, an
``Options`` dataclass), then add one line to ``REGISTRY`` below (docs/extending.md).
"""

from __future__ import annotations

import importlib
from typing import Any

from strategies import flower_robust  # part: flower-baselines
from strategies.core.adapter import RuleAdapter, build_rule, take_knobs
from strategies.core.options import ServerOptions
from strategies.core.rule import Rule
from strategies.core.update import ScoreFn
from strategies.fedavg import FedAvgRule
from strategies.hybrid import HybridRule
from strategies.quality_weighted import QualityWeightedRule
from strategies.simple_average import SimpleAverageRule

REGISTRY: dict[str, type[Rule]] = {
    "simple": SimpleAverageRule,
    "quality": QualityWeightedRule,
    "fedavg": FedAvgRule,
    "hybrid": HybridRule,
}

# Reference rules for experiments, beside the strategies: each optional part's.
BASELINES: dict[str, type[Rule]] = {
    **flower_robust.BASELINES,  # part: flower-baselines
}

# What a run can name as its strategy.
CHOICES: dict[str, type[Rule]] = {**REGISTRY, **BASELINES}

# The Flower API halves: the module of each one's adapter.
ADAPTERS = {
    "message": "strategies.message.MessageStrategy",
    "legacy": "strategies.legacy.LegacyStrategy",  # part: legacy-api
}


def rule_type(name: str) -> type[Rule]:
    """The rule registered as ``name`` (one of :data:`CHOICES`)."""
    if name not in CHOICES:
        raise ValueError(f"unknown strategy {name!r}: choose one of {', '.join(CHOICES)}")
    return CHOICES[name]


def build(
    name: str,
    *,
    api: str = "message",
    options: ServerOptions | None = None,
    score_fn: ScoreFn | None = None,
    **kwargs: Any,
) -> RuleAdapter:
    """The strategy of rule ``name`` for the Flower API half ``api`` (one of ``ADAPTERS``).

    ``kwargs`` are the rule's knobs (when no ``options`` are given) and the Flower
    strategy's own arguments (``fraction_train`` ... on the Message API).
    """
    if api not in ADAPTERS:
        raise ValueError(f"unknown Flower API {api!r}: choose one of {', '.join(ADAPTERS)}")
    chosen = rule_type(name)
    rule = build_rule(
        chosen, rule=None, options=options, score_fn=score_fn, knobs=take_knobs(chosen, kwargs)
    )
    module, _, adapter = ADAPTERS[api].rpartition(".")
    strategy: RuleAdapter = getattr(importlib.import_module(module), adapter)(rule=rule, **kwargs)
    return strategy


# strategies.FedAvg & co. are the legacy classes, imported when asked for.  # part: legacy-api
LEGACY_NAMES = ("SimpleAverage", "QualityWeighted", "FedAvg", "Hybrid")  # part: legacy-api


def __getattr__(name: str) -> Any:
    if name in LEGACY_NAMES:  # part: legacy-api
        return getattr(importlib.import_module("strategies.legacy"), name)  # part: legacy-api
    raise AttributeError(f"module 'strategies' has no attribute {name!r}")


__all__ = [
    "ADAPTERS",
    "BASELINES",
    "CHOICES",
    "REGISTRY",
    "FedAvgRule",
    "HybridRule",
    "QualityWeightedRule",
    "Rule",
    "ServerOptions",
    "SimpleAverageRule",
    "build",
    "rule_type",
]
