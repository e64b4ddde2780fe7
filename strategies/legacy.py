"""The rules as Flower legacy strategies (``flwr.server.strategy``, NumPyClient on the wire).

Each class is a thin adapter over a :class:`~strategies.core.rule.Rule`: Flower's ``FedAvg``
gives client sampling, fit/evaluate configuration, centralized evaluation and
evaluate-metric aggregation; ``aggregate_fit`` hands the tensors of each ``FitRes`` to
the rule. The Message-API twins in :mod:`strategies.message` give the same model bit for
bit on the same replies.

    strategy = Hybrid(hybrid_lambda=0.3, quality_metric="val_loss", fraction_fit=0.5)
    strategy = Hybrid(options=HybridOptions(hybrid_lambda=0.3), fraction_fit=0.5)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from logging import WARNING
from typing import Any

from flwr.common import (
    Code,
    EvaluateRes,
    FitIns,
    FitRes,
    GetPropertiesIns,
    Metrics,
    Parameters,
    Scalar,
    parameters_to_ndarrays,
)
from flwr.common.logger import log
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as FlowerFedAvg

from strategies.core.adapter import RuleAdapter
from strategies.core.codec import decode_tensors, encode_tensors
from strategies.core.metrics import (
    canonical_order,
    evaluation_metrics,
    train_metrics,
    weighted_metrics,
)
from strategies.core.update import ClientUpdate, RoundResult
from strategies.fedavg import FedAvgRule
from strategies.hybrid import HybridRule
from strategies.pools import PooledProxies  # part: fast-engine
from strategies.quality_weighted import QualityWeightedRule
from strategies.sampling import PARTITION_KEY
from strategies.secure import secure_aggregation_problem
from strategies.server_optimizer import flower_optimizers  # part: server-optimizer
from strategies.simple_average import SimpleAverageRule

MetricsFn = Callable[[list[tuple[int, Metrics]]], Metrics]
EvaluateResults = list[tuple[ClientProxy, EvaluateRes]]
EvaluateFailures = list[tuple[ClientProxy, EvaluateRes] | BaseException]
# Clients asked for their partition id at once (each thread mostly waits for a reply).
MAX_QUERIES = 64


# Where Flower's error for a ClientApp that raised quotes the client's own message.
CLIENT_MESSAGE = re.compile(r"ClientAppException occurred\. Message: (.+?)(?:\\n|\n|'>|$)")


def describe_failure(failure: tuple[ClientProxy, FitRes] | BaseException) -> str:
    """One line for a failed client: what it raised (the client's own message when
    Flower wrapped it in a traceback), or the status it answered with."""
    if isinstance(failure, BaseException):
        quoted = CLIENT_MESSAGE.findall(str(failure))
        return f"client error: {quoted[-1]}" if quoted else f"{type(failure).__name__}: {failure}"
    proxy, res = failure
    return f"client {proxy.cid}: {res.status.code.name} {res.status.message}"


class LegacyStrategy(
    PooledProxies,  # part: fast-engine
    RuleAdapter,
    FlowerFedAvg,
):
    """Flower legacy strategy over a :class:`~strategies.core.rule.Rule`.

    Parameters
    ----------
    rule : Rule, optional
        The rule to run; the named subclasses build theirs from ``options`` or knobs.
    options : the rule's options dataclass, optional
    score_fn : callable, optional
        ``score_fn(arrays) -> metrics`` scores a client model on server-held data
        (``quality_source="server"``).
    sampling_seed : int, optional
        Sample clients reproducibly (:mod:`strategies.sampling`): each client is asked
        once for its ``partition-id`` property; None keeps Flower's unseeded sampling.
    query_timeout : float, optional
        How long to wait for that answer (None: as long as it takes).
    secure_aggregation : bool
        The rounds run Flower's ``SecAggPlusWorkflow``: every result carries the same
        float64 weighted mean of the clients' models (the clients weighted themselves by
        :func:`strategies.secure.secure_weight` and sent that weight as their example
        count); it is cast to the global model's dtypes once and stands for each client's
        update (its metrics are its own). A rejected update rejects the round: its share
        is inside the mean. Only rules with a client-side weight and no central DP allow it.
    **kwargs
        The rule's knobs (fields of its options, e.g. ``max_empty_rounds=5``), and
        Flower's ``FedAvg`` arguments: ``fraction_fit``, ``fraction_evaluate``,
        ``min_fit_clients``, ``min_evaluate_clients``, ``min_available_clients``,
        ``evaluate_fn``, ``on_fit_config_fn``, ``on_evaluate_config_fn``,
        ``accept_failures``, ``initial_parameters``, ``fit_metrics_aggregation_fn``,
        ``evaluate_metrics_aggregation_fn`` (both default to the example-weighted mean).
    """

    def __init__(self, *, secure_aggregation: bool = False, **kwargs: Any) -> None:
        for metrics in ("fit_metrics_aggregation_fn", "evaluate_metrics_aggregation_fn"):
            kwargs.setdefault(metrics, weighted_metrics)
        super().__init__(**kwargs)
        if self.initial_parameters is not None:  # aggregate_fit may come first, as in Flower's
            self.rule.global_model = parameters_to_ndarrays(self.initial_parameters)
        if secure_aggregation:
            problem = secure_aggregation_problem(self.rule)
            if problem is not None:
                raise ValueError(f"secure_aggregation=True: {problem}")
        self.secure_aggregation = secure_aggregation

    # ---- Flower Strategy API --------------------------------------------------------

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        parameters = super().initialize_parameters(client_manager)
        if parameters is not None:
            self.rule.global_model = parameters_to_ndarrays(parameters)
        return parameters

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, Any]]:
        # The server hands over the current global model here every round: keep it
        # to validate updates against and to take the server step from.
        self.rule.global_model = parameters_to_ndarrays(parameters)
        pairs = super().configure_fit(server_round, parameters, client_manager)
        return self._reseeded(server_round, "train", pairs, client_manager)

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, Any]]:
        pairs = super().configure_evaluate(server_round, parameters, client_manager)
        return self._reseeded(server_round, "evaluate", pairs, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if not self.accept_failures and failures:
            counts: dict[str, Scalar] = {"results": len(results), "failures": len(failures)}
            problem = (
                f"round {server_round}: nothing aggregated, keeping the previous model: "
                f"{len(failures)} clients failed and accept_failures=False "
                f"(first: {describe_failure(failures[0])})"
            )
            log(WARNING, "%s", problem)
            self.last_result = RoundResult(
                None, counts | {"rejected": 0, "accepted": 0}, [], problem
            )
            return None, train_metrics({}, self.last_result.metrics)
        updates = [rule_update(self.client_name(proxy.cid), res) for proxy, res in results]
        if self.secure_aggregation and updates:
            updates = self._unmasked_mean(updates)
        result = self.rule.aggregate(
            server_round,
            updates,
            [describe_failure(f) for f in failures],
            indivisible=self.secure_aggregation,
        )
        self.last_result = result
        from_clients: dict[str, Scalar] = {}
        if self.fit_metrics_aggregation_fn is not None and result.accepted:
            replies = [(u.num_examples, u.metrics) for u in result.accepted]
            from_clients = self.fit_metrics_aggregation_fn(replies)  # type: ignore[arg-type]
        metrics = train_metrics(from_clients, result.metrics)
        if result.arrays is None:
            return None, metrics
        tensors = encode_tensors(result.arrays)
        self.rule.global_model = decode_tensors(tensors)  # the next round's, as Flower's FedOpt
        return Parameters(tensors, "numpy.ndarray"), metrics

    def _unmasked_mean(self, updates: list[ClientUpdate]) -> list[ClientUpdate]:
        """SecAgg+'s float64 mean (the same in every result), cast once to the global
        model's dtypes, as every client's update."""
        mean = decode_tensors(updates[0].tensors)
        template = self.rule.require_global()
        if len(mean) == len(template):
            mean = [m.astype(g.dtype, copy=False) for m, g in zip(mean, template, strict=True)]
        tensors = encode_tensors(mean)  # a wrong layout is rejected by the rule, not here
        return [replace(u, tensors=tensors) for u in updates]

    def aggregate_evaluate(
        self, server_round: int, results: EvaluateResults, failures: EvaluateFailures
    ) -> tuple[float | None, dict[str, Scalar]]:
        """The example-weighted loss and metrics, summed in a canonical order (the same
        floats as the Message-API twin on the same replies)."""
        if not results or (not self.accept_failures and failures):
            return None, {}
        replies = [(res.num_examples, {**res.metrics, "loss": res.loss}) for _, res in results]
        metrics = evaluation_metrics(replies)
        loss = float(metrics.pop("loss"))
        aggregation = self.evaluate_metrics_aggregation_fn
        if aggregation is None:
            metrics = {}
        elif aggregation is not weighted_metrics:  # someone's own: give it the replies
            ordered = canonical_order([(res.num_examples, res.metrics) for _, res in results])
            metrics = aggregation(ordered)  # type: ignore[arg-type]
        return loss, metrics

    def _reseeded(
        self,
        server_round: int,
        purpose: str,
        pairs: list[tuple[ClientProxy, Any]],
        client_manager: ClientManager,
    ) -> list[tuple[ClientProxy, Any]]:
        """Flower's sample, its clients swapped for the seeded sampler's (same number): a
        client Flower sampled keeps its instruction, another gets the same as the first."""
        proxies = client_manager.all()

        def ask(cids: list[str]) -> dict[str, object]:
            return ask_partition_ids([proxies[cid] for cid in cids], self.query_timeout)

        chosen = self.reseed(server_round, purpose, [p.cid for p, _ in pairs], list(proxies), ask)
        given = {proxy.cid: (proxy, ins) for proxy, ins in pairs}
        return [given[cid] if cid in given else (proxies[cid], pairs[0][1]) for cid in chosen]


def ask_partition_ids(proxies: list[ClientProxy], timeout: float | None) -> dict[str, object]:
    """The ``partition-id`` property each client reports (None: it has none), asked in
    parallel; a client that raises or does not answer in time is left out."""
    ins = GetPropertiesIns(config={})
    reports: dict[str, object] = {}
    with ThreadPoolExecutor(max_workers=min(len(proxies), MAX_QUERIES)) as pool:
        futures = {p.cid: pool.submit(p.get_properties, ins, timeout, None) for p in proxies}
        for cid, future in futures.items():
            try:
                res = future.result()
            except Exception as err:
                log(WARNING, "client %s did not report its partition id: %s", cid, err)
                continue
            ok = res.status.code == Code.OK
            reports[cid] = res.properties.get(PARTITION_KEY) if ok else None
    return reports


def rule_update(client_id: str, res: FitRes) -> ClientUpdate:
    """A ``FitRes`` as the core's :class:`~strategies.core.update.ClientUpdate`."""
    return ClientUpdate(client_id, res.parameters.tensors, res.num_examples, res.metrics)


