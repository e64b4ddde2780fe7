"""FlowerClient: fit / evaluate on one partition; the ClientApp answering both Flower APIs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import (
    Code,
    EvaluateIns,
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

from fl_app import client_app
from fl_app.client_app import FlowerClient, app, make_client
from fl_app.kit import data as fl_data
from fl_app.kit.config import SWEEP_RUN_KEY, RunConfig
from fl_app.kit.data import data_spec, load_client_data
from fl_app.kit.keys import ConfigError
from fl_app.task import build_model, get_weights
from strategies.sampling import PARTITION_KEY

CFG = RunConfig(local_epochs=1, device="cpu")
NUM_PARTITIONS = 5


def node(partition_id: int) -> dict[str, int]:
    return {"partition-id": partition_id, "num-partitions": NUM_PARTITIONS}


pytestmark = pytest.mark.usefixtures("one_torch_thread", "task_identity")


def global_weights(seed: int = 0) -> list[np.ndarray]:
    """A global model the client did not produce (independent arrays)."""
    spec = data_spec(CFG)
    model = build_model(CFG.model, spec.input_shape, spec.num_classes, seed)
    return [w.copy() for w in get_weights(model)]


def numpy_client(cfg: RunConfig, partition_id: int) -> FlowerClient:
    return make_client(cfg, node(partition_id))


def test_fit_trains_and_reports_its_metrics() -> None:
    client = numpy_client(CFG, 0)
    sent = global_weights()
    kept = [w.copy() for w in sent]
    params, num_examples, metrics = client.fit(sent, {"server-round": 1})
    assert len(params) == len(sent)
    for got, before in zip(params, kept, strict=True):
        assert got.shape == before.shape
        assert got.dtype == before.dtype
    assert any(not np.array_equal(got, before) for got, before in zip(params, kept, strict=True))
    assert all(np.array_equal(s, k) for s, k in zip(sent, kept, strict=True)), "input changed"
    assert num_examples == len(load_client_data(CFG, 0, NUM_PARTITIONS).train)
    assert set(metrics) == {"train_loss", "val_loss", "val_accuracy"}
    for name, value in metrics.items():
        assert isinstance(value, float), name
        assert math.isfinite(value), name
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    assert metrics["train_loss"] > 0


def test_fit_is_deterministic_for_the_same_round() -> None:
    client = numpy_client(CFG, 1)
    first = [w.copy() for w in client.fit(global_weights(), {"server-round": 2})[0]]
    second = [w.copy() for w in client.fit(global_weights(), {"server-round": 2})[0]]
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_evaluate_scores_the_sent_model_on_the_local_val_split() -> None:
    client = numpy_client(CFG, 0)
    sent = global_weights()
    loss, num_examples, metrics = client.evaluate(sent, {})
    assert num_examples == len(load_client_data(CFG, 0, NUM_PARTITIONS).val)
    assert set(metrics) == {"accuracy"}
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert isinstance(loss, float)
    assert math.isfinite(loss)
    # Training in between does not leak into the next evaluation of the same weights.
    client.fit(global_weights(seed=3), {"server-round": 1})
    assert client.evaluate(sent, {}) == (loss, num_examples, metrics)


def test_fit_results_of_one_client_survive_another_clients_fit() -> None:
    # Clients in one process share one model object; a returned update must be a snapshot.
    first = numpy_client(CFG, 0)
    second = numpy_client(CFG, 1)
    params, _, _ = first.fit(global_weights(), {"server-round": 1})
    kept = [w.copy() for w in params]
    second.fit(global_weights(), {"server-round": 1})
    assert all(np.array_equal(p, k) for p, k in zip(params, kept, strict=True))


def context(run_config: dict[str, object], partition_id: int = 1) -> Context:
    return Context(
        run_id=1,
        node_id=100 + partition_id,
        node_config=dict(node(partition_id)),
        state=RecordDict(),
        run_config=dict(run_config),  # type: ignore[arg-type]
    )


def legacy_fit(weights: list[np.ndarray]) -> Message:
    """What a flwr.server.strategy server sends: FitIns as records."""
    ins = FitIns(ndarrays_to_parameters(weights), {"server-round": 1})
    return Message(
        fitins_to_recorddict(ins, keep_input=True), dst_node_id=101, message_type="train"
    )


def message_api(kind: str, weights: list[np.ndarray]) -> Message:
    """What a flwr.serverapp.strategy server (Flower's own FedAvg) sends."""
    content = RecordDict(
        {"arrays": ArrayRecord(weights), "config": ConfigRecord({"server-round": 1})}
    )
    return Message(content, dst_node_id=101, message_type=kind)


def test_the_client_app_answers_legacy_fit_and_evaluate() -> None:
    sent = global_weights()
    reply = app(legacy_fit(sent), context(CFG.run_config, partition_id=1))
    res = recorddict_to_fitres(reply.content, keep_input=True)
    assert res.status.code == Code.OK
    assert res.num_examples == len(load_client_data(CFG, 1, NUM_PARTITIONS).train)
    params = parameters_to_ndarrays(res.parameters)
    assert len(params) == len(sent)
    assert any(not np.array_equal(p, s) for p, s in zip(params, sent, strict=True))
    assert set(res.metrics) == {"train_loss", "val_loss", "val_accuracy"}
    ins = EvaluateIns(ndarrays_to_parameters(sent), {})
    asked = Message(
        evaluateins_to_recorddict(ins, keep_input=True), dst_node_id=101, message_type="evaluate"
    )
    ev = recorddict_to_evaluateres(app(asked, context(CFG.run_config)).content)
    assert ev.status.code == Code.OK
    assert ev.num_examples == len(load_client_data(CFG, 1, NUM_PARTITIONS).val)
    assert 0.0 <= float(ev.metrics["accuracy"]) <= 1.0


def test_both_halves_ask_the_client_app_its_partition_id_without_loading_data(
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
    res = recorddict_to_getpropertiesres(app(asked, context(CFG.run_config, 4)).content)
    assert res.status.code == Code.OK
    assert res.properties == {PARTITION_KEY: 4}
    query = Message(RecordDict({"config": ConfigRecord()}), dst_node_id=104, message_type="query")
    reply = app(query, context(CFG.run_config, 4))
    assert dict(reply.content.config_records["config"]) == {PARTITION_KEY: 4}


def test_the_client_app_answers_message_api_train_and_evaluate_with_the_same_model() -> None:
    sent = global_weights()
    legacy = recorddict_to_fitres(
        app(legacy_fit(sent), context(CFG.run_config)).content, keep_input=True
    )
    reply = app(message_api("train", sent), context(CFG.run_config))
    assert set(reply.content.keys()) == {"arrays", "metrics"}
    metrics = dict(reply.content["metrics"])
    # Flower's Message-API strategies weigh by "num-examples"; the other metrics as legacy.
    assert metrics.pop("num-examples") == legacy.num_examples
    assert metrics == legacy.metrics
    trained = reply.content["arrays"].to_numpy_ndarrays()
    for got, want in zip(trained, parameters_to_ndarrays(legacy.parameters), strict=True):
        assert got.tobytes() == want.tobytes()  # the same training, bit for bit

    evaluated = dict(app(message_api("evaluate", sent), context(CFG.run_config)).content["metrics"])
    assert evaluated["num-examples"] == len(load_client_data(CFG, 1, NUM_PARTITIONS).val)
    assert evaluated["loss"] > 0
    assert 0.0 <= evaluated["accuracy"] <= 1.0


def test_the_client_app_keeps_the_servers_layer_names() -> None:
    # Flower's quickstart server sends ArrayRecord(model.state_dict()): named layers.
    spec = data_spec(CFG)
    model = build_model(CFG.model, spec.input_shape, spec.num_classes, 0)
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord({"server-round": 1})}
    )
    reply = app(Message(content, dst_node_id=101, message_type="train"), context(CFG.run_config))
    assert list(reply.content["arrays"].keys()) == list(model.state_dict().keys())
    model.load_state_dict(reply.content["arrays"].to_torch_state_dict())


