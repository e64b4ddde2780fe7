"""FlowerClient: fit / evaluate on one partition, client_fn from a Flower Context."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.client import Client
from flwr.common import (
    Code,
    Context,
    EvaluateIns,
    FitIns,
    RecordDict,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)

from fl_app import data as fl_data
from fl_app.client_app import FlowerClient, client_fn, make_client
from fl_app.config import ConfigError, RunConfig
from fl_app.data import data_spec, load_client_data
from fl_app.models import build_model
from fl_app.training import get_weights

CFG = RunConfig(local_epochs=1, device="cpu")
NUM_PARTITIONS = 5


def node(partition_id: int) -> dict[str, int]:
    return {"partition-id": partition_id, "num-partitions": NUM_PARTITIONS}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def global_weights(seed: int = 0) -> list[np.ndarray]:
    """A global model the client did not produce (independent arrays)."""
    spec = data_spec(CFG)
    model = build_model(CFG.model, spec.input_shape, spec.num_classes, seed)
    return [w.copy() for w in get_weights(model)]


def numpy_client(cfg: RunConfig, partition_id: int) -> FlowerClient:
    client = make_client(cfg, node(partition_id))
    assert isinstance(client, Client)
    inner = client.numpy_client  # type: ignore[attr-defined]
    assert isinstance(inner, FlowerClient)
    return inner


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


def test_client_fn_builds_a_client_from_the_context() -> None:
    client = client_fn(context(CFG.run_config, partition_id=1))
    assert isinstance(client, Client)
    sent = global_weights()
    res = client.fit(FitIns(ndarrays_to_parameters(sent), {"server-round": 1}))
    assert res.status.code == Code.OK
    assert res.num_examples == len(load_client_data(CFG, 1, NUM_PARTITIONS).train)
    params = parameters_to_ndarrays(res.parameters)
    assert len(params) == len(sent)
    assert any(not np.array_equal(p, s) for p, s in zip(params, sent, strict=True))
    assert set(res.metrics) == {"train_loss", "val_loss", "val_accuracy"}
    ev = client.evaluate(EvaluateIns(ndarrays_to_parameters(sent), {}))
    assert ev.status.code == Code.OK
    assert ev.num_examples == len(load_client_data(CFG, 1, NUM_PARTITIONS).val)
    assert 0.0 <= float(ev.metrics["accuracy"]) <= 1.0


def test_client_fn_uses_the_run_config() -> None:
    cfg = RunConfig(local_epochs=1, device="cpu", val_fraction=0.3)
    client = client_fn(context(cfg.run_config, partition_id=2))
    inner = client.numpy_client  # type: ignore[attr-defined]
    assert inner.cfg == cfg
    assert inner.partition_id == 2
    assert inner.data is load_client_data(cfg, 2, NUM_PARTITIONS)


def test_client_fn_refuses_a_bad_run_config() -> None:
    with pytest.raises(ConfigError, match="'local-epochs'"):
        client_fn(context({**CFG.run_config, "local-epochs": 0}))


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
