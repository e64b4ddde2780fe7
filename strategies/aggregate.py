"""Aggregation math: plain numpy, no Flower, no torch.

A model is a list of numpy arrays (one per layer). Aggregation is a weighted sum
``Σ c_i θ_i`` folded one client at a time into one preallocated accumulator, through a
small fixed scratch buffer, so the extra memory is about one model whatever the number
of clients (Flower's in-place FedAvg also allocates a decoded copy and a scaled copy of
every update it folds).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

Array = NDArray[Any]
Model = list[Array]
Weighting = Literal["softmax", "linear"]
Floats = Sequence[float] | NDArray[np.float64]

# Elements per fold step: 64 Ki float32 = 256 KiB, small enough to stay in L2 cache.
CHUNK_ELEMENTS = 1 << 16


def accumulator_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """Dtype to sum a layer in: floats keep theirs, integer layers are summed in float64."""
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


def _flat(array: Array) -> Array:
    """1-D view of ``array`` (a copy only when it is not C-contiguous)."""
    return np.ascontiguousarray(array).reshape(-1)


class _Scratch:
    """One small reusable buffer per dtype for chunked in-place arithmetic."""

    def __init__(self) -> None:
        self._buffers: dict[np.dtype[Any], Array] = {}

    def get(self, dtype: np.dtype[Any], size: int) -> Array:
        buf = self._buffers.get(dtype)
        if buf is None:
            buf = self._buffers[dtype] = np.empty(CHUNK_ELEMENTS, dtype=dtype)
        return buf[:size]


def weighted_sum(
    updates: Iterable[tuple[Sequence[Array], float]],
    template: Sequence[Array],
    *,
    relative_to: Sequence[Array] | None = None,
) -> Model:
    """Return ``Σ c_i θ_i`` over ``(θ_i, c_i)`` pairs, folding one update at a time.

    ``template`` gives the layer shapes and dtypes; integer layers are summed in float64
    and rounded back at the end. Updates are read, never modified or copied whole. With
    ``relative_to`` (a model θ_ref) the sum is ``Σ c_i (θ_i − θ_ref)``, differenced chunk
    by chunk (no cancellation between two large sums).
    """
    acc = [np.zeros(t.shape, dtype=accumulator_dtype(t.dtype)) for t in template]
    scratch = _Scratch()
    references = [None] * len(acc) if relative_to is None else [_flat(r) for r in relative_to]
    for arrays, coefficient in updates:
        for layer_acc, layer, ref in zip(acc, arrays, references, strict=True):
            flat_acc, flat_layer = layer_acc.reshape(-1), _flat(layer)
            for start in range(0, flat_acc.size, CHUNK_ELEMENTS):
                stop = min(start + CHUNK_ELEMENTS, flat_acc.size)
                buf = scratch.get(flat_acc.dtype, stop - start)
                if ref is None:
                    np.multiply(flat_layer[start:stop], coefficient, out=buf, casting="unsafe")
                else:
                    np.subtract(flat_layer[start:stop], ref[start:stop], out=buf, casting="unsafe")
                    buf *= coefficient
                flat_acc[start:stop] += buf
    return [_cast_like(a, t.dtype) for a, t in zip(acc, template, strict=True)]


def _cast_like(array: Array, dtype: np.dtype[Any]) -> Array:
    if array.dtype == dtype:
        return array
    return np.rint(array).astype(dtype) if np.issubdtype(dtype, np.integer) else array.astype(dtype)


def _difference_chunks(
    arrays: Sequence[Array], reference: Sequence[Array], precision: type | None = None
) -> Iterator[tuple[int, int, int, Array]]:
    """``(layer, start, stop, θ − θ_ref over [start, stop))`` chunk by chunk, in a reused buffer.

    Float layers are differenced in their own precision (at least float32), integer layers
    in float64, so they cannot wrap around; ``precision`` (float64) overrides both.
    """
    scratch = _Scratch()
    for index, (layer, ref) in enumerate(zip(arrays, reference, strict=True)):
        flat_layer, flat_ref = _flat(layer), _flat(ref)
        work = precision or np.promote_types(accumulator_dtype(layer.dtype), np.float32)
        for start in range(0, flat_layer.size, CHUNK_ELEMENTS):
            stop = min(start + CHUNK_ELEMENTS, flat_layer.size)
            buf = scratch.get(np.dtype(work), stop - start)
            np.subtract(flat_layer[start:stop], flat_ref[start:stop], out=buf, dtype=work)
            yield index, start, stop, buf


def _euclidean(chunks: Callable[[type | None], Iterable[Array]]) -> float:
    """``sqrt(Σ x²)`` over ``chunks(precision)``, which yields 1-D pieces of one vector.

    First in the pieces' own precision (float32 squares: fast). Where that overflows (a
    finite float32 update of 1e30 entries has squares of 1e60), again in float64 scaled by
    the largest ``|x|``: that is finite whenever the norm itself is (always for float32
    models), and inf only when the norm exceeds float64's range.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        total = sum(float(np.dot(c, c)) for c in chunks(None))
    if math.isfinite(total):
        return math.sqrt(total)
    with np.errstate(over="ignore", invalid="ignore"):
        top = max((float(np.max(np.abs(c))) for c in chunks(np.float64) if c.size), default=0.0)
        if not 0.0 < top < math.inf:  # 0: all zeros; inf: a difference beyond float64
            return top
        scaled = sum(float(np.dot(u, u)) for u in (c / top for c in chunks(np.float64)))
    return top * math.sqrt(scaled)


