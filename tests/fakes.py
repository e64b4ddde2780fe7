"""Stand-ins for what Flower hands a strategy: client proxies and fit results."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

from strategies.legacy import LegacyStrategy

OK = Status(code=Code.OK, message="")


@dataclass(frozen=True)
class Proxy:
    """Stand-in for a ClientProxy: the strategies only read ``cid``."""

    cid: str


def fit_res(arrays: Sequence[np.ndarray], num_examples: Any, **metrics: Any) -> FitRes:
    return FitRes(
        status=OK,
        parameters=ndarrays_to_parameters(list(arrays)),
        num_examples=num_examples,
        metrics=dict(metrics),
    )


def results_of(
    models: Sequence[Sequence[np.ndarray]],
    counts: Sequence[int],
    metrics: Sequence[dict[str, Any]] | None = None,
    prefix: str = "c",
) -> list[tuple[Proxy, FitRes]]:
    metrics = metrics or [{} for _ in models]
    return [
        (Proxy(f"{prefix}{i}"), fit_res(m, n, **q))
        for i, (m, n, q) in enumerate(zip(models, counts, metrics, strict=True))
    ]


def make(cls: Callable[..., LegacyStrategy], global_model=None, **kwargs):
    """Build a strategy; with ``global_model``, start from it via initial_parameters."""
    if global_model is None:
        return cls(**kwargs)
    strategy = cls(initial_parameters=ndarrays_to_parameters(list(global_model)), **kwargs)
    assert strategy.initialize_parameters(client_manager=None) is not None
    return strategy
