"""The Message-API strategies: per-reply rejection, failures, named layers, metrics.

Replies are built the way Flower's current quickstart ClientApp builds them: one
``ArrayRecord`` and one ``MetricRecord`` holding ``num-examples``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import FedAvg as FlowerMessageFedAvg

import strategies
from strategies.core.metrics import ROUND
from strategies.core.update import NothingAggregatedError
from strategies.message import MessageStrategy
from tests.fakes import Nodes, message_with, reply, sent_to, start

SHAPES = [(3, 2), (2,)]

pytestmark = pytest.mark.usefixtures("task_identity")


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
    assert (
        metrics[ROUND + "results"],
        metrics[ROUND + "rejected"],
        metrics[ROUND + "accepted"],
    ) == (3, 1, 2)
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
    assert (
        metrics[ROUND + "results"],
        metrics[ROUND + "failures"],
        metrics[ROUND + "accepted"],
    ) == (2, 2, 2)


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
    assert (metrics[ROUND + "accepted"], metrics[ROUND + "rejected"]) == (2, 1)
    for layer in arrays.to_numpy_ndarrays():
        np.testing.assert_allclose(layer, 2.0, rtol=1e-6)


def test_the_message_half_stops_after_max_empty_rounds() -> None:
    strategy = message_with(GLOBAL, "quality", nodes=2, max_empty_rounds=2)
    no_quality = [reply(1, ONES, 10, train_loss=0.3), reply(2, THREES, 10, train_loss=0.2)]
    arrays, metrics = strategy.aggregate_train(1, no_quality)
    assert arrays is None
    assert metrics is not None
    assert metrics[ROUND + "rejected"] == 2
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
    strategy = strategies.build(name, api="message", fraction_train=0.5, max_empty_rounds=5)
    assert isinstance(strategy, MessageStrategy)
    assert isinstance(strategy.rule, strategies.REGISTRY[name])
    assert strategy.fraction_train == 0.5
    assert strategy.rule.options.max_empty_rounds == 5


def test_message_classes_take_flowers_message_api_arguments() -> None:
    strategy = strategies.message.Hybrid(
        fraction_train=0.3,
        min_train_nodes=4,
        hybrid_lambda=0.2,
        robust_filter="mad",  # part: robust
    )
    assert (strategy.fraction_train, strategy.min_train_nodes) == (0.3, 4)
    assert strategy.rule.options.hybrid_lambda == 0.2
    # Flower's FedAvg takes its arguments by position too, in its order.
    positional = strategies.message.FedAvg(0.5, 0.25, 3)
    flowers = FlowerMessageFedAvg(0.5, 0.25, 3)
    for name in ("fraction_train", "fraction_evaluate", "min_train_nodes"):
        assert getattr(positional, name) == getattr(flowers, name)
    with pytest.raises(TypeError, match="unexpected keyword argument 'fraction_fit'"):
        strategies.message.FedAvg(fraction_fit=0.5)


def test_metric_functions_set_after_construction_are_used() -> None:
    """Flower's FedAvg reads its metric functions at call time; so does ours."""
    strategy = message_with(GLOBAL, "fedavg", nodes=2)
    strategy.train_metrics_aggr_fn = lambda contents, key: MetricRecord({"mine": len(contents)})
    strategy.evaluate_metrics_aggr_fn = lambda contents, key: MetricRecord({"theirs": 1.0})
    _, metrics = strategy.aggregate_train(1, [reply(1, GLOBAL, 3), reply(2, GLOBAL, 5)])
    assert metrics is not None
    assert metrics["mine"] == 2
    evaluated = strategy.aggregate_evaluate(1, evaluation_replies([(3, 0.5, 0.5)]))
    assert evaluated == MetricRecord({"theirs": 1.0})


def evaluation_replies(answers: list[tuple[int, float, float]]) -> list[Message]:
    """(num_examples, loss, accuracy) evaluate answers as Message-API replies."""
    return [
        Message(
            RecordDict({"metrics": MetricRecord({"loss": x, "accuracy": a, "num-examples": n})}),
            reply_to=sent_to(i + 1),
        )
        for i, (n, x, a) in enumerate(answers)
    ]


def test_federated_evaluation_is_the_example_weighted_mean_and_skips_odd_replies() -> None:
    rng = np.random.default_rng(3)
    answers = [(int(n), float(x), float(a)) for n, x, a in zip(
        rng.integers(1, 50, 6), rng.uniform(0.1, 2, 6), rng.uniform(0, 1, 6), strict=True
    )]  # fmt: skip
    replies = evaluation_replies(answers)
    odd = Message(RecordDict({"metrics": MetricRecord({"loss": 0.0})}), reply_to=sent_to(9))
    message = message_with(GLOBAL, "fedavg", nodes=2)
    record = message.aggregate_evaluate(1, [*reversed(replies), odd])
    assert record is not None
    assert record == message.aggregate_evaluate(1, replies)  # bit for bit, in any order
    total = sum(n for n, _, _ in answers)
    assert record["loss"] == pytest.approx(sum(n * x for n, x, _ in answers) / total)
    assert record["accuracy"] == pytest.approx(sum(n * a for n, _, a in answers) / total)
    with pytest.raises(InconsistentMessageReplies):  # what Flower's own FedAvg does
        FlowerMessageFedAvg().aggregate_evaluate(1, [*replies, odd])


def test_a_non_finite_client_loss_shows_in_the_federated_loss() -> None:
    answers = [(10, 0.5, 0.9), (20, math.inf, 0.1), (30, 0.25, 0.8)]
    record = message_with(GLOBAL, "fedavg", nodes=2).aggregate_evaluate(
        1, evaluation_replies(answers)
    )
    assert record is not None
    assert record["loss"] == math.inf  # as Flower's weighted_loss_avg reports it
    assert record["accuracy"] == pytest.approx((9 + 2 + 24) / 60)


def test_list_metrics_are_averaged_element_by_element_and_counts_keep_their_own_keys() -> None:
    """As Flower's ``aggregate_metricrecords``: a list metric is averaged element by element;
    the rule's counts sit under their own keys, so a client's ``accepted`` keeps its value."""
    replies = [
        reply(1, ONES, 1, per_class=[1.0, 0.0], accepted=7.0),
        reply(2, THREES, 3, per_class=[0.0, 1.0], accepted=3.0),
    ]
    strategy = message_with(GLOBAL, "fedavg", nodes=2)
    flowers = FlowerMessageFedAvg()
    start(flowers, GLOBAL, 2)  # type: ignore[arg-type]
    _, ours = strategy.aggregate_train(1, replies)
    _, theirs = flowers.aggregate_train(1, replies)
    assert ours is not None
    assert theirs is not None
    assert ours["per_class"] == pytest.approx(theirs["per_class"]) == [0.25, 0.75]
    assert ours["accepted"] == theirs["accepted"] == (7.0 + 3 * 3.0) / 4
    assert (ours[ROUND + "accepted"], ours[ROUND + "results"]) == (2, 2)