# The four rules as legacy strategies, e.g. ``Hybrid(hybrid_lambda=0.3, ...)``.
SimpleAverage = LegacyStrategy.of(SimpleAverageRule, "SimpleAverage")
FedAvg = LegacyStrategy.of(FedAvgRule, "FedAvg")
QualityWeighted = LegacyStrategy.of(QualityWeightedRule, "QualityWeighted")
Hybrid = LegacyStrategy.of(HybridRule, "Hybrid")


class FedProx(LegacyStrategy):
    """Flower's legacy FedProx: FedAvg whose fit config carries ``proximal_mu`` μ, for the
    clients' local loss plus (μ/2)‖w − w_global‖² (Li et al. 2020; this app's client reads it)."""

    rule_type = FedAvgRule

    def __init__(self, *, proximal_mu: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.proximal_mu = proximal_mu

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, Any]]:
        pairs = super().configure_fit(server_round, parameters, client_manager)
        mu = {"proximal_mu": self.proximal_mu}
        return [(proxy, FitIns(ins.parameters, ins.config | mu)) for proxy, ins in pairs]


# Flower's legacy FedAdagrad and FedAdam default to τ = 1e-9.  # part: server-optimizer
LEGACY = {"FedAdagrad": {"tau": 1e-9}, "FedAdam": {"tau": 1e-9}}  # part: server-optimizer
NAMED = flower_optimizers(FedAvg, **LEGACY)  # part: server-optimizer
FedAvgM, FedAdagrad, FedAdam, FedYogi = NAMED  # part: server-optimizer
