"""The server's round loop, recording one flat record per round for results and progress."""

from __future__ import annotations

import timeit
from collections.abc import Sequence
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.common import NDArrays, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.logger import log
from flwr.server import Server
from flwr.server.client_manager import ClientManager
from flwr.server.history import History
from flwr.server.strategy import Strategy

from fl_app.checkpoint import Checkpoint, save_checkpoint

RoundRecord = dict[str, Any]

# Threads that send a round's messages (Flower's default: min(32, CPUs + 4), 6 on 2 cores).
# Each thread waits for its client's reply, polling every 0.1 s, before it sends the next
# message, so with fewer threads than sampled clients a round runs in waves, each paying
# the polling delays again. Waiting threads cost no CPU.
MESSAGE_THREADS = 512


class RunListener:
    """Told about every finished round and, at the end, the final global model.

    ``rounds`` is the server's own list of records: every round so far (a resumed run's
    earlier rounds included), the last one just finished. Read it; there is no need to
    keep a copy.
    """

    def round_done(self, rounds: Sequence[RoundRecord]) -> None:
        """Called after each round (round 0: the initial model's evaluation)."""

    def run_done(self, parameters: NDArrays, rounds: Sequence[RoundRecord]) -> None:
        """Called once, after the last round, with the final global model."""


class ExperimentServer(Server):
    """Flower's ``Server`` whose ``fit`` also emits a :data:`RoundRecord` per round.

    A record holds ``round``, ``seconds`` (wall time of the round), ``elapsed``,
    ``central_loss`` / ``central_accuracy`` (server test set), ``federated_loss`` /
    ``federated_accuracy`` (clients' validation splits), ``sampled``, and every fit
    metric of the strategy (``results``, ``failures``, ``rejected``, ``weights``, the
    clients' mean ``train_loss`` ...). Round 0 is the initial model's evaluation.
    """

    def __init__(
        self,
        *,
        client_manager: ClientManager,
        strategy: Strategy,
        listeners: Sequence[RunListener] = (),
        checkpoint_path: Path | None = None,
        resume: Checkpoint | None = None,
    ) -> None:
        super().__init__(client_manager=client_manager, strategy=strategy)
        self.set_max_workers(MESSAGE_THREADS)
        self.listeners = list(listeners)
        self.checkpoint_path = checkpoint_path
        self.resume = resume

    def fit(self, num_rounds: int, timeout: float | None) -> tuple[History, float]:
        history = History()
        rounds: list[RoundRecord] = []
        if self.resume is None:
            start = timeit.default_timer()
            self.parameters = self._get_initial_parameters(server_round=0, timeout=timeout)
            self._emit({"round": 0, **self._evaluate_centrally(0, history)}, start, start, rounds)
            first_round = 1
        else:  # continue after the checkpoint's round as if never interrupted
            rounds = list(self.resume.rounds)
            start = timeit.default_timer() - float(rounds[-1]["elapsed"] if rounds else 0.0)
            self.parameters = ndarrays_to_parameters(self.resume.global_model)
            load_state = getattr(self.strategy, "load_state", None)
            if load_state is not None:
                load_state(self.resume.strategy_state)
            first_round = self.resume.round + 1
            log(INFO, "resuming after round %d", self.resume.round)
        for server_round in range(first_round, num_rounds + 1):
            round_start = timeit.default_timer()
            record: RoundRecord = {"round": server_round}
            fitted = self.fit_round(server_round=server_round, timeout=timeout)
            if fitted is not None:
                parameters, fit_metrics, (results, failures) = fitted
                if parameters is not None:
                    self.parameters = parameters
                history.add_metrics_distributed_fit(server_round=server_round, metrics=fit_metrics)
                record |= {"sampled": len(results) + len(failures), **fit_metrics}
            record |= self._evaluate_centrally(server_round, history)
            evaluated = self.evaluate_round(server_round=server_round, timeout=timeout)
            loss, metrics, _ = evaluated if evaluated is not None else (None, {}, None)
            if loss is not None:
                history.add_loss_distributed(server_round=server_round, loss=loss)
                history.add_metrics_distributed(server_round=server_round, metrics=metrics)
                record |= {"federated_loss": loss, "federated_accuracy": metrics.get("accuracy")}
            self._emit(record, round_start, start, rounds)
        final = parameters_to_ndarrays(self.parameters)
        for listener in self.listeners:
            listener.run_done(final, rounds)
        return history, timeit.default_timer() - start

    def _checkpoint(self, server_round: int, rounds: list[RoundRecord]) -> None:
        if self.checkpoint_path is None:
            return
        state = getattr(self.strategy, "state", None)
        checkpoint = Checkpoint(
            round=server_round,
            global_model=parameters_to_ndarrays(self.parameters),
            strategy_state=state() if state is not None else {},
            rounds=rounds,
        )
        save_checkpoint(self.checkpoint_path, checkpoint)

    def _evaluate_centrally(self, server_round: int, history: History) -> dict[str, Scalar]:
        evaluated = self.strategy.evaluate(server_round, parameters=self.parameters)
        if evaluated is None:
            return {}
        loss, metrics = evaluated
        history.add_loss_centralized(server_round=server_round, loss=loss)
        history.add_metrics_centralized(server_round=server_round, metrics=metrics)
        return {"central_loss": loss, **{f"central_{k}": v for k, v in metrics.items()}}

    def _emit(
        self, record: RoundRecord, round_start: float, start: float, rounds: list[RoundRecord]
    ) -> None:
        now = timeit.default_timer()
        record |= {"seconds": now - round_start, "elapsed": now - start}
        rounds.append(record)
        log(INFO, "%s", format_round(record))
        for listener in self.listeners:
            listener.round_done(rounds)
        # After the listeners: a checkpoint never runs ahead of history.json.
        self._checkpoint(record["round"], rounds)


def format_round(record: RoundRecord, num_rounds: int | None = None) -> str:
    """One human-readable line for a round."""
    of = f"/{num_rounds}" if num_rounds else ""
    parts = [f"round {record['round']:>3}{of}"]
    if "central_accuracy" in record:
        parts.append(f"accuracy {record['central_accuracy']:.4f}")
    if "central_loss" in record:
        parts.append(f"loss {record['central_loss']:.4f}")
    if "sampled" in record:
        parts.append(
            f"clients {record.get('accepted', 0)}/{record['sampled']}"
            f" ({record.get('failures', 0)} failed, {record.get('rejected', 0)} rejected)"
        )
    parts.append(f"{record['seconds']:.2f} s")
    return "  ".join(parts)
