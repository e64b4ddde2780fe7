"""Client metrics averaged over a round's replies, the same floats in any arrival order."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from strategies.core.update import Metrics

Replies = Sequence[tuple[int, Mapping[str, Any]]]  # each reply's (num_examples, metrics)


def weighted_metrics(results: Replies) -> Metrics:
    """Example-weighted mean of every finite numeric metric the clients reported."""
    totals, weights = dict[str, float](), dict[str, int]()
    for num_examples, metrics in results:
        for key, value in metrics.items():
            if isinstance(value, int | float) and math.isfinite(value):
                totals[key] = totals.get(key, 0.0) + num_examples * float(value)
                weights[key] = weights.get(key, 0) + num_examples
    return {key: totals[key] / weights[key] for key in totals if weights[key] > 0}


def evaluation_metrics(results: Replies) -> Metrics:
    """:func:`weighted_metrics` in :func:`canonical_order`, ``loss`` over every reply (as Flower)."""
    rows = canonical_order(results)
    metrics = weighted_metrics([(n, {k: v for k, v in m.items() if k != "loss"}) for n, m in rows])
    losses = [(n, float(m["loss"])) for n, m in rows if "loss" in m]
    if losses:
        metrics["loss"] = sum(n * loss for n, loss in losses) / sum(n for n, _ in losses)
    return metrics


def canonical_order(results: Replies) -> list[tuple[int, Mapping[str, Any]]]:
    """``results`` sorted by content, so that sums over them do not depend on arrival order."""
    return sorted(results, key=lambda r: (r[0], sorted((k, repr(v)) for k, v in r[1].items())))
