"""The optional part ``robust``: the hybrid rule's robust filters (MAD, norm clipping, a
direction and cosine test; :mod:`strategies.robust`), their knobs and config keys.

Expected tensors are worked out by hand (in comments) or with an independent numpy
formula, never copied from a run of the code under test.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from fl_app.kit.config import RunConfig
from fl_app.kit.keys import ConfigError
from fl_app.parts.robust_keys import RobustKeys
from strategies import aggregate
from strategies.core.codec import decode_tensors, encode_tensors
from strategies.core.update import ClientUpdate
from strategies.hybrid import HybridOptions
from strategies.robust import ROBUST_FILTERS, inner, mad_inliers
from tests.fakes import Update, updates_of
from tests.test_config import assert_bounds_refused, assert_one_line_error
from tests.test_strategies import assert_model, reported_weights

# ---- mad_inliers and inner -----------------------------------------------------------


def test_mad_inliers_drops_the_outlier_by_hand():
    # median 1.05; |x − median| = [0.05, 0.05, 0.15, 0, 8.95] -> MAD 0.05;
    # threshold 1.05 + 3·0.05 = 1.2 -> the 10 goes.
    mask = mad_inliers([1.0, 1.1, 0.9, 1.05, 10.0], k=3.0)
    assert mask.dtype == np.bool_
    assert mask.tolist() == [True, True, True, True, False]


def test_mad_inliers_keeps_everything_when_no_outlier():
    assert mad_inliers([2.0, 2.0, 2.0], k=3.0).all()
    assert mad_inliers([1.0, 2.0], k=1.0).all()  # median 1.5, MAD 0.5 -> threshold 2.0
    assert mad_inliers([1.0, 1.1, 0.9, 1.05, 10.0], k=1000.0).all()


def test_mad_inliers_is_one_sided():
    # Small norms are never outliers: median 1, MAD 0 -> only values ≤ 1 stay.
    assert mad_inliers([1.0, 1.0, 1.0, 0.0, 5.0], k=3.0).tolist() == [
        True,
        True,
        True,
        True,
        False,
    ]


@pytest.mark.parametrize("chunk", [None, 3])
def test_inner_by_hand(monkeypatch, chunk):
    if chunk is not None:
        monkeypatch.setattr(aggregate, "CHUNK_ELEMENTS", chunk)
    # ⟨([3, 1, 2, 0], [[4]]) − ([1, 1, 1, 1], [[1]]), ([1, 0, 2, 5], [[-1]])⟩
    #   = ⟨([2, 0, 1, −1], [[3]]), ...⟩ = 2 + 0 + 2 − 5 − 3 = −4
    theta = [np.array([3.0, 1.0, 2.0, 0.0]), np.array([[4.0]])]
    reference = [np.ones(4), np.ones((1, 1))]
    direction = [np.array([1.0, 0.0, 2.0, 5.0], dtype=np.float32), np.array([[-1.0]])]
    assert inner(theta, reference, direction) == pytest.approx(-4.0, rel=1e-15)


def test_the_inner_product_of_finite_float32_updates_does_not_overflow() -> None:
    attack = [np.full(s, 1e30, dtype=np.float32) for s in [(3, 2), (2,)]]
    origin = [np.zeros_like(a) for a in attack]
    exact = float(np.sqrt(sum(np.sum(a.astype(np.float64) ** 2) for a in attack)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert inner(attack, origin, attack) == pytest.approx(exact**2, rel=1e-12)


# ---- the filters in the hybrid rule, on each Flower API half ---------------------------


def _filter_round(rng, global_model):
    """Five honest updates of norms about 1 and one of norm 1000.

    Norms [1, 1.1, 0.9, 1.05, 0.95, 1000]: median 1.025, deviations
    [0.025, 0.075, 0.125, 0.025, 0.075, 998.975] -> MAD 0.075; with k = 3 the threshold
    is 1.025 + 0.225 = 1.25, so exactly the last update goes.
    """
    models = []
    for norm in (1.0, 1.1, 0.9, 1.05, 0.95, 1000.0):
        direction = [rng.normal(size=g.shape) for g in global_model]
        length = np.sqrt(sum(np.sum(d**2) for d in direction))
        models.append([g + norm * d / length for g, d in zip(global_model, direction, strict=True)])
    return models, [10, 20, 30, 40, 50, 60]


def test_hybrid_mad_filter_drops_a_scaled_update(half):
    rng = np.random.default_rng(11)
    global_model = [rng.normal(size=(3, 4)), rng.normal(size=4)]
    models, counts = _filter_round(rng, global_model)
    strategy = half.make("hybrid", global_model, hybrid_lambda=1.0, robust_filter="mad")
    out, metrics = half.aggregate(strategy, updates_of(models, counts))
    assert metrics["filtered"] == 1
    assert metrics["accepted"] == 6  # valid, but filtered out
    # FedAvg over the five honest updates, by the textbook formula.
    honest_counts = counts[:5]
    want = [
        sum(n * m[j] for m, n in zip(models[:5], honest_counts, strict=True)) / sum(honest_counts)
        for j in range(2)
    ]
    assert_model(out, want)
    weights = reported_weights(metrics)
    assert weights["6"] == 0.0
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-5)

    # Without the filter the attacker drags the model far away.
    unfiltered, _ = half.aggregate(
        half.make("hybrid", global_model, hybrid_lambda=1.0), updates_of(models, counts)
    )
    assert unfiltered is not None
    assert np.abs(unfiltered[0] - want[0]).max() > 10


def _sign_flip_round(rng, global_model, attackers=(2, 6)):
    """Eight updates around one direction, non-IID-like (each its own noise of about the
    same norm as the shared part), two of them sign-flipped: ``θ_g − Δ_i``.

    Norms [1, 1.1, 0.9, 1.05, 0.95, 1, 1.02, 0.98]: median 1, MAD 0.035, so the mad
    threshold (k = 3) is 1.105 and the norm filter keeps every update.
    """
    shared = [rng.normal(size=g.shape) for g in global_model]
    models = []
    for i, size in enumerate((1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 1.02, 0.98)):
        delta = [s + rng.normal(size=s.shape) for s in shared]
        length = np.sqrt(sum(np.sum(d**2) for d in delta))
        sign = -1.0 if i in attackers else 1.0
        models.append(
            [g + sign * size * d / length for g, d in zip(global_model, delta, strict=True)]
        )
    return models, [40, 10, 30, 20, 50, 25, 35, 15]


def test_hybrid_direction_filter_drops_exactly_the_sign_flipped_updates(half):
    rng = np.random.default_rng(3)
    global_model = [rng.normal(size=(6, 5)), rng.normal(size=5)]
    models, counts = _sign_flip_round(rng, global_model)
    # The flipped updates keep their norms: the norm filter keeps them all.
    _, by_norm = half.aggregate(
        half.make("hybrid", global_model, hybrid_lambda=1.0, robust_filter="mad"),
        updates_of(models, counts),
    )
    assert by_norm["filtered"] == 0
    strategy = half.make("hybrid", global_model, hybrid_lambda=1.0, robust_filter="direction")
    out, metrics = half.aggregate(strategy, updates_of(models, counts))
    assert metrics["filtered"] == 2
    weights = reported_weights(metrics)
    assert {c for c, w in weights.items() if w == 0.0} == {"3", "7"}
    # FedAvg of the six honest updates, by the textbook formula.
    honest = [i for i in range(8) if i not in (2, 6)]
    total = sum(counts[i] for i in honest)
    want = [sum(counts[i] * models[i][j] for i in honest) / total for j in range(2)]
    assert_model(out, want, rtol=1e-10)


def test_hybrid_direction_filter_drops_norms_above_ratio_times_the_median(half):
    rng = np.random.default_rng(3)
    global_model = [rng.normal(size=(6, 5)), rng.normal(size=5)]
    models, counts = _sign_flip_round(rng, global_model, attackers=())
    # Norms [1, 1.1, 0.9, 1.05, 0.95, 1, 1.02, 0.98]: the second scaled to 3.3 and the
    # fifth to 2.85, against the median (about 1.01) × 3.
    models[1] = [g + 3 * (m - g) for g, m in zip(global_model, models[1], strict=True)]
    models[4] = [g + 3 * (m - g) for g, m in zip(global_model, models[4], strict=True)]
    strategy = half.make("hybrid", global_model, hybrid_lambda=1.0, robust_filter="direction")
    _, metrics = half.aggregate(strategy, updates_of(models, counts))
    assert {c for c, w in reported_weights(metrics).items() if w == 0.0} == {"2"}


def test_hybrid_direction_filter_cosines_match_numpy(half):
    rng = np.random.default_rng(4)
    global_model = [rng.normal(size=(6, 5)), rng.normal(size=5)]
    models, counts = _sign_flip_round(rng, global_model)
    models[0] = [g + 30 * (m - g) for g, m in zip(global_model, models[0], strict=True)]
    strategy = half.make("hybrid", global_model, hybrid_lambda=1.0, robust_filter="direction")
    rule = strategy.rule
    updates, _ = rule._validate(1, strategies_core_updates(models, counts))
    norms = [u.distance for u in updates]
    got = rule.cosines(updates, aggregate.clip_factors(norms, float(np.median(norms))))
    # r = (1/K) Σ min(1, m/‖Δ_i‖) Δ_i with m the median norm, in plain numpy.
    deltas = [
        np.concatenate(
            [(a - g).ravel() for a, g in zip(decode_tensors(u.tensors), global_model, strict=True)]
        )
        for u in updates
    ]
    sizes = np.array([np.linalg.norm(d) for d in deltas])
    r = sum(min(1.0, np.median(sizes) / s) * d for s, d in zip(sizes, deltas, strict=True)) / len(
        deltas
    )
    want = [d @ r / (np.linalg.norm(d) * np.linalg.norm(r)) for d in deltas]
    np.testing.assert_allclose(got, want, rtol=1e-9)


def strategies_core_updates(models, counts):
    return [
        ClientUpdate(f"{i + 1}", encode_tensors([a.copy() for a in m]), n, {})
        for i, (m, n) in enumerate(zip(models, counts, strict=True))
    ]


@pytest.mark.parametrize("lam", [1.0, 0.5])
@pytest.mark.parametrize("clip", [0.5, 3.0, 0.0])
def test_hybrid_clip_filter_matches_numpy_reference(half, lam, clip):
    rng = np.random.default_rng(5)
    global_model = [rng.normal(size=(3, 4)), rng.normal(size=4)]
    models = [[g + rng.normal(scale=s, size=g.shape) for g in global_model] for s in (0.1, 1, 5)]
    counts = [10, 30, 60]
    accuracies = [0.9, 0.5, 0.7]
    metrics_in = [{"val_accuracy": q} for q in accuracies]
    strategy = half.make(
        "hybrid", global_model, hybrid_lambda=lam, robust_filter="clip", robust_clip_norm=clip
    )
    out, metrics = half.aggregate(strategy, updates_of(models, counts, metrics_in))

    deltas = [[m - g for m, g in zip(model, global_model, strict=True)] for model in models]
    norms = np.array([np.sqrt(sum(np.sum(d**2) for d in delta)) for delta in deltas])
    bound = clip if clip > 0 else np.median(norms)
    factors = np.minimum(1.0, bound / norms)
    data = np.array(counts) / sum(counts)
    quality = np.exp(np.array(accuracies) / 0.1)  # default softmax, τ = 0.1
    quality /= quality.sum()
    weights = lam * data + (1 - lam) * quality
    want = [
        global_model[j]
        + sum(w * f * d[j] for w, f, d in zip(weights, factors, deltas, strict=True))
        for j in range(2)
    ]
    assert_model(out, want, rtol=1e-10)
    assert metrics["clipped"] == int(np.sum(factors < 1.0))
    assert metrics["clipped"] >= 1
    assert metrics["filtered"] == 0
    assert reported_weights(metrics) == pytest.approx(
        {f"{i + 1}": float(w) for i, w in enumerate(weights)}, abs=1e-6
    )


def test_a_norm_beyond_float64_is_rejected_with_its_reason(half: Any) -> None:
    huge = [np.full(4, 1.5e308)]  # finite, but ‖Δ‖ = 3e308
    strategy = half.make("hybrid", [np.zeros(4)], robust_filter="mad")
    quality = {"val_accuracy": 0.9}
    updates = [
        Update(huge, 10, quality),
        *(Update([np.full(4, 0.1 * i)], 10, quality) for i in (1, 2)),
    ]
    out, metrics = half.aggregate(strategy, updates)
    assert (metrics["accepted"], metrics["rejected"]) == (2, 1)
    assert out is not None
    np.testing.assert_allclose(out[0], 0.15)


# ---- the knobs and the config keys ------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"robust_filter": "x"}, "robust_filter"),
        ({"robust_filter": "median"}, "robust_filter"),
        ({"robust_mad_k": 0.0}, "robust_mad_k"),
        ({"robust_clip_norm": -1.0}, "robust_clip_norm"),
        ({"robust_min_cosine": 1.0}, "robust_min_cosine"),
        ({"robust_norm_ratio": 1.0}, "robust_norm_ratio"),
    ],
)
def test_bad_filter_knobs_name_the_parameter(
    half: Any, kwargs: dict[str, Any], parameter: str
) -> None:
    with pytest.raises(ValueError, match=parameter):
        half.make("hybrid", **kwargs)
    with pytest.raises(ValueError, match=parameter):
        HybridOptions(**kwargs)


def test_good_filter_knobs_are_accepted(half: Any) -> None:
    half.make("hybrid", hybrid_lambda=0.0, robust_filter="clip", robust_clip_norm=0.0)
    half.make("hybrid", hybrid_lambda=1.0, robust_filter="mad")
    assert RunConfig.from_mapping({"robust-clip-norm": 0.0}).run_config["robust-clip-norm"] == 0.0


def test_every_bounded_filter_key_is_refused_out_of_range() -> None:
    rows = [
        ("robust-mad-k", 0.0, "> 0"),
        ("robust-clip-norm", -1.0, ">= 0"),
        ("robust-norm-ratio", 1.0, "> 1"),
        ("robust-min-cosine", -1.5, ">= -1"),
        ("robust-min-cosine", 1.0, "< 1"),
    ]
    assert_bounds_refused(RobustKeys, rows)


@pytest.mark.parametrize("bad", ["median", ""])
def test_the_filter_choices_are_the_rules_own(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({"robust-filter": bad})
    message = assert_one_line_error(info.value, "robust-filter", bad)
    assert all(choice in message for choice in ROBUST_FILTERS)
    for choice in ROBUST_FILTERS:
        assert (
            RunConfig.from_mapping({"robust-filter": choice}).run_config["robust-filter"] == choice
        )
