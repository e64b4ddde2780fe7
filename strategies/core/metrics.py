"""Client metrics averaged over a round's replies, the same floats in any arrival order."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from strategies.core.update import Metrics


def weighted_metrics(results: Sequence[tuple[int, Mapping[str, Any]]]) -> Metrics:
    """Example-weighted mean of every finite numeric metric the clients reported."""
    totals: dict[str, float] = {}
    weights: dict[str, int] = {}
    for num_examples, metrics in results:
        for key, value in metrics.items():
            if isinstance(value, int | float) and math.isfinite(value):
                totals[key] = totals.get(key, 0.0) + num_examples * float(value)
                weights[key] = weights.get(key, 0) + num_examples
    return {key: totals[key] / weights[key] for key in totals if weights[key] > 0}


def evaluation_metrics(results: Sequence[tuple[int, Mapping[str, Any]]]) -> Metrics:
    """A federated evaluation round: the example-weighted mean of each metric the clients
    reported, summed in a canonical order (the same floats on both Flower halves and in
    any arrival order). ``loss`` is averaged over every reply, so a non-finite loss shows
    (as in Flower); the other metrics over their finite values (:func:`weighted_metrics`).
    """
    ordered = canonical_order(results)
    metrics = weighted_metrics(
        [(n, {k: v for k, v in m.items() if k != "loss"}) for n, m in ordered]
    )
    losses = [(n, float(m["loss"])) for n, m in ordered if "loss" in m]
    if losses:
        metrics["loss"] = sum(n * loss for n, loss in losses) / sum(n for n, _ in losses)
    return metrics


def canonical_order(
    results: Sequence[tuple[int, Mapping[str, Any]]],
) -> list[tuple[int, Mapping[str, Any]]]:
    """``(num_examples, metrics)`` pairs sorted by content, so the float sums over them are
    the same whatever order the clients answered in (and on both Flower halves)."""
    return sorted(results, key=lambda r: (r[0], sorted((k, repr(v)) for k, v in r[1].items())))