def _pieces(arrays: Sequence[Array], precision: type | None) -> Iterator[Array]:
    """Each layer whole (``precision`` None), or in float64 chunks (no full-size copy)."""
    for array in arrays:
        flat = _flat(array)
        if precision is None:
            yield flat
            continue
        for start in range(0, flat.size, CHUNK_ELEMENTS):
            yield flat[start : start + CHUNK_ELEMENTS].astype(precision)


def distance(arrays: Sequence[Array], reference: Sequence[Array]) -> float:
    """Euclidean norm ``‖θ − θ_ref‖`` over all layers, without a full-size temporary.

    Chunks are squared in the layer's precision (at least float32) and their sums carried
    in float64: for float32 models that is about five times faster than casting to
    float64, at a relative error near 1e-7. No overflow (see :func:`_euclidean`).
    """
    return _euclidean(
        lambda precision: (buf for _, _, _, buf in _difference_chunks(arrays, reference, precision))
    )


def inner(arrays: Sequence[Array], reference: Sequence[Array], direction: Sequence[Array]) -> float:
    """``⟨θ − θ_ref, d⟩`` over all layers, chunk by chunk (as :func:`distance`); in float64
    where the layers' precision overflows."""
    flat = [_flat(d) for d in direction]

    def total(precision: type | None) -> float:
        return sum(
            float(np.dot(buf, flat[index][start:stop].astype(buf.dtype, copy=False)))
            for index, start, stop, buf in _difference_chunks(arrays, reference, precision)
        )

    with np.errstate(over="ignore", invalid="ignore"):
        fast = total(None)
        return fast if math.isfinite(fast) else total(np.float64)


def norm(arrays: Sequence[Array]) -> float:
    """``‖θ‖`` over all layers (float64 sums; no overflow, see :func:`_euclidean`)."""
    return _euclidean(lambda precision: _pieces(arrays, precision))


def all_finite(arrays: Sequence[Array]) -> bool:
    """True when no layer holds NaN or ±Inf (min/max propagate both; no temporary array)."""
    for layer in arrays:
        inexact = layer.size and np.issubdtype(layer.dtype, np.inexact)
        if inexact and not (np.isfinite(layer.min()) and np.isfinite(layer.max())):
            return False
    return True


def mismatch(arrays: Sequence[Array], template: Sequence[Array]) -> str | None:
    """Describe the first layer whose shape or dtype differs from ``template``, or None."""
    if len(arrays) != len(template):
        return f"{len(arrays)} layers, expected {len(template)}"
    for index, (layer, ref) in enumerate(zip(arrays, template, strict=True)):
        if layer.shape != ref.shape:
            return f"layer {index} has shape {layer.shape}, expected {ref.shape}"
        if layer.dtype != ref.dtype:
            return f"layer {index} has dtype {layer.dtype}, expected {ref.dtype}"
    return None


