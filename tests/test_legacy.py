"""The legacy half (the optional part ``legacy-api``) against the Message API's: the same
model, metrics and federated evaluation bit for bit on the same replies."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import (
    Code,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    GetPropertiesIns,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.constant import MessageTypeLegacy
from flwr.compat.common.recorddict_compat import (
    evaluateins_to_recorddict,
    fitins_to_recorddict,
    getpropertiesins_to_recorddict,
    recorddict_to_evaluateres,
    recorddict_to_fitres,
    recorddict_to_getpropertiesres,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import strategies
from fl_app import client_app
from fl_app.client_app import app, make_client
from fl_app.kit.config import RunConfig
from fl_app.kit.data import load_client_data
from fl_app.kit.keys import ConfigError
from fl_app.parts.legacy.keys import FLOWER_APIS, LegacyKeys
from strategies.legacy import LegacyStrategy
from strategies.sampling import PARTITION_KEY
from tests.fakes import message_with, reply, sent_to, start, updates_of
from tests.legacy_fakes import OK, LegacyHalf, NoClients, Proxy, fit_res
from tests.processes import run_python
from tests.test_config import assert_bounds_refused, assert_one_line_error

SHAPES = [(3, 2), (2,)]
GLOBAL = [np.zeros(s, dtype=np.float32) for s in SHAPES]

pytestmark = pytest.mark.usefixtures("task_identity")


def legacy_with(global_model: Sequence[np.ndarray], name: str, **knobs: Any) -> LegacyStrategy:
    strategy = strategies.build(
        name, api="legacy", initial_parameters=ndarrays_to_parameters(list(global_model)), **knobs
    )
    assert isinstance(strategy, LegacyStrategy)
    strategy.initialize_parameters(client_manager=None)  # type: ignore[arg-type]
    return strategy


FEDAVG: dict[str, st.SearchStrategy[Any]] = {}  # fedavg's knobs: an optional part's
FEDAVG["server_momentum"] = st.sampled_from([0.0, 0.9])  # part: server-optimizer
FEDAVG["server_learning_rate"] = st.just(0.7)  # part: server-optimizer
KNOBS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "simple": st.fixed_dictionaries({}),
    "fedavg": st.fixed_dictionaries(FEDAVG),
    "quality": st.fixed_dictionaries(
        {
            "quality_weighting": st.sampled_from(["softmax", "linear"]),
            "quality_temperature": st.floats(0.05, 2.0),
        }
    ),
    "hybrid": st.fixed_dictionaries(
        {
            "hybrid_lambda": st.floats(0.0, 1.0),
            "robust_filter": st.sampled_from(["none", "mad", "clip", "direction"]),  # part: robust
            "server_momentum": st.sampled_from([0.0, 0.5]),  # part: server-optimizer
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
        legacy.configure_fit(server_round, ndarrays_to_parameters(global_model), NoClients())
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
        # The same round metrics, and the same weights (a JSON string, in last_result).
        assert message_metrics is not None
        assert dict(message_metrics) == legacy_metrics
        assert message.last_result is not None
        assert legacy.last_result is not None
        assert message.last_result.metrics["weights"] == legacy.last_result.metrics["weights"]
        global_model = want


# ---- evaluate
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


def test_a_non_finite_client_loss_shows_in_the_federated_loss_on_both_halves() -> None:
    answers = [(10, 0.5, 0.9), (20, math.inf, 0.1), (30, 0.25, 0.8)]
    loss, metrics, replies = evaluated_on_the_legacy_half(answers)
    record = message_with(GLOBAL, "fedavg", nodes=2).aggregate_evaluate(1, replies)
    assert record is not None
    assert loss == record["loss"] == math.inf  # as Flower's weighted_loss_avg reports it
    assert metrics["accuracy"] == record["accuracy"] == pytest.approx((9 + 2 + 24) / 60)


def test_failures_with_accept_failures_false_return_none() -> None:
    half = LegacyHalf()
    strategy = half.make("fedavg", GLOBAL, accept_failures=False)
    updates = updates_of([GLOBAL, GLOBAL], [1, 3])
    out, metrics = half.aggregate(strategy, updates, failures=[RuntimeError("timeout")])
    assert out is None
    assert metrics == {"results": 2, "failures": 1, "rejected": 0, "accepted": 0}
    # The round says why (and does not reuse the previous round's result).
    assert "accept_failures=False (first: RuntimeError: timeout)" in strategy.last_result.problem


# ---- the config keys and the simulation flags ---------------------------------------


def test_every_bounded_legacy_key_is_refused_out_of_range() -> None:
    rows = [
        ("secagg-num-shares", 2, ">= 3"),
        ("secagg-reconstruction-threshold", 1, ">= 2"),
        ("secagg-max-weight", 0.5, ">= 1"),
        ("secagg-clipping-range", 0.0, "> 0"),
    ]
    assert_bounds_refused(LegacyKeys, rows)


@pytest.mark.parametrize("bad", ["grpc", "Message"])
def test_the_flower_api_is_one_of_the_halves(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({"flower-api": bad})
    assert "message, legacy" in assert_one_line_error(info.value, "flower-api", bad)
    for api in FLOWER_APIS:
        assert RunConfig.from_mapping({"flower-api": api}).flower_api == api


# ---- the client side ------------------------------------------------------------------

CFG = RunConfig(local_epochs=1, device="cpu")


def client_context(partition_id: int = 1) -> Context:
    node = {"partition-id": partition_id, "num-partitions": 5}
    run = dict(CFG.run_config)
    return Context(
        run_id=1, node_id=100 + partition_id, node_config=node, state=RecordDict(), run_config=run
    )  # type: ignore[arg-type]


def sent_model() -> list[np.ndarray]:
    return [
        w.copy()
        for w in make_client(CFG, {"partition-id": 0, "num-partitions": 5}).get_parameters({})
    ]


def legacy_fit(weights: list[np.ndarray]) -> Message:
    """What a flwr.server.strategy server sends: FitIns as records."""
    ins = FitIns(ndarrays_to_parameters(weights), {"server-round": 1})
    return Message(
        fitins_to_recorddict(ins, keep_input=True), dst_node_id=101, message_type="train"
    )


def test_the_client_app_answers_legacy_fit_and_evaluate() -> None:
    sent = sent_model()
    reply = app(legacy_fit(sent), client_context(1))
    res = recorddict_to_fitres(reply.content, keep_input=True)
    assert res.status.code == Code.OK
    assert res.num_examples == len(load_client_data(CFG, 1, 5).train)
    params = parameters_to_ndarrays(res.parameters)
    assert len(params) == len(sent)
    assert any(not np.array_equal(p, s) for p, s in zip(params, sent, strict=True))
    assert set(res.metrics) == {"train_loss", "val_loss", "val_accuracy"}
    ins = EvaluateIns(ndarrays_to_parameters(sent), {})
    asked = Message(
        evaluateins_to_recorddict(ins, keep_input=True), dst_node_id=101, message_type="evaluate"
    )
    ev = recorddict_to_evaluateres(app(asked, client_context()).content)
    assert ev.status.code == Code.OK
    assert ev.num_examples == len(load_client_data(CFG, 1, 5).val)
    assert 0.0 <= float(ev.metrics["accuracy"]) <= 1.0


def test_the_legacy_half_asks_the_client_app_its_partition_id_without_loading_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_data(*args: object) -> None:
        raise AssertionError("a partition-id question must not load the client's data")

    monkeypatch.setattr(client_app, "load_client_data", no_data)
    asked = Message(
        getpropertiesins_to_recorddict(GetPropertiesIns({})),
        dst_node_id=104,
        message_type=MessageTypeLegacy.GET_PROPERTIES,
    )
    res = recorddict_to_getpropertiesres(app(asked, client_context(4)).content)
    assert res.status.code == Code.OK
    assert res.properties == {PARTITION_KEY: 4}


def test_the_client_app_trains_the_same_model_for_either_half() -> None:
    sent = sent_model()
    legacy = recorddict_to_fitres(app(legacy_fit(sent), client_context()).content, keep_input=True)
    reply = app(message_api("train", sent), client_context())
    assert set(reply.content.keys()) == {"arrays", "metrics"}
    metrics = dict(reply.content["metrics"])
    # Flower's Message-API strategies weigh by "num-examples"; the other metrics as legacy.
    assert metrics.pop("num-examples") == legacy.num_examples
    assert metrics == legacy.metrics
    trained = reply.content["arrays"].to_numpy_ndarrays()
    for got, want in zip(trained, parameters_to_ndarrays(legacy.parameters), strict=True):
        assert got.tobytes() == want.tobytes()  # the same training, bit for bit


def message_api(kind: str, weights: list[np.ndarray]) -> Message:
    content = RecordDict(
        {"arrays": ArrayRecord(weights), "config": ConfigRecord({"server-round": 1})}
    )
    return Message(content, dst_node_id=101, message_type=kind)


@pytest.mark.slow
def test_flowers_tutorial_client_without_the_quality_metric_stops_the_run_with_the_fix(
    tmp_path: Path,
) -> None:
    # Flower's step-by-step NumPyClient reports train_loss only; QualityWeighted's default
    # quality is val_accuracy. Before: every update rejected, frozen model, exit 0.
    done = run_python(["-m", "tests.legacy_apps", str(tmp_path / "x.json")])
    assert done.returncode != 0
    assert "NothingAggregatedError: round 3: nothing aggregated" in done.stderr
    assert "the clients sent the metrics [train_loss]" in done.stderr
    assert "max-empty-rounds=3" in done.stderr
