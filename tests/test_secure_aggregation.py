"""SecAgg+ (Flower's workflow and client mod, legacy API): what runs under it, what refuses.

End to end, a secure run is compared with the same run in the clear: the protocol only
quantizes, so the models agree to the quantization step, and the records are written
the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

import strategies
from fl_app.client_app import make_client
from fl_app.kit.config import RunConfig
from fl_app.kit.keys import ConfigError
from strategies.core.metrics import ROUND
from strategies.core.state import StrategyState
from strategies.secure import secure_weight
from tests.legacy_fakes import make, results_of
from tests.processes import read_history, run_python, run_simulation_cli

GLOBAL = [np.zeros((6, 4), dtype=np.float32), np.zeros(4, dtype=np.float32)]
FILTERED = {"strategy": "hybrid", "hybrid_lambda": 1.0, "robust_filter": "mad"}  # part: robust
SECURE = {"flower-api": "legacy", "secure-aggregation": True}


@pytest.mark.parametrize(
    ("settings", "why"),
    [
        ({"flower_api": "message"}, "legacy API only"),
        ({"dp": "central"}, "central DP clips each update"),  # part: dp
        ({"strategy": "quality"}, "'quality': QualityWeightedRule weighs, scores or filters"),
        ({"strategy": "hybrid", "hybrid_lambda": 0.5}, "'hybrid': HybridRule weighs"),
        (FILTERED, "HybridRule"),  # part: robust
        ({"secagg_num_shares": 3, "secagg_reconstruction_threshold": 3}, "less than secagg-num"),
        ({"min_fit_clients": 1}, "masks pairs of clients"),
        ({"fault_kind": "sign-flip", "fault_fraction": 0.2}, "cannot be rejected"),  # part: faults
        ({"strategy": "flower-median"}, "MedianRule weighs"),  # part: flower-baselines
    ],
)
def test_what_secure_aggregation_cannot_run_is_refused_in_one_line(
    settings: dict[str, Any], why: str
) -> None:
    with pytest.raises(ConfigError, match=why) as refused:
        RunConfig.from_mapping(SECURE | {k.replace("_", "-"): v for k, v in settings.items()})
    assert "\n" not in str(refused.value)


def test_each_rule_that_allows_it_names_a_client_side_weight() -> None:
    allowed = {
        name: secure_weight(rule, rule.Options())
        for name, rule in strategies.CHOICES.items()
        if secure_weight(rule, rule.Options()) is not None
    }
    assert allowed == {"simple": "one", "fedavg": "examples"}
    hybrid = strategies.HybridRule.Options
    assert secure_weight(strategies.HybridRule, hybrid(hybrid_lambda=1.0)) == "examples"
    ramp = hybrid(hybrid_lambda=1.0, hybrid_lambda_end=0.8, num_server_rounds=5)
    assert secure_weight(strategies.HybridRule, ramp) is None
    with pytest.raises(ValueError, match="secure_aggregation=True: QualityWeightedRule weighs"):
        strategies.QualityWeighted(secure_aggregation=True)


def test_the_unmasked_float64_mean_is_cast_once_and_stands_for_every_client() -> None:
    knobs: dict[str, Any] = {"secure_aggregation": True}
    knobs["dp"] = "local"  # part: dp
    strategy = make(strategies.FedAvg, GLOBAL, **knobs)
    mean = [np.full((6, 4), 0.25), np.arange(4, dtype=np.float64) / 3]  # float64, as SecAgg+
    results = results_of([mean] * 3, [10, 30, 60])
    for _, res in results:
        res.parameters = ndarrays_to_parameters(mean)  # one Parameters object, as SecAgg+
    parameters, metrics = strategy.aggregate_fit(1, results, [])
    assert parameters is not None
    got = parameters_to_ndarrays(parameters)
    assert [a.dtype for a in got] == [np.float32, np.float32]
    for a, m in zip(got, mean, strict=True):
        np.testing.assert_array_equal(a, m.astype(np.float32))
    assert (metrics[ROUND + "accepted"], metrics[ROUND + "rejected"]) == (3, 0)
    # Each client's own example count (and release: local DP accounts every client).
    assert strategy.last_result.metrics["weights"] == '{"c0": 0.1, "c1": 0.3, "c2": 0.6}'
    state = StrategyState.from_arrays(strategy.get_state().to_arrays())
    assert sorted(c for c, _, _ in state.releases) == ["c0", "c1", "c2"]  # part: dp


def test_a_wrong_layout_under_secure_aggregation_is_rejected_not_cast() -> None:
    strategy = make(strategies.FedAvg, GLOBAL, secure_aggregation=True, max_empty_rounds=0)
    (proxy, res), *_ = results_of([GLOBAL[:1]], [5])  # one layer of two
    _, metrics = strategy.aggregate_fit(1, [(proxy, res)], [])
    assert (metrics[ROUND + "accepted"], metrics[ROUND + "rejected"]) == (0, 1)


def test_one_rejected_update_rejects_the_masked_sum_it_is_inside() -> None:
    strategy = make(strategies.FedAvg, GLOBAL, secure_aggregation=True, max_empty_rounds=0)
    results = results_of([GLOBAL] * 3, [10, 0, 30])  # a client that claims no examples
    parameters, metrics = strategy.aggregate_fit(1, results, [])
    assert parameters is None
    assert (metrics[ROUND + "accepted"], metrics[ROUND + "rejected"]) == (0, 3)
    assert "inside a masked sum with a rejected update" in strategy.last_result.problem


@pytest.mark.parametrize(("strategy", "weight"), [("simple", 1000), ("fedavg", None)])
def test_a_secure_client_sends_its_rules_weight_and_checks_the_protocols_bounds(
    strategy: str, weight: int | None
) -> None:
    node = {"partition-id": 0, "num-partitions": 4}
    cfg = RunConfig.from_mapping(SECURE | {"strategy": strategy, "local-epochs": 1})
    client = make_client(cfg, node)
    received = client.get_parameters({})
    trained, sent_weight, _ = client.fit(list(received), {"server-round": 1})
    n = len(client.client.data.train)  # type: ignore[attr-defined]
    assert sent_weight == (n if weight is None else weight)
    if weight is None:  # n_i can exceed the bound; a common weight is the bound itself
        tight = RunConfig.from_mapping(SECURE | {"strategy": strategy, "secagg-max-weight": n - 1})
        with pytest.raises(ValueError, match=f"weight {n} exceeds secagg-max-weight = {n - 1}"):
            make_client(tight, node).fit(list(received), {"server-round": 1})
    largest = max(float(np.max(np.abs(a))) for a in trained)
    narrow = RunConfig.from_mapping(
        SECURE | {"strategy": strategy, "local-epochs": 1, "secagg-clipping-range": largest / 2}
    )
    with pytest.raises(ValueError, match="outside secagg-clipping-range"):
        make_client(narrow, node).fit(list(received), {"server-round": 1})
    broken = [a.copy() for a in received]
    broken[0][0, 0] = np.nan
    with pytest.raises(ValueError, match="holds NaN or Inf"):
        client.secure_weight(broken, n)  # type: ignore[attr-defined]


def final_model(run_dir: Path) -> list[np.ndarray]:
    return [t.numpy() for t in torch.load(run_dir / "final_model.pt").values()]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fedavg", "simple"])
def test_secagg_plus_runs_fedavg_and_simple_average_like_the_clear(
    tmp_path: Path, strategy: str
) -> None:
    flags = ["--flower-api", "legacy", "--strategy", strategy, "--num-clients", "5"]
    flags += ["--num-server-rounds", "1", "--local-epochs", "1"]
    flags += ["--dp", "local", "--dp-noise-multiplier", "0.001"]  # part: dp
    flags += ["--dp-clipping-norm", "5"]  # part: dp
    run_simulation_cli(tmp_path, "--run-name", "clear", *flags)
    run_simulation_cli(tmp_path, "--run-name", "secure", *flags, "--secure-aggregation")
    secure = read_history(tmp_path / "secure")["rounds"]
    clear = read_history(tmp_path / "clear")["rounds"]
    # Records of the round, the clients' own counts and releases.
    assert [r["round"] for r in secure] == [0, 1]
    assert [(r["accepted"], r["failures"]) for r in secure[1:]] == [(5, 0)]
    weights = [[json.loads(r["weights"]) for r in run[1:]] for run in (secure, clear)]
    assert weights[0] == weights[1]
    assert [r["epsilon"] for r in secure[1:]] == [r["epsilon"] for r in clear[1:]]  # part: dp
    assert secure[-1]["central_accuracy"] > secure[0]["central_accuracy"] + 0.3
    assert (tmp_path / "secure" / "checkpoint.npz").exists()
    # Quantized masked sums (steps of 16 / 2²² of each weighted value): the model
    # agrees with the clear one to about 1e-5.
    for a, b in zip(final_model(tmp_path / "secure"), final_model(tmp_path / "clear"), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)


@pytest.mark.slow
def test_a_secure_run_whose_clients_all_fail_stops_with_their_reason(tmp_path: Path) -> None:
    flags = ["--flower-api", "legacy", "--secure-aggregation", "--secagg-clipping-range", "0.01"]
    flags += ["--num-clients", "3"]
    flags += ["--num-server-rounds", "2", "--max-empty-rounds", "1", "--run-name", "narrow"]
    done = run_python(["run_simulation.py", "--output-dir", str(tmp_path), *flags])
    assert done.returncode != 0
    error = next(
        line for line in (done.stdout + done.stderr).splitlines() if line.startswith("error:")
    )
    assert "all 3 sampled clients failed" in error
    assert "outside secagg-clipping-range = 0.01" in error
    rounds = read_history(tmp_path / "narrow")["rounds"]
    assert [(r["round"], r.get("failures")) for r in rounds] == [(0, None), (1, 3)]
