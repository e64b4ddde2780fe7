"""The rule both Flower API halves wrap: validation, coefficients, the fold."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from strategies.aggregate import Array, Model, all_finite, distance, mismatch, weighted_sum
from strategies.core.codec import decode_tensors
from strategies.core.options import ServerOptions
from strategies.core.state import StrategyState
from strategies.core.update import (
    LOG,
    ClientUpdate,
    Coefficients,
    Metrics,
    NothingAggregatedError,
    RoundResult,
    ScoreFn,
)
from strategies.privacy import PrivateRule  # part: dp
from strategies.server_optimizer import ServerOptimizer  # part: server-optimizer

Rejected = list[tuple[ClientUpdate, str]]  # updates turned down, each with the reason
Folded = Sequence[tuple[ClientUpdate, float]]  # the updates folded, each with its coefficient


class Rule(
    PrivateRule,  # part: dp
    ServerOptimizer,  # part: server-optimizer
):
    """Base of every aggregation rule: ``θ_avg = Σ c_i θ_i`` (``Σ c_i = 1``, from
    :meth:`coefficients`) is the new model. Invalid updates are rejected with their reason; a
    round with nothing valid keeps the previous model (``max_empty_rounds`` in a row stop)."""

    Options: ClassVar[type[ServerOptions]] = ServerOptions
    options: ServerOptions
    state: StrategyState

    def __init__(self, options: ServerOptions | None = None, *, score_fn: ScoreFn | None = None):
        self.options = options if options is not None else self.Options()
        if not isinstance(self.options, self.Options):
            raise TypeError(
                f"{type(self).__name__} takes {self.Options.__name__}, "
                f"not {type(self.options).__name__}"
            )
        self.score_fn = score_fn
        self.state = StrategyState()
        self.global_model: list[Array] | None = None
        self.sampling: tuple[int, int] | None = None  # the round's (sampled, available) clients

    def coefficients(self, server_round: int, updates: list[ClientUpdate]) -> Coefficients:
        """Coefficients of the valid ``updates`` (summing to 1 with ``global_model``)."""
        raise NotImplementedError

    def check_update(self, server_round: int, update: ClientUpdate) -> str | None:
        """Rule-specific validation; return the reason to reject, or None."""
        return None

    def needs_distance(self, server_round: int) -> bool:
        """Whether :meth:`coefficients` reads ``ClientUpdate.distance`` this round."""
        return False

    def explain_rejections(self, rejected: Sequence[tuple[ClientUpdate, str]]) -> str:
        """The fix for a round in which every update was rejected (after the reasons)."""
        return "check what the clients send (layers, num_examples) against the global model"

    def aggregate(
        self,
        server_round: int,
        updates: Sequence[ClientUpdate],
        failures: Sequence[str],
        *,
        indivisible: bool = False,
    ) -> RoundResult:
        """Validate ``updates`` and fold the accepted ones. ``failures``: one string per failed
        client; ``indivisible``: one masked sum stands for every update, any rejection voids it."""
        metrics: Metrics = {"results": len(updates), "failures": len(failures)}
        self.received(updates, metrics)  # part: dp
        accepted, rejected = self._validate(server_round, updates)
        if indivisible and rejected:  # its share is inside every other update
            rejected += [(u, "inside a masked sum with a rejected update") for u in accepted]
            accepted = []
        metrics |= {"rejected": len(rejected), "accepted": len(accepted)}
        if not accepted:
            return self._empty_round(server_round, metrics, rejected, failures)
        self.state.empty_rounds = 0
        chosen = self.coefficients(server_round, accepted)
        count = len(accepted)
        clients = np.asarray(chosen.clients, dtype=np.float64)
        total = float(clients.sum()) + chosen.global_model
        if clients.shape != (count,) or not np.all(np.isfinite(clients)) or abs(total - 1) > 1e-6:
            raise ValueError(
                f"{type(self).__name__}.coefficients gave {clients.tolist()} "
                f"(+ {chosen.global_model} of the global model) for {count} updates: "
                "they must be finite, one per update, and sum to 1"
            )
        weights = chosen.clients if chosen.weights is None else chosen.weights
        answered = len(updates) + len(failures)  # part: dp
        chosen = self.adjusted(server_round, chosen, accepted, answered, metrics)  # part: dp
        # Overflow shows as a non-finite model below, which voids the round with its reason.
        with np.errstate(over="ignore", invalid="ignore"):
            folded = [(u, float(c)) for u, c in zip(accepted, chosen.clients, strict=True) if c]
            average = self.combine(folded, chosen.global_model, decode_tensors(accepted[0].tensors))
            metrics |= self.released(server_round, average, weights, answered, accepted)  # part: dp
            average = self.stepped(server_round, average)  # part: server-optimizer
        if not all_finite(average):
            reason = "the aggregate of the accepted updates overflows the model's dtype"
            metrics |= {"rejected": len(updates), "accepted": 0}
            rejected += [(u, reason) for u in accepted]
            return self._empty_round(server_round, metrics, rejected, failures)
        self.committed(server_round)  # part: server-optimizer
        metrics |= chosen.metrics
        metrics["weights"] = json.dumps(
            {u.client_id: round(float(w), 6) for u, w in zip(accepted, weights, strict=True)}
        )
        LOG.info(
            f"round {server_round}: aggregated {len(folded)} of {len(updates)} results "
            f"({len(rejected)} rejected, {len(failures)} failures)"
        )
        return RoundResult(average, metrics, accepted)

    def combine(self, folded: Folded, global_share: float, template: Sequence[Array]) -> Model:
        """``θ_avg = Σ c_i θ_i + c_g θ_g`` in ``template``'s dtypes, decoding each update when the
        fold reaches it; updates that share one tensor list are folded once, coefficients summed."""
        shared: dict[int, tuple[ClientUpdate, float]] = {}
        for u, c in folded:
            first, total = shared.get(id(u.tensors), (u, 0.0))
            shared[id(u.tensors)] = (first, total + c)
        terms = itertools.chain(
            ((decode_tensors(u.tensors), c) for u, c in shared.values()),
            [(self.require_global(), global_share)] if global_share != 0.0 else [],
        )
        return weighted_sum(terms, template=template)

    def require_global(self) -> list[Array]:
        if self.global_model is None:
            raise RuntimeError(
                f"{type(self).__name__} needs the current global model for this setting: "
                "pass the initial model or let the server configure a round first"
            )
        return self.global_model

    def _empty_round(
        self, server_round: int, metrics: Metrics, rejected: Rejected, failures: Sequence[str]
    ) -> RoundResult:
        if rejected:
            said = "; ".join(
                f"{r} (x{n})" for r, n in Counter(r for _, r in rejected).most_common(3)
            )
            why = f"all {len(rejected)} updates were rejected: {said}; fix: "
            why += self.explain_rejections(rejected)
        elif failures:
            why = f"all {len(failures)} sampled clients failed (first: {failures[0]}); fix: "
            why += "see the clients' errors (run_simulation.py --verbose, or flwr log)"
        else:
            why = "no client was sampled or answered; fix: check that enough clients are "
            why += "connected (min-available-clients) and round-timeout"
        problem = f"round {server_round}: nothing aggregated, keeping the previous model: {why}"
        self.state.empty_rounds += 1
        LOG.warning(problem)
        limit = self.options.max_empty_rounds
        if limit and self.state.empty_rounds >= limit:
            raise NothingAggregatedError(
                f"{problem} (stopping: {self.state.empty_rounds} rounds in a row aggregated "
                f"nothing; max-empty-rounds={limit}, 0 disables the stop)",
                metrics,
            )
        return RoundResult(None, metrics, [], problem)

    def _validate(
        self, server_round: int, updates: Sequence[ClientUpdate]
    ) -> tuple[list[ClientUpdate], Rejected]:
        """The valid updates and the rejected ones (with why), in a canonical order (by
        content): float sums depend on order, and a seeded rerun must match bit for bit."""
        template: Sequence[Array] | None = self.global_model
        accepted: list[ClientUpdate] = []
        rejected: Rejected = []
        for update in sorted(updates, key=ClientUpdate.sort_key):
            if (reason := update.problem) is None:
                try:
                    update.arrays = decode_tensors(update.tensors)
                except ValueError as err:
                    reason = f"undecodable parameters ({err})"
                else:  # no global model known: the first update sets the layout
                    template = update.arrays if template is None else template
                    reason = self._check(server_round, update, template)
                    update.arrays = []
            if reason is None:
                accepted.append(update)
            else:
                rejected.append((update, reason))
                LOG.warning(
                    f"round {server_round}: rejected update from client {update.client_id}: "
                    f"{reason}"
                )
        return accepted, rejected

    def _check(
        self, server_round: int, update: ClientUpdate, template: Sequence[Array]
    ) -> str | None:
        n = update.num_examples
        if isinstance(n, bool) or not isinstance(n, int | np.integer):
            return f"num_examples={n!r} is not an integer"
        if n <= 0:
            return f"num_examples={n} is not positive"
        if (shape_problem := mismatch(update.arrays, template)) is not None:
            return shape_problem
        if not all_finite(update.arrays):
            return "parameters contain NaN or Inf"
        measure = self.needs_distance(server_round)
        measure = measure or self.measures_distance()  # part: dp
        if measure:
            update.distance = distance(update.arrays, self.require_global())
            if not math.isfinite(update.distance):
                return "the update's norm ‖θ_i − θ_g‖ exceeds float64's range"
        if (refused := self.refuses(update)) is not None:  # part: dp
            return refused  # part: dp
        return self.check_update(server_round, update)