def uniform_weights(count: int) -> NDArray[np.float64]:
    """``1/K`` for each of ``count`` clients."""
    return np.full(count, 1.0 / count)


def example_weights(num_examples: Sequence[int]) -> NDArray[np.float64]:
    """``n_i / Σ n`` (FedAvg)."""
    counts = np.asarray(num_examples, dtype=np.float64)
    return np.asarray(counts / counts.sum())


def quality_weights(
    quality: Sequence[float],
    *,
    higher_is_better: bool,
    weighting: Weighting,
    temperature: float,
    floor: float,
) -> NDArray[np.float64] | None:
    """Normalised weights ``g(q_i) / Σ g(q)``, or None when every weight is zero.

    ``softmax``: ``g(q) = exp(s / τ)`` with ``s = q`` (higher is better) or ``−q``.
    ``linear``: ``g(q) = max(q − floor, 0)`` (higher is better) or ``max(floor − q, 0)``
    (lower is better: ``floor`` is then the worst accepted value, e.g. a loss ceiling).
    """
    q = np.asarray(quality, dtype=np.float64)
    score = q if higher_is_better else -q
    if weighting == "softmax":
        raw = np.exp((score - score.max()) / temperature)
    else:
        raw = np.maximum(score - (floor if higher_is_better else -floor), 0.0)
    total = raw.sum()
    return raw / total if total > 0 else None


def mix_weights(lam: float, first: Array, second: Array) -> NDArray[np.float64]:
    """``λ · first + (1 − λ) · second``; exact ``first`` at λ=1 and exact ``second`` at λ=0."""
    if lam == 1.0:
        return np.asarray(first, dtype=np.float64)
    if lam == 0.0:
        return np.asarray(second, dtype=np.float64)
    return lam * np.asarray(first, dtype=np.float64) + (1.0 - lam) * np.asarray(second)


def mad_inliers(norms: Floats, k: float) -> NDArray[np.bool_]:
    """Mask of the norms kept by ``norm ≤ median + k · MAD`` (MAD: median absolute deviation)."""
    values = np.asarray(norms, dtype=np.float64)
    median = np.median(values)
    mad = np.median(np.abs(values - median))
    return np.asarray(values <= median + k * mad)


def clip_factors(norms: Floats, max_norm: float) -> NDArray[np.float64]:
    """Factors ``min(1, c / ‖Δ_i‖)`` that scale each update to norm at most ``c``."""
    values = np.asarray(norms, dtype=np.float64)
    return np.asarray(np.minimum(1.0, max_norm / np.maximum(values, np.finfo(np.float64).tiny)))


def server_step(
    average: Model,
    global_model: Sequence[Array],
    velocity: Model | None,
    *,
    learning_rate: float,
    momentum: float,
) -> tuple[Model, Model | None]:
    """FedAvgM server update, in place on ``average``.

    ``Δ = θ_avg − θ_g``; ``v ← β v + Δ``; ``θ_g ← θ_g + η v``. With η=1 and β=0 the
    average is returned untouched, so plain FedAvg stays bit-exact. Returns the new global
    model and the velocity to keep for the next round (None while β=0), a new one: the
    ``velocity`` given stays as it was, for a round whose step is thrown away.
    """
    if learning_rate == 1.0 and momentum == 0.0:
        return average, None
    # Float layers are updated in place; integer layers in a float64 copy, rounded back.
    work = [a if a.dtype == accumulator_dtype(a.dtype) else a.astype(np.float64) for a in average]
    for delta, g in zip(work, global_model, strict=True):
        np.subtract(delta, g, out=delta)
    step = work
    if momentum > 0.0:
        previous = velocity or [np.zeros_like(d) for d in work]
        velocity = [np.multiply(v, momentum) for v in previous]
        for v, delta in zip(velocity, work, strict=True):
            v += delta
        step = velocity
    for out, s, g in zip(work, step, global_model, strict=True):
        np.multiply(s, learning_rate, out=out)
        np.add(out, g, out=out)
    return [_cast_like(w, a.dtype) for w, a in zip(work, average, strict=True)], velocity
