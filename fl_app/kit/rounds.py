"""One flat record per round, whichever loop ran it: the recorder, and the records.

The ServerApp's round loop (and any other: a part's) hands each finished round to one
:class:`RoundRecorder`: records, listeners (results files, progress) and checkpoints are
the same whichever loop ran the round.
"""

from __future__ import annotations

import logging
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from numpy.typing import NDArray

from fl_app.kit.checkpoint import Checkpoint, save_checkpoint
from fl_app.kit.results import RAY_NODE, RoundRecord, RunListener, format_round
from strategies.core.adapter import RuleAdapter
from strategies.core.state import Stateful, StrategyState
from strategies.core.update import NothingAggregatedError

# A child of Flower's logger: these lines show with Flower's, at Flower's level.
LOG = logging.getLogger("flwr.rounds")
NDArrays = list[NDArray[Any]]
# Central evaluation of a global model: the record's ``central_*`` entries.
CentralEvaluation = Callable[[NDArrays], dict[str, Any]]


class RoundRecorder:
    """Keeps the list of round records; tells listeners; checkpoints after each round.

    A record holds ``round``, ``seconds`` (wall time of the round), ``elapsed``,
    ``central_loss`` / ``central_accuracy`` (server test set), ``federated_loss`` /
    ``federated_accuracy`` (clients' validation splits), ``sampled``, ``results``,
    ``failures`` (counted by the loop itself, so a strategy or wrapper that drops its
    metrics cannot hide them), ``sampled_partitions`` (the partition ids the seeded
    sampling chose), ``ray_nodes`` (the Ray nodes the aggregated clients trained on, in
    a simulation), every fit metric of the strategy (``rejected``,
    ``accepted``, ``weights``, the clients' mean ``train_loss`` ...) and, for a round that
    aggregated nothing, ``problem``. Round 0 is the initial model's evaluation.
    """

    def __init__(
        self,
        listeners: Sequence[RunListener] = (),
        checkpoint_path: Path | None = None,
        resume: Checkpoint | None = None,
    ) -> None:
        self.listeners = list(listeners)
        self.checkpoint_path = checkpoint_path
        self.resume = resume
        self.rounds: list[RoundRecord] = list(resume.rounds) if resume else []
        elapsed = float(self.rounds[-1]["elapsed"]) if self.rounds else 0.0
        self.start = timeit.default_timer() - elapsed  # a resumed run goes on counting

    @property
    def first_round(self) -> int:
        return self.resume.round + 1 if self.resume else 1

    def restore(self, strategy: object) -> NDArrays | None:
        """The resumed global model (None for a fresh run); restores the strategy's state."""
        if self.resume is None:
            return None
        if isinstance(strategy, Stateful):
            strategy.set_state(StrategyState.from_arrays(self.resume.strategy_state))
        LOG.info("resuming after round %d", self.resume.round)
        return self.resume.global_model

    def emit(
        self, record: RoundRecord, round_start: float, model: NDArrays, strategy: object
    ) -> None:
        now = timeit.default_timer()
        record |= {"seconds": now - round_start, "elapsed": now - self.start}
        self.rounds.append(record)
        LOG.info("%s", format_round(record))
        for listener in self.listeners:
            listener.round_done(self.rounds)
        # After the listeners: a checkpoint never runs ahead of history.json.
        if self.checkpoint_path is not None:
            state = strategy.get_state() if isinstance(strategy, Stateful) else StrategyState()
            save_checkpoint(
                self.checkpoint_path,
                Checkpoint(
                    round=record["round"],
                    global_model=model,
                    strategy_state=state.to_arrays(),
                    rounds=self.rounds,
                ),
            )

    def done(self, model: NDArrays) -> None:
        for listener in self.listeners:
            listener.run_done(model, self.rounds)


def train_record(
    server_round: int,
    strategy: object,
    *,
    sampled: int,
    results: int,
    failures: int,
    metrics: dict[str, Any],
    aggregated: bool,
) -> RoundRecord:
    """The training part of a round's record, the same for both halves.

    A project strategy's full round result (with ``weights`` and ``problem``) is read
    from ``last_result``; any other strategy gives its metrics. The loop's own counts win.
    """
    last = strategy.last_result if isinstance(strategy, RuleAdapter) else None
    fit_metrics = dict(metrics)
    if last is not None:
        fit_metrics |= last.metrics
        if last.problem is not None:
            fit_metrics["problem"] = last.problem
    fit_metrics.setdefault("accepted", results if aggregated else 0)
    record: RoundRecord = {
        "round": server_round,
        **fit_metrics,
        "sampled": sampled,
        "results": results,
        "failures": failures,
    }
    if isinstance(strategy, RuleAdapter) and strategy.last_sampled is not None:
        record["sampled_partitions"] = strategy.last_sampled
    if last is not None:
        nodes = {u.metrics.get(RAY_NODE) for u in last.accepted} - {None}
        if nodes:
            record["ray_nodes"] = sorted(map(str, nodes))  # where the aggregated clients trained
    return record


def stopped_record(server_round: int, error: NothingAggregatedError, **counts: int) -> RoundRecord:
    """The record of the round that stopped the run."""
    metrics = dict(error.metrics)
    sampled = int(metrics.get("results", 0)) + int(metrics.get("failures", 0))
    return {"round": server_round, "sampled": sampled, **metrics, **counts, "problem": str(error)}