def test_the_client_app_uses_the_run_config() -> None:
    cfg = RunConfig(local_epochs=1, device="cpu", val_fraction=0.3)
    reply = app(message_api("train", global_weights()), context(cfg.run_config, partition_id=2))
    want = len(load_client_data(cfg, 2, NUM_PARTITIONS).train)
    assert reply.content["metrics"]["num-examples"] == want
    assert want != len(load_client_data(CFG, 2, NUM_PARTITIONS).train)


def test_the_client_app_refuses_a_bad_run_config() -> None:
    with pytest.raises(ConfigError, match="'local-epochs'"):
        app(message_api("train", global_weights()), context({**CFG.run_config, "local-epochs": 0}))


def test_client_data_is_reused_across_make_client_calls() -> None:
    fl_data.load_client_data.cache_clear()
    first = numpy_client(CFG, 3)
    misses = fl_data.load_client_data.cache_info().misses
    second = numpy_client(CFG, 3)
    assert second.data is first.data
    info = fl_data.load_client_data.cache_info()
    assert info.misses == misses
    assert info.hits >= 1
    assert numpy_client(CFG, 4).data is not first.data


def named_train(weights: list[np.ndarray], **config: int | str) -> tuple[Message, Message]:
    """The same train message from each half, its config naming ``config`` (a partition,
    a run)."""
    ins = FitIns(ndarrays_to_parameters(weights), {"server-round": 1, **config})
    legacy = Message(
        fitins_to_recorddict(ins, keep_input=True), dst_node_id=101, message_type="train"
    )
    content = RecordDict(
        {"arrays": ArrayRecord(weights), "config": ConfigRecord({"server-round": 1, **config})}
    )
    return legacy, Message(content, dst_node_id=101, message_type="train")


