"""The server's round loops, one per Flower API half, recording one flat record per round.

Both loops run the same rounds (train, central evaluation, federated evaluation) and
hand each finished round to one :class:`RoundRecorder`: records, listeners (results
files, progress) and checkpoints are the same whichever half ran the round.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable, Mapping, Sequence
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import NDArrays, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.logger import log
from flwr.compat.common.recorddict_compat import (
    arrayrecord_to_parameters,
    parameters_to_arrayrecord,
)
from flwr.server import LegacyContext, Server
from flwr.server.client_manager import ClientManager
from flwr.server.history import History
from flwr.server.server import FitResultsAndFailures
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy as MessageStrategy

from fl_app.kit.checkpoint import Checkpoint, save_checkpoint
from fl_app.kit.results import RAY_NODE, RoundRecord, RunListener, format_round
from strategies.core.adapter import RuleAdapter
from strategies.core.state import Stateful, StrategyState
from strategies.core.update import NothingAggregatedError

# Central evaluation of a global model: the record's ``central_*`` entries.
CentralEvaluation = Callable[[NDArrays], dict[str, Scalar]]

# Threads that send a legacy round's messages (Flower's default: min(32, CPUs + 4), 6 on
# 2 cores). Each thread waits for its client's reply, polling every 0.1 s, before it
# sends the next message, so with fewer threads than sampled clients a round runs in
# waves, each paying the polling delays again. Waiting threads cost no CPU.
MESSAGE_THREADS = 512


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
        log(INFO, "resuming after round %d", self.resume.round)
        return self.resume.global_model

    def emit(
        self, record: RoundRecord, round_start: float, model: NDArrays, strategy: object
    ) -> None:
        now = timeit.default_timer()
        record |= {"seconds": now - round_start, "elapsed": now - self.start}
        self.rounds.append(record)
        log(INFO, "%s", format_round(record))
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


class ExperimentServer(Server):
    """Flower's legacy ``Server`` whose ``fit`` records each round in a :class:`RoundRecorder`.

    ``central_evaluation`` scores the global model after each round, as in the
    Message-API loop (not through the strategy's ``evaluate_fn``).
    """

    def __init__(
        self,
        *,
        client_manager: ClientManager,
        strategy: LegacyStrategy,
        recorder: RoundRecorder | None = None,
        central_evaluation: CentralEvaluation | None = None,
    ) -> None:
        super().__init__(client_manager=client_manager, strategy=strategy)
        self.set_max_workers(MESSAGE_THREADS)
        self.recorder = recorder or RoundRecorder()
        self.central_evaluation = central_evaluation

    def fit(self, num_rounds: int, timeout: float | None) -> tuple[History, float]:
        history = History()
        recorder = self.recorder
        resumed = recorder.restore(self.strategy)
        if resumed is None:
            start = timeit.default_timer()
            self.parameters = self._get_initial_parameters(server_round=0, timeout=timeout)
            model = parameters_to_ndarrays(self.parameters)
            recorder.emit({"round": 0, **self._central(model)}, start, model, self.strategy)
        else:
            model = resumed
            self.parameters = ndarrays_to_parameters(model)
        for server_round in range(recorder.first_round, num_rounds + 1):
            round_start = timeit.default_timer()
            try:
                fitted = self.fit_round(server_round=server_round, timeout=timeout)
                if fitted is None:  # nobody sampled: a round that aggregated nothing all the same
                    fitted = (*self.strategy.aggregate_fit(server_round, [], []), ([], []))
            except NothingAggregatedError as error:
                recorder.emit(
                    stopped_record(server_round, error), round_start, model, self.strategy
                )
                raise
            parameters, fit_metrics, (results, failures) = fitted
            if parameters is not None:
                self.parameters = parameters
                model = parameters_to_ndarrays(parameters)
            history.add_metrics_distributed_fit(server_round=server_round, metrics=fit_metrics)
            record = train_record(
                server_round,
                self.strategy,
                sampled=len(results) + len(failures),
                results=len(results),
                failures=len(failures),
                metrics=fit_metrics,
                aggregated=parameters is not None,
            )
            record |= self._central(model)
            evaluated = self.evaluate_round(server_round=server_round, timeout=timeout)
            loss, metrics, _ = evaluated if evaluated is not None else (None, {}, None)
            if loss is not None:
                history.add_loss_distributed(server_round=server_round, loss=loss)
                history.add_metrics_distributed(server_round=server_round, metrics=metrics)
                record |= {"federated_loss": loss, "federated_accuracy": metrics.get("accuracy")}
            recorder.emit(record, round_start, model, self.strategy)
        recorder.done(model)
        return history, timeit.default_timer() - recorder.start

    def _central(self, model: NDArrays) -> dict[str, Scalar]:
        return {} if self.central_evaluation is None else self.central_evaluation(model)


class SecureRound(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow for one training round, keeping the protocol's state
    (who was sampled, what came back, what failed) for the round's record."""

    state: WorkflowState | None = None

    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        self.state = state
        return super().setup_stage(grid, context, state)


class SecureAggregationServer(ExperimentServer):
    """:class:`ExperimentServer` whose training rounds run Flower's SecAgg+ workflow.

    Flower's ``DefaultWorkflow`` would run the rounds itself, past this server's loop;
    here the loop stays (records, checkpoints, central and federated evaluation, the
    empty-round stop) and only ``fit_round`` hands the round to the protocol. The
    strategy's ``aggregate_fit`` gets the unmasked weighted mean in every result; a
    round the protocol halts before it (too few clients answered to unmask) aggregates
    nothing, with that as its problem.
    """

    def __init__(self, *, grid: Grid, workflow: SecureRound, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.grid = grid
        self.workflow = workflow

    def fit_round(
        self, server_round: int, timeout: float | None
    ) -> tuple[Parameters | None, dict[str, Scalar], FitResultsAndFailures]:
        blank = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
        context = LegacyContext(blank, strategy=self.strategy, client_manager=self.client_manager())
        context.state.array_records[MAIN_PARAMS_RECORD] = parameters_to_arrayrecord(
            self.parameters, keep_input=True
        )
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
            {Key.CURRENT_ROUND: server_round, Key.START_TIME: timeit.default_timer()}
        )
        strategy = self.strategy
        assert isinstance(strategy, RuleAdapter)
        strategy.last_result = None
        self.workflow.state = None
        try:
            self.workflow(self.grid, context)
        except NothingAggregatedError as error:  # the stop: with this round's own counts
            results, failures = self._outcome()
            error.metrics |= {"results": len(results), "failures": len(failures)}
            raise
        state = self.workflow.state
        assert state is not None  # set by the setup stage, which always runs
        if strategy.last_result is None:  # halted before aggregation: nothing was unmasked
            halted = (
                f"SecAgg+ halted: {len(state.active_node_ids)} of {len(state.nid_to_proxies)} "
                f"sampled clients left, the protocol needs {max(state.threshold, 2)} "
                "(secagg-reconstruction-threshold)"
            )
            _, failures = self._outcome(halted)
            parameters, metrics = self.strategy.aggregate_fit(server_round, [], failures)
            return parameters, metrics, ([], failures)
        results, failures = self._outcome()
        fitted = context.history.metrics_distributed_fit
        metrics = {name: values[-1][1] for name, values in fitted.items()}
        parameters = None
        if strategy.last_result.arrays is not None:
            parameters = arrayrecord_to_parameters(
                context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True
            )
        return parameters, metrics, (results, failures)

    def _outcome(self, halted: str | None = None) -> tuple[list[Any], list[Any]]:
        """The round's results, and one failure per sampled client without one (Flower
        appends a failed reply's error once per pass over the replies: once each here).
        A round the protocol ``halted`` has no results, and its cause after the first error."""
        state = self.workflow.state
        if state is None:
            return [], []
        results = [] if halted else list(state.legacy_results)
        errors = [RuntimeError(e) for e in dict.fromkeys(map(str, state.failures))]
        if halted:
            errors.insert(min(1, len(errors)), RuntimeError(halted))
        return results, one_per_client(errors, len(state.nid_to_proxies) - len(results))


def one_per_client(failures: list[Any], count: int) -> list[Any]:
    """``count`` failures: the first of ``failures``, then "no reply" for clients that
    failed without a message."""
    missing = count - len(failures)
    return failures[:count] + [TimeoutError("no reply in time")] * max(missing, 0)


def run_message_rounds(
    grid: Grid,
    strategy: MessageStrategy,
    *,
    initial_model: NDArrays,
    num_rounds: int,
    timeout: float | None,
    central_evaluation: CentralEvaluation,
    recorder: RoundRecorder,
    config: Mapping[str, Scalar] | None = None,
) -> NDArrays:
    """The Message-API rounds, as Flower's ``Strategy.start`` runs them, recorded.

    Like ``start``: ``configure_train`` → ``send_and_receive`` → ``aggregate_train``, then
    central and federated evaluation; unlike it, each round is recorded, checkpointed
    and resumable, and a reply that did not come back counts as a failure. ``config``
    goes into every train and evaluate message's ConfigRecord.
    """
    resumed = recorder.restore(strategy)
    model = initial_model if resumed is None else resumed
    arrays = ArrayRecord(model)
    tags: dict[str, Any] = dict(config or {})  # a fresh ConfigRecord each call: FedAvg writes to it
    if resumed is None:
        start = timeit.default_timer()
        recorder.emit({"round": 0, **central_evaluation(model)}, start, model, strategy)
    for server_round in range(recorder.first_round, num_rounds + 1):
        round_start = timeit.default_timer()
        sent = list(strategy.configure_train(server_round, arrays, ConfigRecord(tags), grid))
        replies = _exchange(grid, sent, timeout)
        ok = sum(1 for reply in replies if not reply.has_error())
        counts = {"sampled": len(sent), "results": ok, "failures": len(sent) - ok}
        try:
            new_arrays, metrics = strategy.aggregate_train(server_round, replies)
        except NothingAggregatedError as error:
            recorder.emit(
                stopped_record(server_round, error, **counts), round_start, model, strategy
            )
            raise
        if new_arrays is not None:
            arrays = new_arrays
            model = arrays.to_numpy_ndarrays()
        record = train_record(
            server_round,
            strategy,
            **counts,
            metrics=dict(metrics or {}),
            aggregated=new_arrays is not None,
        )
        record |= central_evaluation(model)
        asked = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(tags), grid))
        federated = strategy.aggregate_evaluate(server_round, _exchange(grid, asked, timeout))
        if federated is not None and "loss" in federated:
            record |= {
                "federated_loss": federated["loss"],
                "federated_accuracy": federated.get("accuracy"),
            }
        recorder.emit(record, round_start, model, strategy)
    recorder.done(model)
    return model


def _exchange(grid: Grid, messages: list[Message], timeout: float | None) -> list[Message]:
    if not messages:
        return []
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    if len(replies) < len(messages):
        log(
            WARNING,
            "%d of %d nodes did not reply in time",
            len(messages) - len(replies),
            len(messages),
        )
    return replies
