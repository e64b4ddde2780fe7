"""Client metrics averaged over a round's replies, the same floats in any arrival order."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from strategies.core.update import Metrics

ROUND = "aggregation."  # the prefix of the rule's round counts among Flower's train metrics
Replies = Sequence[tuple[int, Mapping[str, Any]]]  # each reply's (num_examples, metrics)


def weighted_metrics(results: Replies) -> Metrics:
    """Example-weighted mean of every finite numeric metric the clients reported, and of every
    list of them element by element (as Flower), over the replies of the first one's length."""
    totals, weights = dict[str, NDArray[np.float64]](), dict[str, int]()
    for num_examples, metrics in results:
        for key, value in metrics.items():
            items = value if isinstance(value, list) else [value]
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in items):
                continue
            numbers = np.asarray(value, dtype=np.float64)  # a list: 1-d, a number: 0-d
            if totals.get(key, numbers).shape == numbers.shape:
                totals[key] = totals.get(key, 0.0) + num_examples * numbers
                weights[key] = weights.get(key, 0) + num_examples
    return {key: (total / weights[key]).tolist() for key, total in totals.items() if weights[key]}


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


def train_metrics(from_clients: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """Flower's train metrics: the clients' aggregated ones, then the rule's own numbers under
    ``ROUND``-prefixed keys, so that a client's metric keeps its name and value."""
    return {**from_clients, **{ROUND + k: v for k, v in own.items() if isinstance(v, int | float)}}
