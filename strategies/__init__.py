"""Aggregation strategies for the Flower legacy Strategy API.

Add a strategy: write ``strategies/my_rule.py`` with a subclass of
:class:`AggregationStrategy` that implements ``coefficients``, then add one line to
``REGISTRY`` below.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from strategies.base import AggregationStrategy, ClientUpdate, Coefficients, weighted_metrics
from strategies.fedavg import FedAvg
from strategies.hybrid import Hybrid, linear_schedule
from strategies.quality_weighted import QualityWeighted
from strategies.simple_average import SimpleAverage

REGISTRY: dict[str, type[AggregationStrategy]] = {
    "simple": SimpleAverage,
    "quality": QualityWeighted,
    "fedavg": FedAvg,
    "hybrid": Hybrid,
}


def get(name: str, **kwargs: Any) -> AggregationStrategy:
    """Build the strategy registered as ``name`` with keyword arguments ``kwargs``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown strategy {name!r}: choose one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](**kwargs)


def own_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``options`` that strategy ``name`` (or a base class of it) declares.

    Lets one config carry every strategy's knobs while each strategy gets only its own.
    """
    accepted: set[str] = set()
    for cls in REGISTRY[name].__mro__:
        init = vars(cls).get("__init__")
        if init is not None:
            accepted |= set(inspect.signature(init).parameters)
    return {key: value for key, value in options.items() if key in accepted}


__all__ = [
    "REGISTRY",
    "AggregationStrategy",
    "ClientUpdate",
    "Coefficients",
    "FedAvg",
    "Hybrid",
    "QualityWeighted",
    "SimpleAverage",
    "get",
    "linear_schedule",
    "own_options",
    "weighted_metrics",
]
