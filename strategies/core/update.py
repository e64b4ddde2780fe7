"""One round's inputs and outputs as a rule sees them: client updates, coefficients, results."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from strategies.aggregate import Array, Model

Metrics = dict[str, bool | bytes | float | int | str]
LOG = logging.getLogger("flwr.strategies")  # a child of Flower's: shown at Flower's level
ScoreFn = Callable[[Sequence[Array]], Mapping[str, float]]  # scores a model on server data


class NothingAggregatedError(RuntimeError):
    """Too many rounds in a row aggregated nothing: the run stops instead of freezing."""

    def __init__(self, message: str, metrics: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.metrics = dict(metrics)  # the last round's


@dataclass(slots=True)
class ClientUpdate:
    """One client's reply; its decoded ``arrays`` are dropped after validation, to bound memory."""

    client_id: str
    tensors: Sequence[bytes]  # the layers as .npy bytes
    num_examples: Any  # validation checks that it is a positive integer
    metrics: Mapping[str, Any]
    arrays: list[Array] = field(default_factory=list)
    quality: float = math.nan
    distance: float = math.nan  # ‖θ_i − θ_g‖, when Rule.needs_distance says so
    problem: str | None = None  # what an adapter found wrong with the reply itself

    def sort_key(self) -> tuple[int, bytes]:
        """A cheap key of what was sent (not who or when): equal tensor tails, same update."""
        n = self.num_examples if isinstance(self.num_examples, int) else 0
        return n, b"".join(bytes(t[-16:]) for t in self.tensors)


@dataclass
class Coefficients:
    """A rule's decision for a round: ``θ = c_g θ_g + Σ c_i θ_i``."""

    clients: Array  # c_i, one per valid update (0 drops it)
    global_model: float = 0.0  # c_g
    weights: Array | None = None  # reported (None: clients)
    metrics: Metrics = field(default_factory=dict)  # the rule's own details of the round


@dataclass
class RoundResult:  # what Rule.aggregate made of a round
    arrays: Model | None  # the new model, emptied as an adapter encodes it; None: nothing new
    metrics: Metrics  # results, failures, rejected, accepted; weights (JSON) if aggregated
    accepted: list[ClientUpdate]
    problem: str | None = None  # why nothing was aggregated, with the fix
