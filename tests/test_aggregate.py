"""Unit and property tests of ``strategies/aggregate.py`` (numpy only, no Flower).

Every expected value is worked out by hand in a comment or computed with an
independent numpy formula; none is copied from a run of the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from strategies import aggregate
from strategies.aggregate import (
    all_finite,
    clip_factors,
    distance,
    example_weights,
    mismatch,
    mix_weights,
    norm,
    quality_weights,
    uniform_weights,
    weighted_sum,
)

PROPERTY_SETTINGS = settings(max_examples=50, deadline=None)


def _reference_sum(models, coefficients):
    """Σ c_i θ_i layer by layer in float64, the plain numpy way."""
    return [
        sum(
            c * np.asarray(model[j], dtype=np.float64)
            for model, c in zip(models, coefficients, strict=True)
        )
        for j in range(len(models[0]))
    ]


# ---- weighted_sum -------------------------------------------------------------------


def test_weighted_sum_two_clients_by_hand():
    # 0.25·[1, 2] + 0.75·[3, 6] = [0.25 + 2.25, 0.5 + 4.5] = [2.5, 5.0]
    # 0.25·[[0, 4]] + 0.75·[[4, 0]] = [[3, 1]]
    first = [np.array([1.0, 2.0]), np.array([[0.0, 4.0]])]
    second = [np.array([3.0, 6.0]), np.array([[4.0, 0.0]])]
    out = weighted_sum([(first, 0.25), (second, 0.75)], template=first)
    np.testing.assert_allclose(out[0], [2.5, 5.0], rtol=1e-15)
    np.testing.assert_allclose(out[1], [[3.0, 1.0]], rtol=1e-15)
    assert out[1].shape == (1, 2)


def test_weighted_sum_three_clients_uniform_by_hand():
    # (1/3)·([3, 0] + [0, 3] + [3, 3]) = [2, 2]
    models = [[np.array([3.0, 0.0])], [np.array([0.0, 3.0])], [np.array([3.0, 3.0])]]
    out = weighted_sum([(m, 1 / 3) for m in models], template=models[0])
    np.testing.assert_allclose(out[0], [2.0, 2.0], rtol=1e-12)


def test_weighted_sum_keeps_float32_dtype_and_values():
    # 0.5·[1, 2] + 0.5·[3, 4] = [2, 3], exactly representable in float32
    a = [np.array([1.0, 2.0], dtype=np.float32)]
    b = [np.array([3.0, 4.0], dtype=np.float32)]
    out = weighted_sum([(a, 0.5), (b, 0.5)], template=a)
    assert out[0].dtype == np.float32
    np.testing.assert_array_equal(out[0], np.array([2.0, 3.0], dtype=np.float32))


def test_weighted_sum_does_not_modify_read_only_inputs():
    a = [np.array([1.0, 2.0])]
    b = [np.array([3.0, 6.0])]
    for arrays in (a, b):
        arrays[0].setflags(write=False)
    weighted_sum([(a, 0.25), (b, 0.75)], template=a)
    np.testing.assert_array_equal(a[0], [1.0, 2.0])
    np.testing.assert_array_equal(b[0], [3.0, 6.0])


def test_weighted_sum_without_updates_is_zero_of_template_layout():
    template = [np.ones((2, 3), dtype=np.float32), np.ones(4, dtype=np.int64)]
    out = weighted_sum([], template=template)
    assert [o.shape for o in out] == [(2, 3), (4,)]
    assert [o.dtype for o in out] == [np.float32, np.int64]
    assert all(not o.any() for o in out)


def test_weighted_sum_chunking_small_hand_example(monkeypatch):
    monkeypatch.setattr(aggregate, "CHUNK_ELEMENTS", 3)
    # 7 elements = chunks of 3, 3, 1; 0.5·x + 0.5·x = x
    x = [np.arange(7, dtype=np.float64)]
    out = weighted_sum([(x, 0.5), (x, 0.5)], template=x)
    np.testing.assert_array_equal(out[0], np.arange(7, dtype=np.float64))


@pytest.mark.parametrize("chunk", [1, 3, 4, 64])
def test_weighted_sum_chunked_matches_direct_numpy(monkeypatch, chunk):
    monkeypatch.setattr(aggregate, "CHUNK_ELEMENTS", chunk)
    rng = np.random.default_rng(chunk)
    # Layer sizes 10 (not a multiple of 3 or 4), 1 and 12 exercise partial last chunks
    # and a scratch buffer reused across layers of different sizes.
    shapes = [(10,), (1,), (3, 4)]
    models = [[rng.normal(size=s) for s in shapes] for _ in range(4)]
    coefficients = [0.1, 0.2, 0.3, 0.4]
    out = weighted_sum(list(zip(models, coefficients, strict=True)), template=models[0])
    for got, want in zip(out, _reference_sum(models, coefficients), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_weighted_sum_default_chunk_size_with_large_layer():
    size = aggregate.CHUNK_ELEMENTS * 2 + 5  # three chunks, the last one partial
    rng = np.random.default_rng(0)
    models = [[rng.normal(size=size)] for _ in range(3)]
    coefficients = [0.5, 0.25, 0.25]
    out = weighted_sum(list(zip(models, coefficients, strict=True)), template=models[0])
    np.testing.assert_allclose(out[0], _reference_sum(models, coefficients)[0], rtol=1e-12)


def test_weighted_sum_integer_layer_rounds_back_to_its_dtype():
    # 0.25·[1, 2] + 0.75·[4, 7] = [0.25 + 3, 0.5 + 5.25] = [3.25, 5.75] -> [3, 6]
    for dtype in (np.int64, np.int32):
        a = [np.array([1, 2], dtype=dtype)]
        b = [np.array([4, 7], dtype=dtype)]
        out = weighted_sum([(a, 0.25), (b, 0.75)], template=a)
        assert out[0].dtype == dtype
        np.testing.assert_array_equal(out[0], [3, 6])


def test_weighted_sum_integer_layer_is_summed_in_float_not_truncated_per_client():
    # Truncating each scaled client (0.5·3 -> 1) would give 1 + 1 = 2; the exact sum is 3.
    a = [np.array([3], dtype=np.int64)]
    out = weighted_sum([(a, 0.5), (a, 0.5)], template=a)
    np.testing.assert_array_equal(out[0], [3])


def test_weighted_sum_fortran_order_and_strided_inputs():
    # 0.5·[[1, 2, 3], [4, 5, 6]] + 0.5·[[10, 20, 30], [40, 50, 60]]
    #   = [[5.5, 11, 16.5], [22, 27.5, 33]]
    fortran = np.asfortranarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert not fortran.flags.c_contiguous
    c_order = np.array([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]])
    expected = [[5.5, 11.0, 16.5], [22.0, 27.5, 33.0]]
    out = weighted_sum([([fortran], 0.5), ([c_order], 0.5)], template=[c_order])
    np.testing.assert_allclose(out[0], expected, rtol=1e-15)
    # Same with a transposed view and a strided slice (neither C-contiguous).
    transposed = np.array([[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]).T
    strided = np.array([10.0, -1, 20, -1, 30, -1, 40, -1, 50, -1, 60, -1])[::2].reshape(2, 3)
    out = weighted_sum([([transposed], 0.5), ([strided], 0.5)], template=[c_order])
    np.testing.assert_allclose(out[0], expected, rtol=1e-15)


def test_weighted_sum_fortran_input_chunked(monkeypatch):
    monkeypatch.setattr(aggregate, "CHUNK_ELEMENTS", 4)
    rng = np.random.default_rng(3)
    fortran = np.asfortranarray(rng.normal(size=(3, 5)))
    c_order = rng.normal(size=(3, 5))
    out = weighted_sum([([fortran], 0.3), ([c_order], 0.7)], template=[c_order])
    np.testing.assert_allclose(out[0], 0.3 * fortran + 0.7 * c_order, rtol=1e-12)


@pytest.mark.parametrize("chunk", [None, 3])
def test_weighted_sum_relative_to_sums_the_differences(monkeypatch, chunk):
    if chunk is not None:
        monkeypatch.setattr(aggregate, "CHUNK_ELEMENTS", chunk)
    # 0.5·([3, 5] − [1, 1]) + 0.25·([1, 9] − [1, 1]) = [1, 2] + [0, 2] = [1, 4]
    reference = [np.array([1.0, 1.0])]
    models = [[np.array([3.0, 5.0])], [np.array([1.0, 9.0])]]
    out = weighted_sum(zip(models, [0.5, 0.25], strict=True), models[0], relative_to=reference)
    np.testing.assert_array_equal(out[0], [1.0, 4.0])


# ---- distance, norm -----------------------------------------------------------------


def test_distance_hand_example():
    # ‖([3, 0], [[4]]) − 0‖ = sqrt(9 + 16) = 5
    a = [np.array([3.0, 0.0]), np.array([[4.0]])]
    zero = [np.zeros(2), np.zeros((1, 1))]
    assert distance(a, zero) == pytest.approx(5.0, rel=1e-15)
    assert distance(a, a) == 0.0


@pytest.mark.parametrize("chunk", [None, 3])
def test_distance_matches_linalg_norm(monkeypatch, chunk):
    if chunk is not None:
        monkeypatch.setattr(aggregate, "CHUNK_ELEMENTS", chunk)
    rng = np.random.default_rng(1)
    shapes = [(7,), (2, 5), (1,)]
    a = [rng.normal(size=s) for s in shapes]
    b = [rng.normal(size=s) for s in shapes]
    want = np.linalg.norm(np.concatenate([(x - y).ravel() for x, y in zip(a, b, strict=True)]))
    assert distance(a, b) == pytest.approx(want, rel=1e-12)


def test_norm_by_hand():
    # ‖([1, 0, 2, 5], [[-1]])‖ = sqrt(1 + 4 + 25 + 1)
    direction = [np.array([1.0, 0.0, 2.0, 5.0], dtype=np.float32), np.array([[-1.0]])]
    assert norm(direction) == pytest.approx(np.sqrt(31.0), rel=1e-7)


def test_distance_float32_and_fortran_inputs():
    rng = np.random.default_rng(2)
    a = [np.asfortranarray(rng.normal(size=(4, 3)).astype(np.float32))]
    b = [rng.normal(size=(4, 3)).astype(np.float32)]
    want = np.linalg.norm(a[0].astype(np.float64) - b[0].astype(np.float64))
    assert distance(a, b) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize(
    ("dtype", "low", "high"),
    [(np.uint8, 0, 200), (np.int8, -100, 100), (np.int16, -30000, 30000)],
)
def test_distance_small_integer_layers_do_not_wrap_around(dtype, low, high):
    # ‖θ − θ_ref‖ is a real-valued norm. For uint8 [0, 10] − [200, 0] the differences
    # are [−200, 10], norm sqrt(200² + 10²) ≈ 200.25; subtracting in the layer's own
    # dtype wraps −200 to 56 (uint8) and reports ≈ 56.9 instead.
    a = [np.array([low, 10], dtype=dtype)]
    b = [np.array([high, 0], dtype=dtype)]
    want = math.sqrt((high - low) ** 2 + 10**2)
    assert distance(a, b) == pytest.approx(want, rel=1e-12)
    assert distance(b, a) == pytest.approx(want, rel=1e-12)


# ---- all_finite ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_all_finite_detects_non_finite(bad, dtype):
    layer = np.array([1.0, bad, 2.0], dtype=dtype)
    assert not all_finite([np.zeros(2, dtype=dtype), layer])
    assert not all_finite([layer.reshape(3, 1)])


def test_all_finite_accepts_finite_int_and_empty_layers():
    assert all_finite([np.array([1.0, -2.0]), np.array([np.finfo(np.float64).max])])
    assert all_finite([np.array([1, 2, 3], dtype=np.int64)])
    assert all_finite([np.array([], dtype=np.float32), np.zeros((0, 3))])
    assert all_finite([])
    assert all_finite([np.array(0.5)])  # 0-d layer


def test_all_finite_detects_nan_in_fortran_layer():
    layer = np.asfortranarray(np.ones((3, 2)))
    layer[2, 1] = np.nan
    assert not all_finite([layer])


# ---- mismatch -----------------------------------------------------------------------


def test_mismatch_none_when_layout_matches():
    template = [np.zeros((2, 3), np.float32), np.zeros(4, np.float32)]
    assert mismatch([np.ones((2, 3), np.float32), np.ones(4, np.float32)], template) is None


def test_mismatch_layer_count():
    template = [np.zeros(2), np.zeros(3)]
    message = mismatch([np.zeros(2)], template)
    assert message is not None
    assert "1 layers" in message
    assert "expected 2" in message
    message = mismatch([np.zeros(2), np.zeros(3), np.zeros(1)], template)
    assert message is not None
    assert "3 layers" in message


def test_mismatch_shape_names_layer_and_shapes():
    template = [np.zeros(2), np.zeros((2, 3))]
    message = mismatch([np.zeros(2), np.zeros((3, 2))], template)
    assert message is not None
    assert "layer 1" in message
    assert "(3, 2)" in message
    assert "(2, 3)" in message


def test_mismatch_dtype_names_layer_and_dtypes():
    template = [np.zeros(2, np.float32)]
    message = mismatch([np.zeros(2, np.float64)], template)
    assert message is not None
    assert "layer 0" in message
    assert "float64" in message
    assert "float32" in message


# ---- weights ------------------------------------------------------------------------


def test_uniform_and_example_weights_by_hand():
    np.testing.assert_allclose(uniform_weights(4), [0.25] * 4, rtol=1e-15)
    # [1, 3] / 4 = [0.25, 0.75]; [2, 2, 4] / 8 = [0.25, 0.25, 0.5]
    np.testing.assert_allclose(example_weights([1, 3]), [0.25, 0.75], rtol=1e-15)
    np.testing.assert_allclose(example_weights([2, 2, 4]), [0.25, 0.25, 0.5], rtol=1e-15)
    assert example_weights([5]).tolist() == [1.0]


def test_quality_weights_softmax_hand_values():
    # q = [0, ln 3], τ = 1: exp -> [1, 3] -> [0.25, 0.75]
    w = quality_weights(
        [0.0, math.log(3)], higher_is_better=True, weighting="softmax", temperature=1.0, floor=0
    )
    assert w is not None
    np.testing.assert_allclose(w, [0.25, 0.75], rtol=1e-12)
    # τ = 0.5: exp(2q) -> [1, 9] -> [0.1, 0.9]
    w = quality_weights(
        [0.0, math.log(3)], higher_is_better=True, weighting="softmax", temperature=0.5, floor=0
    )
    assert w is not None
    np.testing.assert_allclose(w, [0.1, 0.9], rtol=1e-12)
    # q = [0.5, 0.7], τ = 0.1: exp(10q) -> [e^5, e^7] -> [1/(1+e^2), e^2/(1+e^2)]
    w = quality_weights(
        [0.5, 0.7], higher_is_better=True, weighting="softmax", temperature=0.1, floor=0
    )
    e2 = math.exp(2.0)
    assert w is not None
    np.testing.assert_allclose(w, [1 / (1 + e2), e2 / (1 + e2)], rtol=1e-12)


def test_quality_weights_softmax_lower_is_better_flips():
    # losses [0, ln 3], τ = 1: exp(−q) -> [1, 1/3] -> [0.75, 0.25]
    w = quality_weights(
        [0.0, math.log(3)], higher_is_better=False, weighting="softmax", temperature=1.0, floor=0
    )
    assert w is not None
    np.testing.assert_allclose(w, [0.75, 0.25], rtol=1e-12)


def test_quality_weights_softmax_large_scores_do_not_overflow():
    # exp(1000) overflows; the ratio e^1000 : e^1001 = 1 : e does not.
    w = quality_weights(
        [1000.0, 1001.0], higher_is_better=True, weighting="softmax", temperature=1.0, floor=0
    )
    assert w is not None
    assert np.all(np.isfinite(w))
    np.testing.assert_allclose(w, [1 / (1 + math.e), math.e / (1 + math.e)], rtol=1e-12)


def test_quality_weights_linear_with_floor():
    # q − 0.4 = [−0.2, 0.1, 0.4] -> max(·, 0) = [0, 0.1, 0.4] -> [0, 0.2, 0.8]
    w = quality_weights(
        [0.2, 0.5, 0.8], higher_is_better=True, weighting="linear", temperature=1.0, floor=0.4
    )
    assert w is not None
    np.testing.assert_allclose(w, [0.0, 0.2, 0.8], atol=1e-12)
    assert w[0] == 0.0


def test_quality_weights_linear_lower_is_better_floor_is_a_ceiling():
    # losses [0.5, 0.75, 1.5], ceiling 1.0: max(1 − q, 0) = [0.5, 0.25, 0] -> [2/3, 1/3, 0]
    w = quality_weights(
        [0.5, 0.75, 1.5], higher_is_better=False, weighting="linear", temperature=1.0, floor=1.0
    )
    assert w is not None
    np.testing.assert_allclose(w, [2 / 3, 1 / 3, 0.0], atol=1e-12)


def test_quality_weights_linear_all_below_floor_is_none():
    assert (
        quality_weights(
            [0.1, 0.2], higher_is_better=True, weighting="linear", temperature=1.0, floor=0.5
        )
        is None
    )
    # Exactly at the floor also gives weight 0.
    assert (
        quality_weights(
            [0.5, 0.5], higher_is_better=True, weighting="linear", temperature=1.0, floor=0.5
        )
        is None
    )


def test_mix_weights_exact_at_the_ends_and_linear_between():
    first = np.array([0.1, 0.2, 0.7])
    second = np.array([1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_array_equal(mix_weights(1.0, first, second), first)
    np.testing.assert_array_equal(mix_weights(0.0, first, second), second)
    # 0.25·[1, 0] + 0.75·[0, 1] = [0.25, 0.75]
    np.testing.assert_allclose(
        mix_weights(0.25, np.array([1.0, 0.0]), np.array([0.0, 1.0])), [0.25, 0.75], rtol=1e-15
    )


def test_mix_weights_ends_ignore_the_unused_side():
    # At λ=1 the quality side may be anything (Hybrid passes zeros), and vice versa.
    first = np.array([0.25, 0.75])
    np.testing.assert_array_equal(mix_weights(1.0, first, np.array([np.nan, np.nan])), first)
    np.testing.assert_array_equal(mix_weights(0.0, np.array([np.inf, 0.0]), first), first)


# ---- clip factors -------------------------------------------------------------------


def test_clip_factors_by_hand():
    # min(1, 1/‖Δ‖) for ‖Δ‖ = [0.5, 1, 2, 4] -> [1, 1, 0.5, 0.25]; ‖Δ‖ = 0 -> 1
    np.testing.assert_allclose(
        clip_factors([0.5, 1.0, 2.0, 4.0, 0.0], 1.0), [1.0, 1.0, 0.5, 0.25, 1.0], rtol=1e-15
    )


# ---- properties ---------------------------------------------------------------------

_finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
_shapes = hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=4)


@st.composite
def _models_and_counts(draw, max_clients=6):
    """K float64 single-layer models of one shape and K positive example counts."""
    shape = draw(_shapes)
    count = draw(st.integers(min_value=1, max_value=max_clients))
    models = [[draw(hnp.arrays(np.float64, shape, elements=_finite))] for _ in range(count)]
    counts = draw(st.lists(st.integers(1, 1000), min_size=count, max_size=count))
    return models, counts


@PROPERTY_SETTINGS
@given(data=_models_and_counts(), seed=st.integers(0, 2**32 - 1))
def test_property_weighted_sum_is_permutation_invariant(data, seed):
    models, counts = data
    coefficients = example_weights(counts)
    order = np.random.default_rng(seed).permutation(len(models))
    straight = weighted_sum(list(zip(models, coefficients, strict=True)), template=models[0])
    permuted = weighted_sum([(models[i], coefficients[i]) for i in order], template=models[0])
    np.testing.assert_allclose(permuted[0], straight[0], rtol=1e-9, atol=1e-9)


@PROPERTY_SETTINGS
@given(data=_models_and_counts())
def test_property_identical_inputs_give_the_input_and_same_output(data):
    models, counts = data
    model = models[0]
    coefficients = example_weights(counts)
    once = weighted_sum([(model, c) for c in coefficients], template=model)
    again = weighted_sum([(model, c) for c in coefficients], template=model)
    np.testing.assert_array_equal(once[0], again[0])  # deterministic
    np.testing.assert_allclose(once[0], model[0], rtol=1e-9, atol=1e-9)


@PROPERTY_SETTINGS
@given(data=_models_and_counts())
def test_property_weighted_average_lies_in_the_convex_hull(data):
    models, counts = data
    coefficients = example_weights(counts)
    out = weighted_sum(list(zip(models, coefficients, strict=True)), template=models[0])[0]
    stacked = np.stack([m[0] for m in models])
    tolerance = 1e-9 * (1.0 + np.abs(stacked).max())
    assert np.all(out >= stacked.min(axis=0) - tolerance)
    assert np.all(out <= stacked.max(axis=0) + tolerance)


@PROPERTY_SETTINGS
@given(data=_models_and_counts(), uniform=st.booleans())
def test_property_weighted_sum_matches_numpy_reference(data, uniform):
    models, counts = data
    coefficients = uniform_weights(len(models)) if uniform else example_weights(counts)
    out = weighted_sum(list(zip(models, coefficients, strict=True)), template=models[0])
    np.testing.assert_allclose(
        out[0], _reference_sum(models, coefficients)[0], rtol=1e-9, atol=1e-9
    )


@PROPERTY_SETTINGS
@given(counts=st.lists(st.integers(1, 10**6), min_size=1, max_size=20))
def test_property_example_weights_are_a_distribution(counts):
    w = example_weights(counts)
    assert w.shape == (len(counts),)
    assert np.all(w >= 0)
    assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-12)
    # Proportional to the counts: w_i · Σn = n_i.
    np.testing.assert_allclose(w * sum(counts), counts, rtol=1e-9)


@PROPERTY_SETTINGS
@given(
    quality=st.lists(
        st.floats(min_value=-100, max_value=100, allow_nan=False), min_size=1, max_size=10
    ),
    higher=st.booleans(),
    weighting=st.sampled_from(["softmax", "linear"]),
    temperature=st.floats(min_value=1e-3, max_value=10.0),
    floor=st.floats(min_value=-100, max_value=100, allow_nan=False),
)
def test_property_quality_weights_are_a_distribution_or_none(
    quality, higher, weighting, temperature, floor
):
    w = quality_weights(
        quality,
        higher_is_better=higher,
        weighting=weighting,
        temperature=temperature,
        floor=floor,
    )
    if w is None:
        assert weighting == "linear"  # softmax never gives all zeros
        scores = np.array(quality) if higher else -np.array(quality)
        assert np.all(scores <= (floor if higher else -floor))
        return
    assert w.shape == (len(quality),)
    assert np.all(np.isfinite(w))
    assert np.all(w >= 0)
    assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-9)
    # Better quality never gets less weight.
    order = np.argsort(quality if higher else [-q for q in quality], kind="stable")
    assert np.all(np.diff(w[order]) >= -1e-12)
