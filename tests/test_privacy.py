"""Differential privacy: central clipping and noise calibrated to the largest weight,
local DP, sample-level DP-SGD, and the ε each reports.

ε is checked against Opacus's RDP accountant, an implementation the project does not
use; the aggregate against the formula in plain numpy.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting.rdp import RdpAccountant
from opacus.accountants import RDPAccountant
from opacus.data_loader import DPDataLoader

import run_simulation
import strategies
from fl_app.client_app import make_client
from fl_app.kit.config import RunConfig
from fl_app.kit.keys import ConfigError
from fl_app.kit.seeds import rng_for
from fl_app.parts.privacy import DpKeys
from strategies import aggregate
from strategies.accounting import dp_sgd_schedule, epsilon, sample_epsilon
from strategies.core.codec import decode_tensors
from strategies.core.rule import Rule
from strategies.core.state import StrategyState
from strategies.core.update import Coefficients, NothingAggregatedError
from strategies.privacy import (
    DP_CLIPPINGS,
    DP_MODES,
    privatize_update,
    update_noise_multiplier,
)
from tests.fakes import updates_of
from tests.processes import read_history, run_simulation_cli
from tests.test_config import assert_bounds_refused, assert_one_line_error

GLOBAL = [np.zeros((50, 40), dtype=np.float64), np.zeros(40, dtype=np.float64)]


def a_round(seed: int = 0) -> tuple[list[list[np.ndarray]], list[int]]:
    """Four updates of norms about 2, 6, 20, 0.5 and unequal sizes."""
    rng = np.random.default_rng(seed)
    models = []
    for size in (2.0, 6.0, 20.0, 0.5):
        delta = [rng.normal(size=g.shape) for g in GLOBAL]
        length = np.sqrt(sum(np.sum(d**2) for d in delta))
        models.append([g + size * d / length for g, d in zip(GLOBAL, delta, strict=True)])
    return models, [10, 40, 20, 30]


def private(half: Any, name: str = "fedavg", **knobs: Any) -> Any:
    options = {"dp": "central", "dp_clipping_norm": 3.0, "dp_noise_multiplier": 0.0}
    return half.make(name, GLOBAL, **(options | knobs))


def aggregated(
    half: Any,
    strategy: Any,
    models: Sequence[Sequence[np.ndarray]],
    counts: list[int],
    metrics_in: list[dict[str, Any]] | None = None,
):
    out, metrics = half.aggregate(strategy, updates_of(models, counts, metrics_in))
    assert out is not None
    return out, metrics


def test_each_update_is_clipped_to_the_norm_then_weighted_by_the_rule(half: Any) -> None:
    models, counts = a_round()
    got, metrics = aggregated(
        half,
        private(
            half,
        ),
        models,
        counts,
    )
    # θ_g + Σ (n_i/Σn) · min(1, C/‖Δ_i‖) Δ_i, C = 3: the updates of norms 6 and 20 are cut.
    weights = np.array(counts) / sum(counts)
    norms = [
        np.sqrt(sum(np.sum((a - g) ** 2) for a, g in zip(m, GLOBAL, strict=True))) for m in models
    ]
    want = [
        g
        + sum(
            w * min(1.0, 3.0 / n) * (m[j] - g)
            for w, n, m in zip(weights, norms, models, strict=True)
        )
        for j, g in enumerate(GLOBAL)
    ]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert metrics["dp_clipped"] == 2
    assert metrics["dp_noise_std"] == 0.0


@pytest.mark.parametrize("name", sorted(strategies.REGISTRY))
def test_one_clients_influence_is_at_most_the_clipping_norm_times_its_weight(
    half: Any, name: str
) -> None:
    models, counts = a_round()
    metrics_in = [{"val_accuracy": q} for q in (0.9, 0.5, 0.7, 0.8)]
    with_it, metrics = aggregated(half, private(half, name), models, counts, metrics_in)
    weights = json.loads(metrics["weights"])
    for k in range(len(models)):
        changed = [list(m) for m in models]
        changed[k] = [g.copy() for g in GLOBAL]  # client k sends no change at all
        after, _ = half.aggregate(private(half, name), updates_of(changed, counts, metrics_in))
        assert after is not None
        moved = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(with_it, after, strict=True)))
        assert moved <= 3.0 * (weights[f"{k + 1}"] + 1e-6)  # weights are reported to 6 places


def test_the_noise_is_z_times_c_times_the_largest_weight_and_seeded(half: Any) -> None:
    models, counts = a_round()
    clean, _ = aggregated(
        half,
        private(
            half,
        ),
        models,
        counts,
    )
    noisy, metrics = aggregated(
        half, private(half, dp_noise_multiplier=2.0, seed=5), models, counts
    )
    again, _ = aggregated(half, private(half, dp_noise_multiplier=2.0, seed=5), models, counts)
    std = 2.0 * 3.0 * max(counts) / sum(counts)  # z · C · max w_i
    assert metrics["dp_noise_std"] == pytest.approx(std)
    noise = np.concatenate([(a - b).ravel() for a, b in zip(noisy, clean, strict=True)])
    assert noise.std() == pytest.approx(std, rel=0.05)  # 2,040 coordinates
    assert abs(noise.mean()) < 4 * std / np.sqrt(noise.size)
    for a, b in zip(noisy, again, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("noise", "rounds"), [(1.0, 10), (0.6, 3), (4.0, 100)])
def test_epsilon_with_every_client_each_round_equals_opacus(noise: float, rounds: int) -> None:
    # Replace-one: the clipped sum moves by up to 2C, so the accountant sees z/2.
    opacus = RDPAccountant()
    opacus.history = [(noise / 2, 1.0, rounds)]
    want = opacus.get_epsilon(1e-5)
    assert epsilon([(8, 8)] * rounds, noise, 1e-5) == pytest.approx(want, rel=1e-9)


def test_sampling_fewer_clients_spends_less_and_every_round_spends_more() -> None:
    spent = [epsilon([(10, 100)] * t, 1.0, 1e-5) for t in range(1, 6)]
    assert spent == sorted(set(spent))
    assert spent[-1] < epsilon([(100, 100)] * 5, 1.0, 1e-5)
    assert epsilon([], 1.0, 1e-5) == 0.0
    assert epsilon([(3, 3)], 0.0, 1e-5) == float("inf")


def test_a_failing_client_does_not_stop_the_round_and_state_keeps_the_accountant(half: Any) -> None:
    models, counts = a_round()
    knobs: dict[str, Any] = {"dp_noise_multiplier": 1.0, "seed": 1}
    knobs["server_momentum"] = 0.9  # part: server-optimizer
    strategy = private(half, **knobs)
    updates = updates_of(models, counts)
    out, metrics = half.aggregate(strategy, updates[:3], [RuntimeError("crashed")])
    assert out is not None
    assert (metrics["accepted"], metrics["failures"]) == (3, 1)
    # The accountant's rounds travel through a checkpoint with the rest of the state.
    state = StrategyState.from_arrays(strategy.get_state().to_arrays())
    assert state.private_rounds == [(4, 4)]
    assert state.velocity is not None  # part: server-optimizer
    assert metrics["epsilon"] == epsilon([(4, 4)], 1.0, 1e-5)


def test_a_local_dp_client_sends_its_clipped_update_plus_noise() -> None:
    rng = np.random.default_rng(2)
    received = [rng.normal(size=(300, 20)).astype(np.float32), np.arange(3, dtype=np.int64)]
    trained = [received[0] + 0.5, received[1] + 1]  # ‖Δ‖ = √(0.25 · 6000 + 3)
    sent = privatize_update(received, trained, 2.0, 0.0, np.random.default_rng(0))
    # Without noise: Δ scaled to norm C = 2; the integer layer goes as trained.
    np.testing.assert_allclose(sent[0] - received[0], 0.5 * 2.0 / np.sqrt(1503), rtol=1e-4)
    np.testing.assert_array_equal(sent[1], trained[1])
    assert sent[0].dtype == np.float32
    noisy = privatize_update(received, trained, 2.0, 0.5, np.random.default_rng(0))
    noise = (noisy[0] - sent[0]).astype(np.float64)
    assert noise.std() == pytest.approx(0.5 * 2.0, rel=0.03)  # z · C, 6,000 coordinates


def test_the_client_privatizes_what_it_trained_under_dp_local() -> None:
    cfg = RunConfig(local_epochs=1, device="cpu", dp="local", dp_noise_multiplier=0.3)
    node = {"partition-id": 2, "num-partitions": 4}
    honest = make_client(RunConfig(local_epochs=1, device="cpu"), node)
    received = [a.copy() for a in honest.get_parameters({})]
    trained, n, _ = honest.fit([a.copy() for a in received], {"server-round": 3})
    sent, n_sent, _ = make_client(cfg, node).fit([a.copy() for a in received], {"server-round": 3})
    want = privatize_update(received, trained, 1.0, 0.3, rng_for(cfg.seed, "local-dp", 3, 2))
    assert n_sent == n
    for a, b in zip(sent, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_local_dp_accounts_the_client_that_sent_most(half: Any) -> None:
    models, counts = a_round()
    strategy = private(half, dp="local", dp_noise_multiplier=1.5)
    updates = updates_of(models, counts)
    _, first = half.aggregate(strategy, updates, server_round=1)
    _, second = half.aggregate(strategy, updates[:2], server_round=2)
    assert first["epsilon"] == epsilon([(1, 1)], 1.5, 1e-5)
    assert second["epsilon"] == epsilon([(1, 1)] * 2, 1.5, 1e-5)
    state = StrategyState.from_arrays(strategy.get_state().to_arrays())
    assert sorted(state.releases) == sorted(
        [(c, 1.0, 1) for c in ("1", "2", "3", "4")] + [(c, 1.0, 1) for c in ("1", "2")]
    )
    assert "dp_noise_std" not in second  # the server adds nothing


@pytest.mark.parametrize(
    ("noise", "rate", "steps", "rounds"), [(1.0, 0.05, 100, 5), (2.0, 0.01, 30, 1)]
)
def test_dp_sgd_epsilon_equals_dp_accountings_poisson_sampled_gaussian(
    noise: float, rate: float, steps: int, rounds: int
) -> None:
    # Google's accountant, the same orders; the two convert RDP to (ε, δ) slightly apart.
    independent = RdpAccountant(
        orders=RDPAccountant.DEFAULT_ALPHAS,
        neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
    )
    sampled = dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise))
    independent.compose(sampled, steps * rounds)
    got = sample_epsilon([(rate, steps)] * rounds, noise, 1e-5)
    assert got == pytest.approx(independent.get_epsilon(1e-5), rel=1e-3)
    assert sample_epsilon([(rate, steps)] * (rounds + 1), noise, 1e-5) > got


def test_dp_sgd_refuses_fedproxs_term() -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig(dp="dp-sgd", proximal_mu=0.1)
    assert_one_line_error(info.value, "proximal-mu", 0.1)
    assert "Opacus" in str(info.value)


def test_the_dp_sgd_schedule_is_opacus_poisson_loader() -> None:
    for n, batch in ((115, 16), (64, 16), (5, 32), (93 * 16, 16), (117 * 4, 4)):
        data = torch.utils.data.TensorDataset(torch.zeros(n, 2))
        loader = DPDataLoader.from_data_loader(torch.utils.data.DataLoader(data, batch_size=batch))
        assert dp_sgd_schedule(n, batch, 3) == (loader.sample_rate, 3 * len(loader))


def test_a_dp_sgd_client_trains_privately_and_reports_its_schedule() -> None:
    node = {"partition-id": 1, "num-partitions": 4}
    cfg = RunConfig(local_epochs=2, device="cpu", dp="dp-sgd", dp_noise_multiplier=0.7)
    received = make_client(cfg, node).get_parameters({})
    runs = [make_client(c, node).fit(list(received), {"server-round": 2}) for c in (cfg, cfg)]
    plain, n, _ = make_client(RunConfig(local_epochs=2, device="cpu"), node).fit(
        list(received), {"server-round": 2}
    )
    (sent, n_sent, metrics), (again, _, _) = runs
    assert n_sent == n
    rate, steps = dp_sgd_schedule(n, cfg.batch_size, 2)
    assert (metrics["dp_sample_rate"], metrics["dp_steps"]) == (rate, steps)
    for a, b in zip(sent, again, strict=True):
        np.testing.assert_array_equal(a, b)  # seeded: the same batches and noise
    assert not all(np.array_equal(a, c) for a, c in zip(sent, plain, strict=True))


def test_dp_sgd_accounts_each_clients_rounds_and_rejects_updates_without_a_schedule(
    half: Any,
) -> None:
    models, counts = a_round()
    strategy = private(half, dp="dp-sgd", dp_noise_multiplier=1.2)
    schedules = [(0.1, 30), (0.05, 60), (0.1, 30), None]
    metrics_in = [
        {} if s is None else dict(zip(("dp_sample_rate", "dp_steps"), s, strict=True))
        for s in schedules
    ]
    updates = updates_of(models, counts, metrics_in)
    _, first = half.aggregate(strategy, updates, server_round=1)
    assert (first["accepted"], first["rejected"]) == (3, 1)
    _, second = half.aggregate(strategy, updates[1:2], server_round=2)  # only client 2 again
    # Worst client: 1 or 3 once at q = 0.1, or 2 twice at q = 0.05.
    once = sample_epsilon([(0.1, 30)], 1.2, 1e-5)
    assert first["epsilon"] == once
    assert second["epsilon"] == max(once, sample_epsilon([(0.05, 60)] * 2, 1.2, 1e-5))
    state = StrategyState.from_arrays(strategy.get_state().to_arrays())
    assert sorted(state.releases) == [
        ("1", 0.1, 30),
        ("2", 0.05, 60),
        ("2", 0.05, 60),
        ("3", 0.1, 30),
    ]


@pytest.mark.parametrize(("noise", "count_stddev"), [(1.0, 0.8), (4.0, 5.0), (0.3, 0.5)])
def test_the_update_and_the_noisy_count_together_spend_what_z_alone_spends(
    noise: float, count_stddev: float
) -> None:
    z_update = update_noise_multiplier(noise, count_stddev)
    assert z_update > noise  # the update gets more noise than z: the count took a share

    def spent(*events: dp_accounting.DpEvent) -> float:
        accountant = RdpAccountant()  # Google's: composes the two releases itself
        for event in events:
            accountant.compose(event, 5)
        return float(accountant.get_epsilon(1e-5))

    # Replace-one: the update moves by 2C·max w (multiplier z/2), the count by 1.
    both = spent(
        dp_accounting.GaussianDpEvent(z_update / 2), dp_accounting.GaussianDpEvent(count_stddev)
    )
    assert both == pytest.approx(spent(dp_accounting.GaussianDpEvent(noise / 2)), rel=1e-6)
    with pytest.raises(ValueError, match=r"needs dp_clipped_count_stddev > 0.5"):
        update_noise_multiplier(1.0, 0.5)


def test_adaptive_clipping_moves_the_norm_to_the_target_quantile(half: Any) -> None:
    models, counts = a_round()  # update norms 2, 6, 20, 0.5
    knobs = {"dp_clipping": "adaptive", "dp_noise_multiplier": 0.01}
    strategy = private(half, dp_clipped_count_stddev=0.01, seed=4, **knobs)
    updates = updates_of(models, counts)
    _, first = half.aggregate(strategy, updates)
    # C = 3 leaves 2 of 4 unclipped; the count's noise is tiny.
    share = first["dp_unclipped_share"]
    assert share == pytest.approx(0.5, abs=0.05)
    assert strategy.rule.clipping_norm == 3.0 * np.exp(-0.2 * (share - 0.5))
    z_update = update_noise_multiplier(0.01, 0.01)
    assert first["dp_noise_std"] == pytest.approx(z_update * 3.0 * max(counts) / sum(counts))
    assert first["dp_clipping_norm"] == 3.0
    # The norm survives a checkpoint, and from far away it walks into the median's gap.
    state = StrategyState.from_arrays(strategy.get_state().to_arrays())
    assert state.clipping_norm == strategy.rule.clipping_norm
    far = private(half, dp_clipping_norm=100.0, dp_clipped_count_stddev=0.01, **knobs)
    norms = []
    for server_round in range(1, 61):
        half.aggregate(far, updates, server_round=server_round)
        norms.append(far.rule.clipping_norm)
    assert norms[0] < 100.0
    assert 2.0 <= norms[-1] <= 6.0


def test_adaptive_clipping_is_refused_outside_central_dp_and_with_too_little_count_noise(
    half: Any,
) -> None:
    with pytest.raises(ConfigError, match=r"'dp-clipping' = 'adaptive'.*fixed with dp = 'local'"):
        RunConfig(dp="local", dp_clipping="adaptive")
    with pytest.raises(
        ConfigError, match=r"'dp-clipped-count-stddev' = 0.5.*> dp-noise-multiplier"
    ):
        RunConfig(dp="central", dp_clipping="adaptive", dp_clipped_count_stddev=0.5)
    with pytest.raises(ValueError, match="dp_clipping='adaptive' needs dp='central'"):
        strategies.build("fedavg", dp="dp-sgd", dp_clipping="adaptive")
    # The default σ_b = m/20 depends on the clients a round samples: a deployment learns
    # it at the round, and stops there with the reason; run_simulation knows it at start.
    models, counts = a_round()
    strategy = private(half, dp_clipping="adaptive", dp_noise_multiplier=1.0)
    with pytest.raises(NothingAggregatedError, match=r"needs dp_clipped_count_stddev > 0\.5"):
        half.aggregate(strategy, updates_of(models, counts))
    flags = ["--dp", "central", "--dp-clipping", "adaptive", "--dp-noise-multiplier", "0.9"]
    with pytest.raises(ConfigError, match=r"must be < 0.5 .*m/20 = 0.25 for the 5 clients"):
        run_simulation.parse([*flags, "--num-clients", "10", "--fraction-fit", "0.5"])
    assert run_simulation.parse([*flags, "--num-clients", "20"]).cfg.dp_clipping == "adaptive"


def test_a_checkpoint_of_local_dp_counts_from_before_dp_sgd_still_resumes() -> None:
    old = {"releases": [np.array(["c0", "c1"]), np.array([2, 1], dtype=np.int64)]}
    state = StrategyState.from_arrays(old)
    assert state.releases == [("c0", 1.0, 1), ("c0", 1.0, 1), ("c1", 1.0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "small", "large"),
    [("central", 0.05, 50), ("local", 0.01, 1), ("dp-sgd", 0.1, 10)],
)
def test_dp_learns_at_small_noise_and_not_at_large(
    tmp_path: Path, mode: str, small: float, large: float
) -> None:
    flags = ["--dp", mode, "--dp-clipping-norm", "5", "--num-server-rounds", "4"]
    flags += ["--backend", "inprocess"]  # Ray's results, without a Ray start per run
    if mode == "central":  # adaptive clipping (fixed clipping: tests/test_checkpoint.py)
        flags += ["--dp-clipping", "adaptive", "--dp-clipped-count-stddev", "30"]
    final = {}
    for noise in (small, large):
        name = str(noise)
        run_simulation_cli(tmp_path, "--run-name", name, *flags, "--dp-noise-multiplier", name)
        rounds = read_history(tmp_path / name)["rounds"]
        epsilons = [r["epsilon"] for r in rounds[1:]]
        assert epsilons == sorted(set(epsilons))  # grows every round
        if mode == "central":  # the clipping norm followed the update norms
            assert len({r["dp_clipping_norm"] for r in rounds[1:]}) == 4
        final[noise] = rounds[-1]["central_accuracy"]
    assert final[small] > 0.8
    assert final[large] < 0.5


# ---- config keys ------------------------------------------------------------------


def test_every_bounded_dp_key_is_refused_out_of_range() -> None:
    rows = [
        ("dp-noise-multiplier", -0.1, ">= 0"),
        ("dp-clipping-norm", 0.0, "> 0"),
        ("dp-delta", 0.0, "> 0"),
        ("dp-delta", 1.0, "< 1"),
        ("dp-target-quantile", -0.1, ">= 0"),
        ("dp-target-quantile", 1.1, "<= 1"),
        ("dp-clip-learning-rate", 0.0, "> 0"),
        ("dp-clipped-count-stddev", -1.0, ">= 0"),
    ]
    assert_bounds_refused(DpKeys, rows)


@pytest.mark.parametrize(
    ("key", "choices", "bad"),
    [("dp", DP_MODES, "local-ish"), ("dp-clipping", DP_CLIPPINGS, "quantile")],
)
def test_the_dp_choices_are_the_rules_own(key: str, choices: tuple[str, ...], bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({key: bad})
    message = assert_one_line_error(info.value, key, bad)
    assert all(choice in message for choice in choices)
    for choice in choices:
        extra = {"dp": "central", "dp-noise-multiplier": 0.5} if choice == "adaptive" else {}
        assert RunConfig.from_mapping({key: choice, **extra}).run_config[key] == choice


def test_local_dp_clips_a_1e30_update_to_the_clipping_norm() -> None:
    attack = [np.full((50, 40), 1e30, dtype=np.float32), np.full(40, 1e30, dtype=np.float32)]
    start = [np.zeros_like(a) for a in attack]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        sent = privatize_update(start, attack, 0.5, 0.0, np.random.default_rng(0))
    assert aggregate.distance(sent, start) == pytest.approx(0.5, rel=1e-5)


def test_central_dp_is_refused_for_a_rule_that_combines_updates_its_own_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Median(Rule):
        def coefficients(self, server_round: int, updates: list[Any]) -> Coefficients:
            return Coefficients(np.full(len(updates), 1 / len(updates)))

        def combine(self, folded: Any, global_share: float, template: Any) -> list[Any]:
            return [np.median([decode_tensors(u.tensors)[0] for u, _ in folded], axis=0)]

    monkeypatch.setitem(strategies.CHOICES, "median", Median)
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({"strategy": "median", "dp": "central"})
    assert "combines the updates its own way" in assert_one_line_error(info.value, "dp", "central")
    assert RunConfig.from_mapping({"strategy": "median", "dp": "local"}).dp == "local"
