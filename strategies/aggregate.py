"""Aggregation math in plain numpy. A model is a list of arrays, one per layer; sums fold one
client at a time through a small scratch buffer: about one model of extra memory."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

Array = NDArray[Any]
Model = list[Array]
Floats = Sequence[float] | NDArray[np.float64]
Terms = Iterable[tuple[Sequence[Array], float]]  # the (θ_i, c_i) of a weighted sum

# Elements per fold step: 64 Ki float32 = 256 KiB, small enough to stay in L2 cache.
CHUNK_ELEMENTS = 1 << 16


def accumulator_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """Dtype to sum a layer in: floats keep theirs, integer layers are summed in float64."""
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


def weighted_sum(
    updates: Terms, template: Sequence[Array], *, relative_to: Sequence[Array] | None = None
) -> Model:
    """``Σ c_i θ_i`` over ``(θ_i, c_i)``, or ``Σ c_i (θ_i − θ_ref)`` (no cancellation of two large
    sums); each c_i θ_i rounded once (c_i in float64, as Flower); integer layers summed in float64."""
    acc = [np.zeros(t.shape, dtype=accumulator_dtype(t.dtype)) for t in template]
    scratch = {a.dtype: np.empty(CHUNK_ELEMENTS, a.dtype) for a in acc}  # one reused buffer each
    references = [None] * len(acc) if relative_to is None else [r.reshape(-1) for r in relative_to]
    for arrays, weight in ((a, np.float64(c)) for a, c in updates):
        for layer_acc, layer, ref in zip(acc, arrays, references, strict=True):
            flat_acc, flat_layer = layer_acc.reshape(-1), layer.reshape(-1)
            for start in range(0, flat_acc.size, CHUNK_ELEMENTS):
                stop = min(start + CHUNK_ELEMENTS, flat_acc.size)
                buf = scratch[flat_acc.dtype][: stop - start]
                if ref is None:
                    np.multiply(flat_layer[start:stop], weight, out=buf, casting="unsafe")
                else:
                    np.subtract(flat_layer[start:stop], ref[start:stop], out=buf, casting="unsafe")
                    buf *= weight
                flat_acc[start:stop] += buf
    return [cast_like(a, t.dtype) for a, t in zip(acc, template, strict=True)]


def cast_like(array: Array, dtype: np.dtype[Any]) -> Array:
    rounded = np.rint(array) if np.issubdtype(dtype, np.integer) and array.dtype != dtype else array
    return rounded.astype(dtype, copy=False)


def difference_chunks(
    arrays: Sequence[Array], reference: Sequence[Array], precision: type | None = None
) -> Iterator[tuple[int, int, int, Array]]:
    """``(layer, start, stop, θ − θ_ref on [start, stop))`` in a reused buffer, in ``precision`` or
    the layer's (at least float32; integers in float64: no wrap-around)."""
    for index, (layer, ref) in enumerate(zip(arrays, reference, strict=True)):
        flat_layer, flat_ref = layer.reshape(-1), ref.reshape(-1)
        work = precision or np.promote_types(accumulator_dtype(layer.dtype), np.float32)
        scratch = np.empty(min(CHUNK_ELEMENTS, flat_layer.size), work)
        for start in range(0, flat_layer.size, CHUNK_ELEMENTS):
            stop = min(start + CHUNK_ELEMENTS, flat_layer.size)
            buf = scratch[: stop - start]
            np.subtract(flat_layer[start:stop], flat_ref[start:stop], out=buf, dtype=work)
            yield index, start, stop, buf


def _euclidean(chunks: Callable[[type | None], Iterable[Array]]) -> float:
    """``sqrt(Σ x²)`` over the pieces ``chunks(precision)`` of one vector: in their own precision
    (fast), or where float32 squares overflow, in float64 scaled by the largest ``|x|``."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = sum(float(np.dot(c, c)) for c in chunks(None))
        if math.isfinite(total):
            return math.sqrt(total)
        top = max((float(np.max(np.abs(c))) for c in chunks(np.float64) if c.size), default=0.0)
        if not 0.0 < top < math.inf:  # 0: all zeros; inf: a difference beyond float64
            return top
        scaled = sum(float(np.dot(u, u)) for u in (c / top for c in chunks(np.float64)))
    return top * math.sqrt(scaled)


def distance(arrays: Sequence[Array], reference: Sequence[Array]) -> float:
    """``‖θ − θ_ref‖``, chunks squared in the layers' precision (fast) and summed in float64."""
    return _euclidean(lambda p: (buf for *_, buf in difference_chunks(arrays, reference, p)))


def norm(arrays: Sequence[Array]) -> float:
    """``‖θ‖``: each layer whole, or where that overflows, in float64 chunks."""
    flats = [a.reshape(-1) for a in arrays]
    chunks = [f[i : i + CHUNK_ELEMENTS] for f in flats for i in range(0, f.size, CHUNK_ELEMENTS)]
    return _euclidean(lambda p: flats if p is None else (c.astype(p) for c in chunks))


def all_finite(arrays: Sequence[Array]) -> bool:
    """True when no layer holds NaN or ±Inf (min/max propagate both; no temporary array)."""
    for layer in arrays:
        inexact = layer.size and np.issubdtype(layer.dtype, np.inexact)
        if inexact and not (np.isfinite(layer.min()) and np.isfinite(layer.max())):
            return False
    return True


def mismatch(arrays: Sequence[Array], template: Sequence[Array]) -> str | None:
    """The first layer count, shape or dtype that differs from ``template``'s, or None."""
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
    quality: Floats, *, higher_is_better: bool, weighting: str, temperature: float, floor: float
) -> NDArray[np.float64] | None:
    """``g(q_i) / Σ g(q)`` (None when every weight is zero), with ``s = q``, or ``−q`` when lower is
    better: ``softmax`` ``g = exp(s / τ)``; ``linear`` ``g = max(s − floor, 0)``, or when lower is
    better ``max(floor − q, 0)`` (``floor`` is then the worst accepted value, e.g. a loss)."""
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
    if lam in (0.0, 1.0):
        return np.asarray(first if lam else second, dtype=np.float64)
    return lam * np.asarray(first, dtype=np.float64) + (1.0 - lam) * np.asarray(second)


def clip_factors(norms: Floats, max_norm: float) -> NDArray[np.float64]:
    """Factors ``min(1, c / ‖Δ_i‖)`` that scale each update to norm at most ``c``."""
    values = np.asarray(norms, dtype=np.float64)
    return np.asarray(np.minimum(1.0, max_norm / np.maximum(values, np.finfo(np.float64).tiny)))
