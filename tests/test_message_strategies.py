"""The Message-API strategies: the same model as the legacy twins, per-reply rejection.

Replies are built the way Flower's current quickstart ClientApp builds them: one
``ArrayRecord`` and one ``MetricRecord`` holding ``num-examples``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common import EvaluateRes, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import FedAvg as FlowerMessageFedAvg
from hypothesis import given, settings
from hypothesis import strategies as st

import strategies
from strategies.core.update import NothingAggregatedError
from strategies.legacy import LegacyStrategy
from strategies.message import MessageStrategy
from tests.fakes import OK, Proxy, fit_res

SHAPES = [(3, 2), (2,)]

pytestmark = pytest.mark.usefixtures("task_identity")


class Nodes:
    """A grid with nodes 1..n connected, enough for ``configure_train`` to sample them."""

    def __init__(self, count: int) -> None:
        self.count = count

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.count + 1))


def sent_to(node: int) -> Message:
    return Message(RecordDict(), dst_node_id=node, message_type="train")


def reply(node: int, arrays: Sequence[np.ndarray], num_examples: Any, **metrics: Any) -> Message:
    """A quickstart-style reply from ``node``."""
    reported = {**metrics} if num_examples is None else {**metrics, "num-examples": num_examples}
    content = RecordDict({"arrays": ArrayRecord(list(arrays)), "metrics": MetricRecord(reported)})
    return Message(content, reply_to=sent_to(node))


def start(strategy: MessageStrategy, global_model: Sequence[np.ndarray], nodes: int) -> None:
    """``configure_train`` as ``start`` calls it: the strategy learns the global model."""
    strategy.configure_train(1, ArrayRecord(list(global_model)), ConfigRecord(), Nodes(nodes))  # type: ignore[arg-type]


def legacy_with(global_model: Sequence[np.ndarray], name: str, **knobs: Any) -> LegacyStrategy:
    strategy = strategies.build(
        name, initial_parameters=ndarrays_to_parameters(list(global_model)), **knobs
    )
    assert isinstance(strategy, LegacyStrategy)
    strategy.initialize_parameters(client_manager=None)  # type: ignore[arg-type]
    return strategy


def message_with(
    global_model: Sequence[np.ndarray], name: str, nodes: int, **knobs: Any
) -> MessageStrategy:
    strategy = strategies.build(
        name, api="message", min_available_nodes=1, min_train_nodes=1, **knobs
    )
    assert isinstance(strategy, MessageStrategy)
    start(strategy, global_model, nodes)
    return strategy


KNOBS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "simple": st.fixed_dictionaries({}),
    "fedavg": st.fixed_dictionaries(
        {"server_momentum": st.sampled_from([0.0, 0.9]), "server_learning_rate": st.just(0.7)}
    ),
    "quality": st.fixed_dictionaries(
        {
            "quality_weighting": st.sampled_from(["softmax", "linear"]),
            "quality_temperature": st.floats(0.05, 2.0),
        }
    ),
    "hybrid": st.fixed_dictionaries(
        {
            "hybrid_lambda": st.floats(0.0, 1.0),
            "robust_filter": st.sampled_from(["none", "mad", "clip", "direction"]),
            "server_momentum": st.sampled_from([0.0, 0.5]),
        }
    ),
}


@st.composite
def rounds_of_replies(draw: st.DrawFn) -> tuple[str, dict[str, Any], list[list[Any]]]:
    name = draw(st.sampled_from(sorted(strategies.REGISTRY)))
    knobs = draw(KNOBS[name])
    clients = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    rounds = []
    for _ in range(2):
        rounds.append(
            [
                (
                    [rng.normal(size=s).astype(np.float32) for s in SHAPES],
                    int(rng.integers(1, 500)),
                    float(rng.uniform(0.1, 1.0)),
                )
                for _ in range(clients)
            ]
        )
    return name, knobs, rounds


@settings(max_examples=40, deadline=None)
@given(rounds_of_replies())
def test_both_halves_give_the_same_model_bit_for_bit(
    case: tuple[str, dict[str, Any], list[list[Any]]],
) -> None:
    name, knobs, rounds = case
    global_model = [np.zeros(s, dtype=np.float32) for s in SHAPES]
    clients = len(rounds[0])
    legacy = legacy_with(global_model, name, **knobs)
    message = message_with(global_model, name, clients, **knobs)
    for server_round, replies in enumerate(rounds, start=1):
        results = [
            (Proxy(str(node)), fit_res(arrays, n, val_accuracy=q))
            for node, (arrays, n, q) in enumerate(replies, start=1)
        ]
        legacy.configure_fit(server_round, ndarrays_to_parameters(global_model), _NoClients())
        start(message, global_model, clients)
        parameters, legacy_metrics = legacy.aggregate_fit(server_round, results, [])
        arrays, message_metrics = message.aggregate_train(
            server_round,
            [
                reply(node, arrays, n, val_accuracy=q)
                for node, (arrays, n, q) in enumerate(replies, start=1)
            ],
        )
        assert parameters is not None
        assert arrays is not None
        want = parameters_to_ndarrays(parameters)
        got = arrays.to_numpy_ndarrays()
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype
            assert g.tobytes() == w.tobytes()
        # The same round metrics; a MetricRecord cannot hold the weights' JSON string,
        # which stays in last_result.
        assert message_metrics is not None
        assert dict(message_metrics) == {k: v for k, v in legacy_metrics.items() if k != "weights"}
        assert message.last_result is not None
        assert message.last_result.metrics["weights"] == legacy_metrics["weights"]
        global_model = want


class _NoClients:
    def num_available(self) -> int:
        return 0

    def sample(self, num_clients: int, min_num_clients: int | None = None, criterion=None):  # type: ignore[no-untyped-def]
        return []


GLOBAL = [np.zeros(s, dtype=np.float32) for s in SHAPES]
ONES = [np.ones(s, dtype=np.float32) for s in SHAPES]
THREES = [np.full(s, 3.0, dtype=np.float32) for s in SHAPES]

BAD_REPLIES = {
    "NaN in an array": lambda: reply(3, [np.full(s, np.nan, dtype=np.float32) for s in SHAPES], 5),
    "no num-examples": lambda: reply(3, ONES, None),
    "a missing layer": lambda: reply(3, ONES[:1], 5),
    "float64 layers": lambda: reply(3, [a.astype(np.float64) for a in ONES], 5),
    "no ArrayRecord": lambda: Message(
        RecordDict({"metrics": MetricRecord({"num-examples": 5})}), reply_to=sent_to(3)
    ),
}


@pytest.mark.parametrize("name", sorted(strategies.REGISTRY))
@pytest.mark.parametrize("bad", list(BAD_REPLIES))
def test_one_bad_reply_is_rejected_and_the_others_aggregated(name: str, bad: str) -> None:
    strategy = message_with(GLOBAL, name, nodes=3)
    replies = [
        reply(1, ONES, 10, val_accuracy=0.9),
        reply(2, THREES, 10, val_accuracy=0.9),
        BAD_REPLIES[bad](),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert metrics is not None
    assert (metrics["results"], metrics["rejected"], metrics["accepted"]) == (3, 1, 2)
    # Equal sizes and equal quality: every rule averages the two good replies to 2.
    for layer in arrays.to_numpy_ndarrays():
        np.testing.assert_allclose(layer, 2.0, rtol=1e-6)


def test_flowers_own_fedavg_fails_the_whole_round_on_one_inconsistent_reply() -> None:
    replies = [reply(1, ONES, 10), reply(2, THREES, 10), BAD_REPLIES["no num-examples"]()]
    with pytest.raises(InconsistentMessageReplies):
        FlowerMessageFedAvg().aggregate_train(1, replies)
    arrays, _ = message_with(GLOBAL, "fedavg", nodes=3).aggregate_train(1, replies)
    assert arrays is not None


def test_error_replies_and_missing_replies_are_failures() -> None:
    strategy = message_with(GLOBAL, "fedavg", nodes=4)
    replies = [
        reply(1, ONES, 10),
        reply(2, THREES, 10),
        Message(Error(code=0, reason="ClientApp raised"), reply_to=sent_to(3)),
    ]  # node 4 never answered
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert metrics is not None
    assert (metrics["results"], metrics["failures"], metrics["accepted"]) == (2, 2, 2)


def named(arrays: Sequence[np.ndarray], names: Sequence[str]) -> ArrayRecord:
    return ArrayRecord({name: Array(a) for name, a in zip(names, arrays, strict=True)})


def named_reply(node: int, record: ArrayRecord) -> Message:
    metrics = MetricRecord({"num-examples": 10, "val_accuracy": 0.5})
    return Message(RecordDict({"arrays": record, "metrics": metrics}), reply_to=sent_to(node))


def test_layers_are_matched_by_name_and_the_result_keeps_the_names() -> None:
    # Flower's quickstart sends and replies ArrayRecord(model.state_dict()): named layers.
    strategy = strategies.build("hybrid", api="message", min_available_nodes=1)
    names = ["fc.weight", "fc.bias"]
    strategy.configure_train(1, named(GLOBAL, names), ConfigRecord(), Nodes(3))  # type: ignore[arg-type]
    replies = [
        named_reply(1, named(ONES, names)),
        named_reply(2, named(THREES[::-1], names[::-1])),  # the same layers, other order
        named_reply(3, named(ONES, ["0", "1"])),  # other names: not this model's layers
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert metrics is not None
    assert list(arrays.keys()) == names
    assert (metrics["accepted"], metrics["rejected"]) == (2, 1)
    for layer in arrays.to_numpy_ndarrays():
        np.testing.assert_allclose(layer, 2.0, rtol=1e-6)


def evaluated_on_the_legacy_half(
    answers: list[tuple[int, float, float]],
) -> tuple[float | None, dict[str, Any], list[Message]]:
    """The legacy twin's aggregate of (num_examples, loss, accuracy) evaluate answers, and
    the same answers as Message-API replies."""
    legacy_results = [
        (Proxy(str(i)), EvaluateRes(OK, loss, n, {"accuracy": acc}))
        for i, (n, loss, acc) in enumerate(answers)
    ]
    loss, metrics = legacy_with(GLOBAL, "fedavg").aggregate_evaluate(1, legacy_results, [])
    replies = [
        Message(
            RecordDict({"metrics": MetricRecord({"loss": x, "accuracy": a, "num-examples": n})}),
            reply_to=sent_to(i + 1),
        )
        for i, (n, x, a) in enumerate(answers)
    ]
    return loss, metrics, replies


def test_federated_evaluation_is_the_same_on_both_halves_and_skips_odd_replies() -> None:
    rng = np.random.default_rng(3)
    answers = [(int(n), float(x), float(a)) for n, x, a in zip(
        rng.integers(1, 50, 6), rng.uniform(0.1, 2, 6), rng.uniform(0, 1, 6), strict=True
    )]  # fmt: skip
    loss, metrics, replies = evaluated_on_the_legacy_half(answers)
    odd = Message(RecordDict({"metrics": MetricRecord({"loss": 0.0})}), reply_to=sent_to(9))
    message = message_with(GLOBAL, "fedavg", nodes=2)
    record = message.aggregate_evaluate(1, [*reversed(replies), odd])
    assert record is not None
    assert record["loss"] == loss  # bit for bit, whatever the arrival order
    assert record["accuracy"] == metrics["accuracy"]
    total = sum(n for n, _, _ in answers)
    assert loss == pytest.approx(sum(n * x for n, x, _ in answers) / total)
    with pytest.raises(InconsistentMessageReplies):  # what Flower's own FedAvg does
        FlowerMessageFedAvg().aggregate_evaluate(1, [*replies, odd])


def test_the_message_half_stops_after_max_empty_rounds() -> None:
    strategy = message_with(GLOBAL, "quality", nodes=2, max_empty_rounds=2)
    no_quality = [reply(1, ONES, 10, train_loss=0.3), reply(2, THREES, 10, train_loss=0.2)]
    arrays, metrics = strategy.aggregate_train(1, no_quality)
    assert arrays is None
    assert metrics is not None
    assert metrics["rejected"] == 2
    assert strategy.last_result is not None
    assert "[train_loss]" in str(strategy.last_result.problem)
    with pytest.raises(NothingAggregatedError, match="max-empty-rounds=2"):
        strategy.aggregate_train(2, no_quality)


def test_client_metrics_are_the_example_weighted_mean_of_the_accepted() -> None:
    strategy = message_with(GLOBAL, "fedavg", nodes=2)
    _, metrics = strategy.aggregate_train(
        1, [reply(1, ONES, 10, train_loss=1.0), reply(2, THREES, 30, train_loss=2.0)]
    )
    assert metrics is not None
    assert metrics["train_loss"] == pytest.approx((10 * 1.0 + 30 * 2.0) / 40)
    assert "num-examples" not in metrics
    assert json.loads(str(strategy.last_result.metrics["weights"])) == {"1": 0.25, "2": 0.75}  # type: ignore[union-attr]


@pytest.mark.parametrize("name", sorted(strategies.REGISTRY))
def test_build_gives_each_registered_rule_on_the_message_half(name: str) -> None:
    strategy = strategies.build(name, api="message", fraction_train=0.5, server_momentum=0.5)
    assert isinstance(strategy, MessageStrategy)
    assert isinstance(strategy.rule, strategies.REGISTRY[name])
    assert strategy.fraction_train == 0.5
    assert strategy.rule.options.server_momentum == 0.5


def test_message_classes_take_flowers_message_api_names_keyword_only() -> None:
    strategy = strategies.message.Hybrid(
        fraction_train=0.3, min_train_nodes=4, hybrid_lambda=0.2, robust_filter="mad"
    )
    assert (strategy.fraction_train, strategy.min_train_nodes) == (0.3, 4)
    assert strategy.rule.options.hybrid_lambda == 0.2
    with pytest.raises(TypeError):
        strategies.message.FedAvg(0.5)  # type: ignore[misc]
    with pytest.raises(TypeError, match="FedAvgRule has no option 'fraction_fit'"):
        strategies.message.FedAvg(fraction_fit=0.5)


def test_a_non_finite_client_loss_shows_in_the_federated_loss_on_both_halves() -> None:
    answers = [(10, 0.5, 0.9), (20, math.inf, 0.1), (30, 0.25, 0.8)]
    loss, metrics, replies = evaluated_on_the_legacy_half(answers)
    record = message_with(GLOBAL, "fedavg", nodes=2).aggregate_evaluate(1, replies)
    assert record is not None
    assert loss == record["loss"] == math.inf  # as Flower's weighted_loss_avg reports it
    assert metrics["accuracy"] == record["accuracy"] == pytest.approx((9 + 2 + 24) / 60)
