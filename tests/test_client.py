"""FlowerClient: fit / evaluate on one partition; the ClientApp answering both Flower APIs."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fl_app import client_app
from fl_app.client_app import FlowerClient, app, make_client
from fl_app.kit import data as fl_data
from fl_app.kit.config import RunConfig
from fl_app.kit.data import data_spec, load_client_data
from fl_app.kit.keys import ConfigError
from fl_app.task import build_model, get_weights
from strategies.sampling import PARTITION_KEY
from tests.halves import HALVES

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


def message_api(kind: str, weights: list[np.ndarray]) -> Message:
    """What a flwr.serverapp.strategy server (Flower's own FedAvg) sends."""
    content = RecordDict(
        {"arrays": ArrayRecord(weights), "config": ConfigRecord({"server-round": 1})}
    )
    return Message(content, dst_node_id=101, message_type=kind)


def test_a_query_is_answered_with_the_partition_id_without_loading_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_data(*args: object) -> None:
        raise AssertionError("a partition-id question must not load the client's data")

    monkeypatch.setattr(client_app, "load_client_data", no_data)
    query = Message(RecordDict({"config": ConfigRecord()}), dst_node_id=104, message_type="query")
    reply = app(query, context(CFG.run_config, 4))
    assert dict(reply.content.config_records["config"]) == {PARTITION_KEY: 4}


def test_the_client_app_answers_message_api_train_and_evaluate() -> None:
    sent = global_weights()
    reply = app(message_api("train", sent), context(CFG.run_config))
    assert set(reply.content.keys()) == {"arrays", "metrics"}
    metrics = dict(reply.content["metrics"])
    # Flower's Message-API strategies weigh by "num-examples".
    assert metrics.pop("num-examples") == len(load_client_data(CFG, 1, NUM_PARTITIONS).train)
    assert set(metrics) == {"train_loss", "val_loss", "val_accuracy"}
    trained = reply.content["arrays"].to_numpy_ndarrays()
    want, _, _ = numpy_client(CFG, 1).fit(sent, {"server-round": 1})
    for got, expected in zip(trained, want, strict=True):
        assert got.tobytes() == expected.tobytes()  # the client's own training, bit for bit
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


def named_train(weights: list[np.ndarray], **config: int | str) -> list[tuple[Any, Message]]:
    """The same train message from each half this copy has, its config naming ``config``
    (a partition, a run)."""
    return [(half, half.train_message(weights, config)) for half in HALVES.values()]


def trained_loss(cfg: RunConfig, partition_id: int) -> float:
    """What partition ``partition_id``'s own client reports after round 1's training."""
    _, _, metrics = numpy_client(cfg, partition_id).fit(global_weights(), {"server-round": 1})
    return float(metrics["train_loss"])


def test_a_deployed_node_refuses_a_message_for_another_partition() -> None:
    for _, message in named_train(global_weights(), **node(3)):
        with pytest.raises(ValueError, match="runs its own partition only") as refused:
            app(message, context(CFG.run_config, partition_id=1))
        assert "partition 1 of 5" in str(refused.value)
        assert "partition 3 of 5" in str(refused.value)
    for half, message in named_train(global_weights(), **node(1)):  # its own: answered
        reply = app(message, context(CFG.run_config, partition_id=1))
        assert half.train_loss(reply) == trained_loss(CFG, 1)
