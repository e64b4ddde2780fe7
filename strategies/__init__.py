"""Aggregation strategies: the rules, numpy only (:mod:`strategies.core`, a module each), and
their Flower strategies, imported on demand. A new rule: its module, and its line in REGISTRY."""

from __future__ import annotations

import importlib
from typing import Any

from strategies import flower_robust  # part: flower-baselines
from strategies.core.adapter import RuleAdapter, build_rule
from strategies.core.options import ServerOptions
from strategies.core.rule import Rule
from strategies.core.update import ScoreFn
from strategies.fedavg import FedAvgRule
from strategies.hybrid import HybridRule
from strategies.quality_weighted import QualityWeightedRule
from strategies.scaffold import ScaffoldRule  # part: scaffold
from strategies.simple_average import SimpleAverageRule

REGISTRY: dict[str, type[Rule]] = {
    "simple": SimpleAverageRule,
    "quality": QualityWeightedRule,
    "fedavg": FedAvgRule,
    "hybrid": HybridRule,
}

# What a run can name: the registry, then optional parts'.
CHOICES: dict[str, type[Rule]] = {
    **REGISTRY,
    **flower_robust.BASELINES,  # part: flower-baselines
    "scaffold": ScaffoldRule,  # part: scaffold
}

# Each Flower API half's adapter class.
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
    """Rule ``name``'s strategy for Flower API half ``api``; ``kwargs``: its knobs, then Flower's."""
    if api not in ADAPTERS:
        raise ValueError(f"unknown Flower API {api!r}: choose one of {', '.join(ADAPTERS)}")
    rule = build_rule(rule_type(name), kwargs, options=options, score_fn=score_fn)
    module, _, adapter = ADAPTERS[api].rpartition(".")
    strategy: RuleAdapter = getattr(importlib.import_module(module), adapter)(rule=rule, **kwargs)
    return strategy


# strategies.FedAvg & co. are the legacy classes, imported when asked for.  # part: legacy-api
LEGACY_NAMES = ("SimpleAverage", "QualityWeighted", "FedAvg", "Hybrid")  # part: legacy-api


def __getattr__(name: str) -> Any:  # part: legacy-api
    if name in LEGACY_NAMES:  # part: legacy-api
        return getattr(importlib.import_module("strategies.legacy"), name)  # part: legacy-api
    raise AttributeError(f"module 'strategies' has no attribute {name!r}")  # part: legacy-api
