"""The Flower-free strategy core: imports, empty rounds, the stop, state.

Everything here runs the rules directly (``Rule.aggregate`` on ``ClientUpdate`` objects),
the way both Flower adapters call them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

import strategies
from strategies.core.codec import encode_tensors
from strategies.core.options import ServerOptions
from strategies.core.state import StrategyState
from strategies.core.update import ClientUpdate, Coefficients, NothingAggregatedError
from strategies.fedavg import FedAvgRule
from strategies.hybrid import HybridOptions, HybridRule
from strategies.quality_weighted import QualityOptions, QualityWeightedRule
from tests.processes import ROOT

GLOBAL = [np.zeros(2, dtype=np.float32), np.zeros((1, 2), dtype=np.float32)]


def update(client: str, value: float, n: int = 10, **metrics: float) -> ClientUpdate:
    arrays = [np.full_like(layer, value) for layer in GLOBAL]
    return ClientUpdate(client, encode_tensors(arrays), n, metrics)


@pytest.mark.parametrize(
    "module",
    [
        "strategies",
        *(f"strategies.core.{m.stem}" for m in (ROOT / "strategies" / "core").glob("*.py")),
        "strategies.aggregate",
        *(rule.__module__ for rule in strategies.REGISTRY.values()),
        "fl_app.kit.config",
        "fl_app.task",
        "fl_app.kit.data",
        "fl_app.kit.training",
        "fl_app.parts.zoo",  # part: zoo
        "fl_app.kit.results",
        "fl_app.kit.checkpoint",
        "fl_app.parts.faults",  # part: faults
        "strategies.robust",  # part: robust
        "strategies.server_optimizer",  # part: server-optimizer
    ],
)
def test_the_core_and_the_torch_modules_import_no_flower(module: str) -> None:
    probe = (
        f"import sys, {module}; "
        "print(sorted(m for m in sys.modules if m == 'flwr' or m.startswith('flwr.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", f"{module} loads Flower: {done.stdout[:300]}"


def test_a_rule_aggregates_by_itself() -> None:
    rule = FedAvgRule()
    rule.global_model = GLOBAL
    result = rule.aggregate(1, [update("a", 1.0, n=1), update("b", 3.0, n=3)], failures=[])
    assert result.arrays is not None
    # (1·1 + 3·3) / 4 = 2.5 in every entry
    np.testing.assert_array_equal(result.arrays[0], [2.5, 2.5])
    assert result.problem is None
    assert json.loads(str(result.metrics["weights"])) == {"a": 0.25, "b": 0.75}


def test_missing_quality_says_what_the_clients_sent_and_which_keys_to_change() -> None:
    rule = QualityWeightedRule()
    rule.global_model = GLOBAL
    sent = [update("a", 1.0, train_loss=0.5), update("b", 2.0, train_loss=0.4)]
    sent[0].metrics["host"] = "5434810aa09d"  # text: never a quality, not listed
    result = rule.aggregate(1, sent, failures=[])
    assert result.arrays is None
    assert result.problem is not None
    assert "quality metric 'val_accuracy' missing" in result.problem
    assert "[train_loss]" in result.problem
    assert "quality-metric" in result.problem
    assert "quality-source=server" in result.problem
    assert "\n" not in result.problem  # one line


def test_all_clients_failed_is_explained() -> None:
    rule = FedAvgRule()
    result = rule.aggregate(4, [], failures=["node 7: KeyError 'arrays'"] * 3)
    assert result.problem is not None
    assert result.problem.startswith("round 4: nothing aggregated")
    assert "all 3 sampled clients failed (first: node 7: KeyError 'arrays')" in result.problem
    assert result.metrics == {"results": 0, "failures": 3, "rejected": 0, "accepted": 0}


def test_the_run_stops_after_max_empty_rounds_in_a_row() -> None:
    rule = QualityWeightedRule(QualityOptions(max_empty_rounds=3))
    rule.global_model = GLOBAL
    no_quality = [update("a", 1.0, train_loss=0.5)]
    for server_round in (1, 2):
        assert rule.aggregate(server_round, no_quality, failures=[]).arrays is None
    with pytest.raises(NothingAggregatedError, match="max-empty-rounds=3") as raised:
        rule.aggregate(3, no_quality, failures=[])
    assert "3 rounds in a row" in str(raised.value)
    assert "[train_loss]" in str(raised.value)
    assert raised.value.metrics["rejected"] == 1


def test_a_good_round_resets_the_empty_round_count() -> None:
    rule = QualityWeightedRule(QualityOptions(max_empty_rounds=2))
    rule.global_model = GLOBAL
    assert rule.aggregate(1, [update("a", 1.0)], failures=[]).arrays is None
    assert rule.state.empty_rounds == 1
    assert rule.aggregate(2, [update("a", 1.0, val_accuracy=0.9)], failures=[]).arrays is not None
    assert rule.state.empty_rounds == 0
    assert rule.aggregate(3, [update("a", 1.0)], failures=[]).arrays is None  # 1 in a row


def test_max_empty_rounds_zero_never_stops() -> None:
    rule = FedAvgRule(ServerOptions(max_empty_rounds=0))
    for server_round in range(1, 20):
        assert rule.aggregate(server_round, [], failures=["x"]).arrays is None
    assert rule.state.empty_rounds == 19


def test_strategy_state_round_trips_through_arrays() -> None:
    state = StrategyState(empty_rounds=2)
    again = StrategyState.from_arrays(state.to_arrays())
    assert again.empty_rounds == 2
    assert StrategyState.from_arrays({}) == StrategyState()


@pytest.mark.parametrize(
    ("options", "kwargs", "parameter"),
    [
        (ServerOptions, {"max_empty_rounds": -1}, "max_empty_rounds"),
        (ServerOptions, {"server_momentum": 1.0}, "server_momentum"),  # part: server-optimizer
        (QualityOptions, {"quality_direction": "up"}, "quality_direction"),
        (HybridOptions, {"hybrid_lambda_end": 2.0}, "hybrid_lambda_end"),
        (HybridOptions, {"robust_filter": "median"}, "robust_filter"),  # part: robust
    ],
)
def test_bad_options_name_the_parameter(
    options: type[ServerOptions], kwargs: dict[str, object], parameter: str
) -> None:
    with pytest.raises(ValueError, match=parameter):
        options(**kwargs)


def test_hybrid_owns_its_lambda_schedule() -> None:
    options = HybridOptions(hybrid_lambda=1.0, hybrid_lambda_end=0.0, num_server_rounds=5)
    assert [options.lambda_at(r) for r in range(1, 6)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert HybridOptions(hybrid_lambda=0.3).lambda_at(7) == 0.3


def test_options_read_from_any_config_object() -> None:
    values: dict[str, Any] = {
        "server_learning_rate": 0.5,  # part: server-optimizer
        "server_momentum": 0.9,  # part: server-optimizer
        "server_optimizer": "sgd",  # part: server-optimizer
        "server_beta_1": 0.8,  # part: server-optimizer
        "server_beta_2": 0.9,  # part: server-optimizer
        "server_tau": 0.01,  # part: server-optimizer
        "max_empty_rounds": 0,
        "dp": "central",  # part: dp
        "dp_noise_multiplier": 0.5,  # part: dp
        "dp_clipping_norm": 2.0,  # part: dp
        "dp_delta": 1e-6,  # part: dp
        "dp_clipping": "adaptive",  # part: dp
        "dp_target_quantile": 0.7,  # part: dp
        "dp_clip_learning_rate": 0.1,  # part: dp
        "dp_clipped_count_stddev": 2.0,  # part: dp
        "seed": 3,  # part: dp
        "client_state_on": "node",  # part: client-state
    }
    assert set(values) == set(ServerOptions.field_names())  # every knob, none defaulted
    config = type("Config", (), values | {"unrelated": "ignored"})()
    assert ServerOptions.from_config(config) == ServerOptions(**values)


def test_a_rule_refuses_another_rules_options() -> None:
    with pytest.raises(TypeError, match="HybridRule takes HybridOptions, not QualityOptions"):
        HybridRule(QualityOptions())


def test_a_garbled_npy_header_is_rejected_not_a_crash() -> None:
    # numpy's header parser raises tokenize errors on some garbage; one bad reply must
    # still be a rejection.
    good = encode_tensors([np.zeros(2, dtype=np.float32)])[0]
    header_end = good.index(b"}")
    garbled = good[:header_end].replace(b"(2,)", b"(2 , ") + good[header_end:]
    rule = FedAvgRule()
    rule.global_model = [np.zeros(2, dtype=np.float32)]
    ok = ClientUpdate("ok", [good], 5, {})
    result = rule.aggregate(1, [ok, ClientUpdate("bad", [garbled], 5, {})], failures=[])
    assert result.metrics["rejected"] == 1
    assert result.metrics["accepted"] == 1


def test_a_rule_whose_coefficients_do_not_sum_to_one_is_refused() -> None:
    class Broken(FedAvgRule):
        def coefficients(self, server_round: int, updates: list[ClientUpdate]) -> Coefficients:
            return Coefficients(np.full(len(updates), 0.7))

    rule = Broken()
    rule.global_model = GLOBAL
    with pytest.raises(ValueError, match=r"Broken\.coefficients gave .* must be finite, one per"):
        rule.aggregate(1, [update("a", 1.0), update("b", 2.0)], failures=[])


def test_a_lambda_schedule_needs_its_rounds() -> None:
    with pytest.raises(ValueError, match="needs num_server_rounds >= 2"):
        HybridOptions(hybrid_lambda=0.2, hybrid_lambda_end=0.8)
    with pytest.raises(ValueError, match="num_server_rounds"):
        HybridOptions(num_server_rounds=-3)