def loss_of(reply: Message) -> float:
    """The training loss either half's train reply reports."""
    if "metrics" in reply.content:
        return float(reply.content["metrics"]["train_loss"])
    return float(recorddict_to_fitres(reply.content, keep_input=False).metrics["train_loss"])


def trained_loss(cfg: RunConfig, partition_id: int) -> float:
    """What partition ``partition_id``'s own client reports after round 1's training."""
    _, _, metrics = numpy_client(cfg, partition_id).fit(global_weights(), {"server-round": 1})
    return float(metrics["train_loss"])


def test_a_pool_node_runs_the_partition_each_message_names_on_both_halves() -> None:
    pooled = client_app.client_app_for(CFG, pooled=True)
    for partition in (3, 4):
        want = trained_loss(CFG, partition)
        assert want != trained_loss(CFG, 1)
        for message in named_train(global_weights(), **node(partition)):
            reply = pooled(message, context(CFG.run_config, partition_id=1))  # node 1 of a pool
            assert loss_of(reply) == want


def test_a_deployed_node_refuses_a_message_for_another_partition() -> None:
    for message in named_train(global_weights(), **node(3)):
        with pytest.raises(ValueError, match="runs its own partition only") as refused:
            app(message, context(CFG.run_config, partition_id=1))
        assert "partition 1 of 5" in str(refused.value)
        assert "partition 3 of 5" in str(refused.value)
    for message in named_train(global_weights(), **node(1)):  # its own: answered
        assert loss_of(app(message, context(CFG.run_config, partition_id=1))) == trained_loss(
            CFG, 1
        )


def test_a_sweep_client_app_trains_with_the_config_of_the_run_each_message_names() -> None:
    runs = {"a": CFG, "b": RunConfig(local_epochs=1, device="cpu", val_fraction=0.3)}
    swept = client_app.client_app_for(pooled=True, sweep=runs)
    for name, cfg in runs.items():
        for message in named_train(global_weights(), **node(2), **{SWEEP_RUN_KEY: name}):
            reply = swept(message, context({}, partition_id=0))
            assert loss_of(reply) == trained_loss(cfg, 2)
    assert trained_loss(runs["a"], 2) != trained_loss(runs["b"], 2)
