"""The legacy half's round loops: Flower's ``Server`` recording each round, and SecAgg+.

A run with ``flower-api = "legacy"`` runs these instead of the Message API's loop: the
same rounds (train, central evaluation, federated evaluation) handed to the same
:class:`~fl_app.kit.rounds.RoundRecorder`, so records, listeners and checkpoints are the
same whichever half ran them.
"""

from __future__ import annotations

import functools
import timeit
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from flwr.app import ConfigRecord, Context, RecordDict
from flwr.common import (
    GetParametersIns,
    NDArrays,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.compat.common.recorddict_compat import (
    arrayrecord_to_parameters,
    parameters_to_arrayrecord,
)
from flwr.server import LegacyContext, Server, ServerConfig, SimpleClientManager
from flwr.server.client_manager import ClientManager
from flwr.server.compat import start_grid
from flwr.server.history import History
from flwr.server.server import FitResultsAndFailures
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

import strategies
from fl_app.kit.rounds import RoundRecorder, stopped_record, train_record
from fl_app.kit.training import ServerModel
from strategies.core.adapter import RuleAdapter
from strategies.core.update import NothingAggregatedError
from strategies.legacy import LegacyStrategy

# Threads that send a legacy round's messages (Flower's default: min(32, CPUs + 4), 6 on
# 2 cores). Each thread waits for its client's reply before it sends the next message,
# so with fewer threads than sampled clients a round runs in waves, each paying the
# polling delays again. Waiting threads cost no CPU.
MESSAGE_THREADS = 512
# The rounds of a run (the core's ``message_rounds``, or :func:`run_legacy_rounds`).
Rounds = TypeVar("Rounds")
CentralEvaluation = Callable[[NDArrays], dict[str, Any]]  # a model's ``central_*`` entries


def legacy_rounds(cfg: Any, rounds: Rounds) -> Rounds:
    """The legacy half's loop for a run on it (``flower-api = "legacy"``), else ``rounds``."""
    return cast(Rounds, run_legacy_rounds) if cfg.flower_api == "legacy" else rounds


def legacy_pollers(cfg: Any, pollers: int, num_partitions: int | None, grid: Grid) -> int:
    """Who waits for a round's replies: on the legacy half one thread per sampled client."""
    if cfg.flower_api != "legacy":
        return pollers
    return int(cfg.fit_clients(num_partitions or len(list(grid.get_node_ids()))))


def round_config(tags: Mapping[str, Scalar], server_round: int) -> dict[str, Scalar]:
    return {**tags, "server-round": server_round}


def build_legacy_strategy(
    cfg: Any, server: ServerModel, *, tags: Mapping[str, Scalar]
) -> LegacyStrategy:
    """The strategy named by ``cfg.strategy`` on the legacy half, with the run's sampling."""
    rule_type = strategies.rule_type(cfg.strategy)
    config_fn = functools.partial(round_config, dict(tags))
    return LegacyStrategy(
        rule=rule_type(rule_type.Options.from_config(cfg), score_fn=server.score),
        secure_aggregation=cfg.secure_aggregation,
        fraction_fit=cfg.fraction_fit,
        fraction_evaluate=cfg.fraction_evaluate,
        min_fit_clients=cfg.min_fit_clients,
        min_evaluate_clients=cfg.min_evaluate_clients,
        min_available_clients=cfg.min_available_clients,
        sampling_seed=cfg.seed if cfg.client_sampling == "seeded" else None,
        query_timeout=cfg.round_timeout or None,
        initial_parameters=ndarrays_to_parameters(server.initial),
        on_fit_config_fn=config_fn,
        on_evaluate_config_fn=config_fn,
    )


def run_legacy_rounds(grid: Grid, run: Any, server: ServerModel, recorder: RoundRecorder) -> None:
    """The run's rounds on Flower's legacy ``Server`` (through SecAgg+ when asked)."""
    cfg = run.cfg
    strategy = build_legacy_strategy(cfg, server, tags=run.tags)
    strategy.num_partitions = run.num_partitions  # part: fast-engine
    loop: dict[str, Any] = {
        "client_manager": SimpleClientManager(),
        "strategy": strategy,
        "recorder": recorder,
        "central_evaluation": server.central,
    }
    timeout = cfg.round_timeout or None
    start_grid(
        grid=grid,
        server=SecureAggregationServer(grid=grid, workflow=secure_round(cfg), **loop)
        if cfg.secure_aggregation
        else ExperimentServer(**loop),
        config=ServerConfig(num_rounds=cfg.num_server_rounds, round_timeout=timeout),
    )


def secure_round(cfg: Any) -> SecureRound:
    """Flower's SecAgg+ workflow with the run's protocol knobs."""
    return SecureRound(
        num_shares=cfg.secagg_num_shares,
        reconstruction_threshold=cfg.secagg_reconstruction_threshold,
        max_weight=cfg.secagg_max_weight,
        clipping_range=cfg.secagg_clipping_range,
        timeout=cfg.round_timeout or None,
    )


class ExperimentServer(Server):
    """Flower's legacy ``Server`` whose ``fit`` records each round in a :class:`RoundRecorder`.

    ``central_evaluation`` scores the global model after each round, as in the
    Message-API loop (not through the strategy's ``evaluate_fn``).
    """

    def __init__(
        self,
        *,
        client_manager: ClientManager,
        strategy: Strategy,
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
            self.parameters = self.initial_parameters(timeout)
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

    def initial_parameters(self, timeout: float | None) -> Parameters:
        """The strategy's initial model, or one client's (what Flower's ``Server`` does)."""
        parameters = self.strategy.initialize_parameters(client_manager=self.client_manager())
        if parameters is not None:
            return parameters
        ins = GetParametersIns(config={})
        client = self.client_manager().sample(1)[0]
        return client.get_parameters(ins=ins, timeout=timeout, group_id=0).parameters

    def _central(self, model: NDArrays) -> dict[str, Scalar]:
        return {} if self.central_evaluation is None else self.central_evaluation(model)


class SecureRound(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow for one training round, keeping the protocol's state
    (who was sampled, what came back, what failed) for the round's record."""

    state: Any = None  # Flower's WorkflowState of the round

    def setup_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
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
