"""One round's inputs and outputs as a rule sees them: client updates, coefficients, results.

Numpy only: no Flower (the adapters build updates from Flower's replies), no torch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from strategies.aggregate import Array, Model

Scalar = bool | bytes | float | int | str
Metrics = dict[str, Scalar]
# A child of Flower's logger: its lines show with Flower's, at Flower's level, without
# importing Flower here.
LOG = logging.getLogger("flwr.strategies")
# ``score_fn(arrays) -> metrics``: a client model scored on server-held data.
ScoreFn = Callable[[Sequence[Array]], Mapping[str, float]]


class NothingAggregatedError(RuntimeError):
    """Too many rounds in a row aggregated nothing: the run stops instead of freezing.

    ``metrics`` are the last round's (``results``, ``failures``, ``rejected`` ...).
    """

    def __init__(self, message: str, metrics: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.metrics = dict(metrics)


@dataclass(slots=True)
class ClientUpdate:
    """One client's reply as the rule sees it.

    ``tensors`` are the layers as ``.npy`` bytes. ``arrays`` are the decoded layers while
    the update is validated (:meth:`Rule.check_update`); they are released after
    validation, so memory does not grow with the number of clients, and decoded again,
    one update at a time, to fold them. What a rule needs of the layers is measured
    during validation: ``quality`` (quality-weighted rules) and ``distance``
    ``‖θ_i − θ_g‖`` (when :meth:`Rule.needs_distance` says so).
    """

    client_id: str
    tensors: Sequence[bytes]
    num_examples: Any
    metrics: Mapping[str, Any]
    arrays: list[Array] = field(default_factory=list)
    quality: float = math.nan
    distance: float = math.nan
    problem: str | None = None  # what an adapter found wrong with the reply itself

    def sort_key(self) -> tuple[int, bytes]:
        """A cheap key that depends on what the client sent, not on when or who it is.

        The tail of each tensor holds its last values; two updates that agree there are,
        in practice, the same update, so their order does not matter.
        """
        n = self.num_examples if isinstance(self.num_examples, int) else 0
        return n, b"".join(bytes(t[-16:]) for t in self.tensors)


@dataclass
class Coefficients:
    """What a rule decides for a round: ``θ = c_g θ_g + Σ c_i θ_i``.

    ``clients`` has one coefficient per valid update (0 drops it); ``global_model`` is
    the share kept of the current global model (non-zero only for norm clipping).
    ``weights`` are the per-client weights reported in the metrics; ``metrics`` is any
    rule-specific detail for the round.
    """

    clients: np.ndarray[Any, np.dtype[np.float64]]
    global_model: float = 0.0
    weights: np.ndarray[Any, np.dtype[np.float64]] | None = None
    metrics: Metrics = field(default_factory=dict)


@dataclass
class RoundResult:
    """What :meth:`Rule.aggregate` made of a round.

    ``arrays`` is the new global model, or None when nothing could be aggregated (the
    previous model stays); ``problem`` then says why, in one line with the fix. (The
    Flower adapters encode ``arrays`` layer by layer, releasing each, so after a round it
    is an empty list there: the model is in what they returned.)
    ``metrics`` always holds ``results``, ``failures``, ``rejected``, ``accepted`` and,
    when something was aggregated, ``weights`` (JSON: client id -> weight).
    """

    arrays: Model | None
    metrics: Metrics
    accepted: list[ClientUpdate]
    problem: str | None = None
