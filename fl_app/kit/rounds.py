"""One flat record per round, whichever loop ran it (the ServerApp's or a part's): the
recorder keeps them, tells the listeners (results files, printed lines) and checkpoints."""

from __future__ import annotations

import logging
import timeit
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fl_app.kit.checkpoint import Checkpoint, save_checkpoint
from fl_app.kit.results import NDArrays, RoundRecord, RunListener, format_round
from fl_app.parts.ray_nodes import trained_on  # part: ray-cluster
from strategies.core.adapter import RuleAdapter
from strategies.core.metrics import ROUND
from strategies.core.state import Stateful, StrategyState
from strategies.core.update import NothingAggregatedError

LOG = logging.getLogger("flwr.rounds")  # a child of Flower's logger: shown at Flower's level


class RoundRecorder:
    """Keeps the round records, tells the listeners, checkpoints after each round. A record has
    the columns of ``results.METRICS_COLUMNS`` (failures counted by the loop: no strategy can
    hide them), ``sampled_partitions``, the strategy's fit metrics and, if nothing was
    aggregated, ``problem``."""

    def __init__(
        self,
        listeners: Sequence[RunListener] = (),
        checkpoint_path: Path | None = None,
        resume: Checkpoint | None = None,
    ) -> None:
        self.listeners, self.checkpoint_path, self.resume = list(listeners), checkpoint_path, resume
        self.rounds: list[RoundRecord] = list(resume.rounds) if resume else []
        elapsed = float(self.rounds[-1]["elapsed"]) if self.rounds else 0.0
        self.start = timeit.default_timer() - elapsed  # a resumed run goes on counting
        self.first_round = resume.round + 1 if resume else 1

    def restore(self, strategy: object) -> NDArrays | None:
        """The resumed global model (None for a fresh run); restores the strategy's state."""
        if self.resume is None:
            return None
        if isinstance(strategy, Stateful):
            strategy.set_state(StrategyState.from_arrays(self.resume.strategy_state))
        LOG.info("resuming after round %d", self.resume.round)
        return self.resume.global_model

    def emit(self, record: RoundRecord, started: float, model: NDArrays, strategy: object) -> None:
        now = timeit.default_timer()
        record |= {"seconds": now - started, "elapsed": now - self.start}
        self.rounds.append(record)
        LOG.info("%s", format_round(record))
        for listener in self.listeners:
            listener.round_done(self.rounds)
        if self.checkpoint_path is not None:  # after the listeners: never ahead of history.json
            state = strategy.get_state() if isinstance(strategy, Stateful) else StrategyState()
            checkpoint = Checkpoint(record["round"], model, state.to_arrays(), self.rounds)
            save_checkpoint(self.checkpoint_path, checkpoint)

    def done(self, model: NDArrays) -> None:
        for listener in self.listeners:
            listener.run_done(model, self.rounds)


def train_record(
    server_round: int, strategy: object, *, metrics: dict[str, Any], aggregated: bool, **counts: int
) -> RoundRecord:
    """The training part of a round's record: the strategy's metrics (a project strategy's
    whole round result, ``weights`` and ``problem`` too), then the loop's ``counts`` (sampled,
    results, failures), which win."""
    last = strategy.last_result if isinstance(strategy, RuleAdapter) else None
    clients = {k: v for k, v in metrics.items() if not k.startswith(ROUND)}  # the rule's: last
    record: RoundRecord = {"round": server_round, **clients, **(last.metrics if last else {})}
    if last is not None and last.problem is not None:
        record["problem"] = last.problem
    record.setdefault("accepted", counts["results"] if aggregated else 0)
    record |= counts
    if isinstance(strategy, RuleAdapter) and strategy.last_sampled is not None:
        record["sampled_partitions"] = strategy.last_sampled
    record |= trained_on(last)  # part: ray-cluster
    return record


def stopped_record(server_round: int, error: NothingAggregatedError, **counts: int) -> RoundRecord:
    """The record of the round that stopped the run."""
    metrics = dict(error.metrics)
    sampled = int(metrics.get("results", 0)) + int(metrics.get("failures", 0))
    return {"round": server_round, "sampled": sampled, **metrics, **counts, "problem": str(error)}
