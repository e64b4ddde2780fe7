"""The strategy core: validation, coefficients, streaming fold, server step, state. No Flower.

Both Flower API halves wrap the same :class:`Rule`: the legacy adapters
(:mod:`strategies.legacy`) hand it the tensors of each ``FitRes``, the Message-API
adapters (:mod:`strategies.message`) those of each reply's ``ArrayRecord``. Either way a
round is :meth:`Rule.aggregate` over :class:`ClientUpdate` objects, so both give the same
model bit for bit.

A rule only decides the coefficients of the accepted updates (:meth:`Rule.coefficients`)
and, when it needs more than the shared checks, validates further
(:meth:`Rule.check_update`). What it carries from round to round lives in one explicit
:class:`StrategyState`.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np

from strategies import aggregate, privacy
from strategies.aggregate import Array, Model
from strategies.privacy import DP_CLIPPINGS, DP_MODES, DP_SGD_METRICS
from strategies.sampling import NUM_PARTITIONS_KEY, PARTITION_KEY, Node, SeededSampler

Scalar = bool | bytes | float | int | str
Metrics = dict[str, Scalar]
# A child of Flower's logger: its lines show with Flower's, at Flower's level, without
# importing Flower here.
LOG = logging.getLogger("flwr.strategies")
# ``score_fn(arrays) -> metrics``: a client model scored on server-held data.
ScoreFn = Callable[[Sequence[Array]], Mapping[str, float]]


class NothingAggregatedError(RuntimeError):
    """Too many rounds in a row aggregated nothing: the run stops instead of freezing.

    ``metrics`` are the last round's (``results``, ``failures``, ``rejected`` ...).
    """

    def __init__(self, message: str, metrics: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.metrics = dict(metrics)


def weighted_metrics(results: Sequence[tuple[int, Mapping[str, Any]]]) -> Metrics:
    """Example-weighted mean of every finite numeric metric the clients reported."""
    totals: dict[str, float] = {}
    weights: dict[str, int] = {}
    for num_examples, metrics in results:
        for key, value in metrics.items():
            if isinstance(value, int | float) and math.isfinite(value):
                totals[key] = totals.get(key, 0.0) + num_examples * float(value)
                weights[key] = weights.get(key, 0) + num_examples
    return {key: totals[key] / weights[key] for key in totals if weights[key] > 0}


def evaluation_metrics(results: Sequence[tuple[int, Mapping[str, Any]]]) -> Metrics:
    """A federated evaluation round: the example-weighted mean of each metric the clients
    reported, summed in a canonical order (the same floats on both Flower halves and in
    any arrival order). ``loss`` is averaged over every reply, so a non-finite loss shows
    (as in Flower); the other metrics over their finite values (:func:`weighted_metrics`).
    """
    ordered = canonical_order(results)
    metrics = weighted_metrics(
        [(n, {k: v for k, v in m.items() if k != "loss"}) for n, m in ordered]
    )
    losses = [(n, float(m["loss"])) for n, m in ordered if "loss" in m]
    if losses:
        metrics["loss"] = sum(n * loss for n, loss in losses) / sum(n for n, _ in losses)
    return metrics


def canonical_order(
    results: Sequence[tuple[int, Mapping[str, Any]]],
) -> list[tuple[int, Mapping[str, Any]]]:
    """``(num_examples, metrics)`` pairs sorted by content, so the float sums over them are
    the same whatever order the clients answered in (and on both Flower halves)."""
    return sorted(results, key=lambda r: (r[0], sorted((k, repr(v)) for k, v in r[1].items())))


# ---- .npy tensors on the wire ---------------------------------------------------------
# Both Flower halves carry each layer as the bytes ``np.save`` writes (legacy
# ``Parameters.tensors``, Message-API ``Array.data``).

_NPY_MAGIC = b"\x93NUMPY"
# .npy major version -> (header length field size, reader); the header follows the field.
_NPY_HEADER_READERS = {
    1: (2, np.lib.format.read_array_header_1_0),
    2: (4, np.lib.format.read_array_header_2_0),
}


@functools.lru_cache(maxsize=1024)
def _npy_header(prefix: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """Shape, Fortran order and dtype of an ``.npy`` header.

    Every client sends the same model layout, so a round parses each distinct header
    once instead of once per client and layer.
    """
    stream = io.BytesIO(prefix)
    major, _ = np.lib.format.read_magic(stream)
    shape, fortran_order, dtype = _NPY_HEADER_READERS[major][1](stream)
    if dtype.hasobject:
        raise ValueError("object arrays are not model parameters")
    return shape, fortran_order, dtype


def decode_tensors(tensors: Sequence[bytes]) -> list[Array]:
    """Read-only views of the ``.npy`` arrays in ``tensors``, without copying their bytes.

    Raises ValueError for anything that is not a plain ``.npy`` array (whatever numpy's
    header parser raises on garbage: a bad reply must be rejected, not crash the round).
    """
    try:
        return _decode(tensors)
    except ValueError:
        raise
    except Exception as err:
        raise ValueError(f"not .npy data ({type(err).__name__}: {err})") from err


def _decode(tensors: Sequence[bytes]) -> list[Array]:
    arrays = []
    for tensor in tensors:
        if len(tensor) < 8 or tensor[:6] != _NPY_MAGIC:
            raise ValueError(f"not .npy data: no magic string (starts with {bytes(tensor[:8])!r})")
        reader = _NPY_HEADER_READERS.get(tensor[6])
        if reader is None:  # a rarer .npy version: let numpy parse (and copy) it
            arrays.append(np.load(io.BytesIO(tensor), allow_pickle=False))
            continue
        length_bytes = reader[0]
        offset = 8 + length_bytes + int.from_bytes(tensor[8 : 8 + length_bytes], "little")
        shape, fortran_order, dtype = _npy_header(bytes(tensor[:offset]))
        flat = np.frombuffer(tensor, dtype=dtype, count=math.prod(shape), offset=offset)
        arrays.append(flat.reshape(shape, order="F" if fortran_order else "C"))
    return arrays


def encode_tensors(arrays: list[Array]) -> list[bytes]:
    """``arrays`` as ``.npy`` bytes, byte for byte what ``np.save`` writes.

    Each C-contiguous layer is copied once, straight into its bytes (``np.save`` into a
    buffer copies twice), and ``arrays`` is emptied as it goes, so the peak is the model
    plus one layer.
    """
    tensors = []
    while arrays:
        array = arrays.pop(0)
        if not array.flags.c_contiguous or array.dtype.kind not in "biuf":
            buffer = io.BytesIO()
            np.save(buffer, array, allow_pickle=False)
            tensors.append(buffer.getvalue())
            continue
        header = io.BytesIO()  # a plain dtype's header always fits format 1.0, as in np.save
        np.lib.format.write_array_header_1_0(
            header, np.lib.format.header_data_from_array_1_0(array)
        )
        tensors.append(b"".join((header.getvalue(), array.data)))
        del array
    return tensors


# ---- one round's inputs and outputs ---------------------------------------------------


@dataclass(slots=True)
class ClientUpdate:
    """One client's reply as the rule sees it.

    ``tensors`` are the layers as ``.npy`` bytes. ``arrays`` are the decoded layers while
    the update is validated (:meth:`Rule.check_update`); they are released after
    validation, so memory does not grow with the number of clients, and decoded again,
    one update at a time, to fold them. What a rule needs of the layers is measured
    during validation: ``quality`` (quality-weighted rules) and ``distance``
    ``‖θ_i − θ_g‖`` (when :meth:`Rule.needs_distance` says so).
    """

    client_id: str
    tensors: Sequence[bytes]
    num_examples: Any
    metrics: Mapping[str, Any]
    arrays: list[Array] = field(default_factory=list)
    quality: float = math.nan
    distance: float = math.nan
    problem: str | None = None  # what an adapter found wrong with the reply itself

    def sort_key(self) -> tuple[int, bytes]:
        """A cheap key that depends on what the client sent, not on when or who it is.

        The tail of each tensor holds its last values; two updates that agree there are,
        in practice, the same update, so their order does not matter.
        """
        n = self.num_examples if isinstance(self.num_examples, int) else 0
        return n, b"".join(bytes(t[-16:]) for t in self.tensors)


@dataclass
class Coefficients:
    """What a rule decides for a round: ``θ = c_g θ_g + Σ c_i θ_i``.

    ``clients`` has one coefficient per valid update (0 drops it); ``global_model`` is
    the share kept of the current global model (non-zero only for norm clipping).
    ``weights`` are the per-client weights reported in the metrics; ``metrics`` is any
    rule-specific detail for the round.
    """

    clients: np.ndarray[Any, np.dtype[np.float64]]
    global_model: float = 0.0
    weights: np.ndarray[Any, np.dtype[np.float64]] | None = None
    metrics: Metrics = field(default_factory=dict)


@dataclass
class RoundResult:
    """What :meth:`Rule.aggregate` made of a round.

    ``arrays`` is the new global model, or None when nothing could be aggregated (the
    previous model stays); ``problem`` then says why, in one line with the fix. (The
    Flower adapters encode ``arrays`` layer by layer, releasing each, so after a round it
    is an empty list there: the model is in what they returned.)
    ``metrics`` always holds ``results``, ``failures``, ``rejected``, ``accepted`` and,
    when something was aggregated, ``weights`` (JSON: client id -> weight).
    """

    arrays: Model | None
    metrics: Metrics
    accepted: list[ClientUpdate]
    problem: str | None = None


@dataclass
class StrategyState:
    """Everything a strategy carries from one round to the next (for checkpoints).

    ``velocity``: the server momentum buffer (None while β = 0 or before round 1);
    ``empty_rounds``: rounds in a row that aggregated nothing; ``private_rounds``: the
    ``(sampled, available)`` clients of each round released under central DP (what the
    privacy accountant composes); ``releases``: under local DP and DP-SGD, every update a
    client sent, as ``(client, sample rate, steps)`` (a local-DP release is ``(c, 1, 1)``);
    ``clipping_norm``: the next round's clipping norm under adaptive clipping.
    """

    velocity: Model | None = None
    empty_rounds: int = 0
    private_rounds: list[tuple[int, int]] = field(default_factory=list)
    releases: list[tuple[str, float, int]] = field(default_factory=list)
    clipping_norm: float | None = None

    def to_arrays(self) -> dict[str, list[Array]]:
        """The state as named lists of arrays (what a checkpoint stores)."""
        clients, rates, steps = zip(*self.releases, strict=True) if self.releases else ((), (), ())
        arrays: dict[str, list[Array]] = {
            "empty_rounds": [np.array(self.empty_rounds, dtype=np.int64)],
            "private_rounds": [np.array(self.private_rounds, dtype=np.int64).reshape(-1, 2)],
            "releases": [
                np.array(clients, dtype=np.str_),
                np.array(rates, dtype=np.float64),
                np.array(steps, dtype=np.int64),
            ],
        }
        if self.velocity is not None:
            arrays["velocity"] = [v.copy() for v in self.velocity]
        if self.clipping_norm is not None:
            arrays["clipping_norm"] = [np.array(self.clipping_norm, dtype=np.float64)]
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Sequence[Array]]) -> StrategyState:
        velocity = arrays.get("velocity")
        empty = arrays.get("empty_rounds")
        private = arrays.get("private_rounds")
        releases = arrays.get("releases")
        clipping_norm = arrays.get("clipping_norm")
        return cls(
            velocity=None if velocity is None else [np.array(v) for v in velocity],
            empty_rounds=int(empty[0]) if empty else 0,
            private_rounds=[] if not private else [(int(m), int(n)) for m, n in private[0]],
            releases=[]
            if not releases
            else [
                (str(c), float(q), int(t))
                for c, q, t in zip(releases[0], releases[1], releases[2], strict=True)
            ]
            if len(releases) == 3
            else [  # a checkpoint of before DP-SGD: local-DP counts per client
                (str(c), 1.0, 1)
                for c, n in zip(releases[0], releases[1], strict=True)
                for _ in range(int(n))
            ],
            clipping_norm=float(clipping_norm[0]) if clipping_norm else None,
        )


@runtime_checkable
class Stateful(Protocol):
    """A strategy whose state a server checkpoints and restores."""

    def get_state(self) -> StrategyState: ...

    def set_state(self, state: StrategyState) -> None: ...


# ---- options ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ServerOptions:
    """The knobs every rule has: the FedAvgM server step and the empty-round limit.

    server_learning_rate : η > 0. 1.0 (with β = 0) takes the average as the new model.
    server_momentum : β in [0, 1). 0.0 disables server momentum.
    max_empty_rounds : stop with :class:`NothingAggregatedError` after this many rounds in a
        row that aggregated nothing (0: never stop).
    dp : "none"; "central": clip every update to ``dp_clipping_norm`` and add Gaussian
        noise to the aggregate; "local": the clients do that to their own updates;
        "dp-sgd": the clients train with sample-level DP-SGD and report their schedule
        (an update without it is rejected). Under "local" and "dp-sgd" the rule only
        accounts (:mod:`strategies.privacy`). Each round reports ``epsilon``.
    dp_noise_multiplier : z >= 0, the noise's standard deviation over the largest change
        one client can make to the aggregate.
    dp_clipping_norm : C > 0, the largest update norm ``‖θ_i − θ_g‖`` that counts
        (DP-SGD: the largest per-example gradient norm).
    dp_delta : δ in (0, 1) of the reported (ε, δ).
    dp_clipping : "fixed" (``dp_clipping_norm`` throughout) or "adaptive" (central DP
        only: ``dp_clipping_norm`` is the first round's norm, then it follows the
        ``dp_target_quantile`` of the update norms, Andrew et al. 2021; see
        :mod:`strategies.privacy`).
    dp_target_quantile : γ in [0, 1], the share of updates left unclipped.
    dp_clip_learning_rate : η_C > 0 of ``C ← C · exp(−η_C (b̃ − γ))``.
    dp_clipped_count_stddev : σ_b >= 0 of the noise on the unclipped count (0: m/20 for
        the round's m sampled clients).
    seed : seed of the rule's randomness (the DP noise); None: fresh entropy every run.
    """

    server_learning_rate: float = 1.0
    server_momentum: float = 0.0
    max_empty_rounds: int = 3
    dp: str = "none"
    dp_noise_multiplier: float = 1.0
    dp_clipping_norm: float = 1.0
    dp_delta: float = 1e-5
    dp_clipping: str = "fixed"
    dp_target_quantile: float = 0.5
    dp_clip_learning_rate: float = 0.2
    dp_clipped_count_stddev: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.server_learning_rate < math.inf:
            raise ValueError(
                f"server_learning_rate={self.server_learning_rate!r}: must be finite and > 0"
            )
        if not 0.0 <= self.server_momentum < 1.0:
            raise ValueError(f"server_momentum={self.server_momentum!r}: must be in [0, 1)")
        if isinstance(self.max_empty_rounds, bool) or not (
            isinstance(self.max_empty_rounds, int) and self.max_empty_rounds >= 0
        ):
            raise ValueError(f"max_empty_rounds={self.max_empty_rounds!r}: must be an int >= 0")
        if self.dp not in DP_MODES:
            raise ValueError(f"dp={self.dp!r}: choose one of {', '.join(DP_MODES)}")
        if not 0 <= self.dp_noise_multiplier < math.inf:
            raise ValueError(
                f"dp_noise_multiplier={self.dp_noise_multiplier!r}: must be finite and >= 0"
            )
        if not 0 < self.dp_clipping_norm < math.inf:
            raise ValueError(f"dp_clipping_norm={self.dp_clipping_norm!r}: must be finite and > 0")
        if not 0 < self.dp_delta < 1:
            raise ValueError(f"dp_delta={self.dp_delta!r}: must be in (0, 1)")
        if self.dp_clipping not in DP_CLIPPINGS:
            raise ValueError(
                f"dp_clipping={self.dp_clipping!r}: choose one of {', '.join(DP_CLIPPINGS)}"
            )
        if self.dp_clipping == "adaptive" and self.dp != "central":
            raise ValueError(
                f"dp_clipping='adaptive' needs dp='central', not {self.dp!r} (the server "
                "learns the clipping norm from the clients' noisy clipped count)"
            )
        if not 0 <= self.dp_target_quantile <= 1:
            raise ValueError(f"dp_target_quantile={self.dp_target_quantile!r}: must be in [0, 1]")
        if not 0 < self.dp_clip_learning_rate < math.inf:
            raise ValueError(
                f"dp_clip_learning_rate={self.dp_clip_learning_rate!r}: must be finite and > 0"
            )
        stddev = self.dp_clipped_count_stddev
        if not 0 <= stddev < math.inf:
            raise ValueError(f"dp_clipped_count_stddev={stddev!r}: must be finite and >= 0")
        if self.dp_clipping == "adaptive" and stddev > 0:
            privacy.update_noise_multiplier(self.dp_noise_multiplier, stddev)  # raises if z too big

    @classmethod
    def from_config(cls, config: Any) -> Self:
        """These options read from ``config`` (any object with an attribute per field,
        e.g. :class:`fl_app.kit.config.RunConfig`)."""
        return cls(**{name: getattr(config, name) for name in cls.field_names()})

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(cls.__dataclass_fields__)


# ---- the rule -----------------------------------------------------------------------


class Rule:
    """Base of every aggregation rule: validated, streaming aggregation with a server step.

    Update rule: ``θ_avg = Σ c_i θ_i`` (``Σ c_i = 1``, chosen by :meth:`coefficients`),
    then the FedAvgM server step ``Δ = θ_avg − θ_g``, ``v ← β v + Δ``, ``θ_g ← θ_g + η v``.

    Every update is checked before it is folded in: it must decode, match the global
    model's layer shapes and dtypes, hold only finite values, and report a positive
    integer ``num_examples``. A failing update is rejected, reported with the client's id
    and the reason, and counted in the round's ``rejected`` metric. When nothing valid
    arrives the round keeps the previous global model and says why; after
    ``max_empty_rounds`` such rounds in a row :meth:`aggregate` raises
    :class:`NothingAggregatedError`.
    """

    Options: ClassVar[type[ServerOptions]] = ServerOptions

    def __init__(self, options: ServerOptions | None = None, *, score_fn: ScoreFn | None = None):
        self.options = options if options is not None else self.Options()
        if not isinstance(self.options, self.Options):
            raise TypeError(
                f"{type(self).__name__} takes {self.Options.__name__}, "
                f"not {type(self.options).__name__}"
            )
        self.score_fn = score_fn
        self.state = StrategyState()
        self.global_model: list[Array] | None = None
        # (sampled, available) clients of the current round, told by the Flower adapter
        # (for the privacy accountant; None: every client that answered was sampled).
        self.sampling: tuple[int, int] | None = None

    # ---- hooks for subclasses -------------------------------------------------------

    @classmethod
    def secure_weight(cls, options: ServerOptions) -> str | None:
        """The weight each client sends when only the masked sum of the weighted updates
        reaches the server (SecAgg+, which divides by the sum of the weights): "examples"
        (each client's n_i), "one" (the same for every client), or None when the rule
        needs the individual updates."""
        return None

    def coefficients(self, server_round: int, updates: list[ClientUpdate]) -> Coefficients:
        """Coefficients of the valid ``updates`` (summing to 1 with ``global_model``)."""
        raise NotImplementedError

    def check_update(self, server_round: int, update: ClientUpdate) -> str | None:
        """Rule-specific validation; return the reason to reject, or None."""
        return None

    def needs_distance(self, server_round: int) -> bool:
        """Whether :meth:`coefficients` reads ``ClientUpdate.distance`` this round."""
        return False

    def explain_rejections(self, rejected: Sequence[tuple[ClientUpdate, str]]) -> str:
        """The fix for a round in which every update was rejected (after the reasons)."""
        return "check what the clients send (layers, num_examples) against the global model"

    # ---- one round ------------------------------------------------------------------

    def aggregate(
        self,
        server_round: int,
        updates: Sequence[ClientUpdate],
        failures: Sequence[str],
        *,
        indivisible: bool = False,
    ) -> RoundResult:
        """Validate ``updates``, fold the accepted ones, take the server step.

        ``failures`` describes the clients that raised, timed out or answered with an
        error (one string each). ``indivisible``: the updates are one masked sum (SecAgg+),
        so a rejected update cannot be taken out and rejects the round. Raises
        :class:`NothingAggregatedError` after too many empty rounds in a row.
        """
        metrics: Metrics = {"results": len(updates), "failures": len(failures)}
        if self.options.dp in ("local", "dp-sgd"):  # the clients' own releases
            metrics["epsilon"] = self._count_releases(updates)
        accepted, rejected = self._validate(server_round, updates)
        if indivisible and rejected:  # its share is inside every other update
            rejected += [(u, "inside a masked sum with a rejected update") for u in accepted]
            accepted = []
        metrics |= {"rejected": len(rejected), "accepted": len(accepted)}
        if not accepted:
            return self._empty_round(server_round, metrics, rejected, failures)
        self.state.empty_rounds = 0

        chosen = self.coefficients(server_round, accepted)
        self._check_coefficients(chosen, len(accepted))
        weights = chosen.clients if chosen.weights is None else chosen.weights
        private = self.options.dp == "central"
        answered = len(updates) + len(failures)
        if private:
            noise = self._noise_multipliers(server_round, answered, metrics)
            chosen = self._clipped(chosen, accepted)
        # Overflow shows as a non-finite model below, which voids the round with its reason.
        with np.errstate(over="ignore", invalid="ignore"):
            folded = [
                (u, float(c)) for u, c in zip(accepted, chosen.clients, strict=True) if c != 0.0
            ]
            average = self.combine(folded, chosen.global_model, decode_tensors(accepted[0].tensors))
            if private:
                metrics |= self._privatize(
                    server_round, average, weights, answered, accepted, noise
                )
            options = self.options
            velocity = self.state.velocity
            if options.server_learning_rate != 1.0 or options.server_momentum != 0.0:
                average, velocity = aggregate.server_step(
                    average,
                    self.require_global(),
                    velocity,  # a new velocity comes back; this one stays for a voided round
                    learning_rate=options.server_learning_rate,
                    momentum=options.server_momentum,
                )
        if not aggregate.all_finite(average):  # a sum (or the server step) overflowed
            reason = "the aggregate of the accepted updates overflows the model's dtype"
            metrics |= {"rejected": len(updates), "accepted": 0}
            return self._empty_round(
                server_round, metrics, [*rejected, *((u, reason) for u in accepted)], failures
            )
        self.state.velocity = velocity
        metrics |= chosen.metrics
        metrics["weights"] = json.dumps(
            {u.client_id: round(float(w), 6) for u, w in zip(accepted, weights, strict=True)}
        )
        LOG.info(
            f"round {server_round}: aggregated {len(folded)} of {len(updates)} results "
            f"({len(rejected)} rejected, {len(failures)} failures)"
        )
        return RoundResult(average, metrics, accepted)

    def combine(
        self,
        folded: Sequence[tuple[ClientUpdate, float]],
        global_share: float,
        template: Sequence[Array],
    ) -> Model:
        """``θ_avg = Σ c_i θ_i + c_g θ_g`` over ``folded`` (``(update, c_i)`` with c_i ≠ 0),
        streamed: each update is decoded as the fold reaches it. ``template`` gives the
        layers' shapes and dtypes. Updates that share their tensors (SecAgg+ hands every
        client the one unmasked mean) are folded once, with their coefficients summed."""
        shared: dict[int, tuple[ClientUpdate, float]] = {}
        for u, c in folded:
            first, total = shared.get(id(u.tensors), (u, 0.0))
            shared[id(u.tensors)] = (first, total + c)
        terms: Iterator[tuple[Sequence[Array], float]] = (
            (decode_tensors(u.tensors), c) for u, c in shared.values()
        )
        if global_share != 0.0:
            terms = itertools.chain(terms, [(self.require_global(), global_share)])
        return aggregate.weighted_sum(terms, template=template)

    def _clipped(self, chosen: Coefficients, accepted: list[ClientUpdate]) -> Coefficients:
        """``chosen`` with every update scaled to norm at most ``dp_clipping_norm`` (the
        share taken off the updates stays on the global model)."""
        factors = aggregate.clip_factors([u.distance for u in accepted], self.clipping_norm)
        clients = np.asarray(chosen.clients, dtype=np.float64)
        return Coefficients(
            clients * factors,
            global_model=chosen.global_model + float(np.sum(clients * (1.0 - factors))),
            weights=chosen.weights,
            metrics={
                **chosen.metrics,
                "dp_clipped": int(np.sum(factors < 1.0)),
                "dp_clipping_norm": self.clipping_norm,
            },
        )

    @property
    def clipping_norm(self) -> float:
        """This round's clipping norm C (adaptive clipping moves it after each round)."""
        norm = self.state.clipping_norm
        return self.options.dp_clipping_norm if norm is None else norm

    def _noise_multipliers(
        self, server_round: int, answered: int, metrics: Metrics
    ) -> tuple[float, float]:
        """The update's noise multiplier this round and, under adaptive clipping, the
        count's standard deviation σ_b (its default m/20 follows the clients sampled, not
        those accepted, which depend on the data). A σ_b too small for z stops the run."""
        options = self.options
        if options.dp_clipping != "adaptive":
            return options.dp_noise_multiplier, 0.0
        sampled = (self.sampling or (answered, answered))[0]
        stddev = privacy.count_stddev(options.dp_clipped_count_stddev, sampled)
        try:  # the count's noise takes its share of the privacy budget
            return privacy.update_noise_multiplier(options.dp_noise_multiplier, stddev), stddev
        except ValueError as err:
            problem = f"round {server_round}: nothing aggregated: {err}"
            raise NothingAggregatedError(problem, metrics | {"accepted": 0}) from err

    def _privatize(
        self,
        server_round: int,
        average: Model,
        weights: Array,
        answered: int,
        accepted: Sequence[ClientUpdate],
        noise: tuple[float, float],
    ) -> Metrics:
        """Add the round's Gaussian noise to ``average`` in place; account the round;
        under adaptive clipping, move the clipping norm with a noisy unclipped count."""
        options = self.options
        z, stddev = noise
        std = privacy.noise_std(z, self.clipping_norm, weights)
        seed = None if options.seed is None else [options.seed, server_round]
        rng = np.random.default_rng(seed)
        privacy.add_noise(average, std, rng)
        self.state.private_rounds.append(self.sampling or (answered, answered))
        spent = privacy.epsilon(
            self.state.private_rounds, options.dp_noise_multiplier, options.dp_delta
        )
        metrics: Metrics = {"dp_noise_std": std, "epsilon": spent}
        if options.dp_clipping == "adaptive":
            unclipped = sum(1 for u in accepted if u.distance <= self.clipping_norm)
            self.state.clipping_norm, metrics["dp_unclipped_share"] = privacy.adapt_clipping_norm(
                self.clipping_norm,
                unclipped,
                len(accepted),
                stddev=stddev,
                target_quantile=options.dp_target_quantile,
                learning_rate=options.dp_clip_learning_rate,
                rng=rng,
            )
        return metrics

    def _count_releases(self, updates: Sequence[ClientUpdate]) -> float:
        """Record each client's release (local DP: every update sent, valid or not;
        DP-SGD: every update that reports its schedule); ε of the worst client."""
        options = self.options
        sample_level = options.dp == "dp-sgd"
        for update in updates:
            if not sample_level:
                self.state.releases.append((update.client_id, 1.0, 1))
            elif (schedule := dp_sgd_schedule_of(update)) is not None:
                self.state.releases.append((update.client_id, *schedule))
        per_client: dict[str, list[tuple[float, int]]] = {}
        for client, rate, steps in self.state.releases:
            per_client.setdefault(client, []).append((rate, steps))
        # Clients with the same releases have the same ε: each distinct history once.
        histories = {tuple(sorted(h)) for h in per_client.values()}
        z, delta = options.dp_noise_multiplier, options.dp_delta
        if sample_level:
            spent = [privacy.sample_epsilon(h, z, delta) for h in histories]
        else:
            spent = [privacy.epsilon([(1, 1)] * len(h), z, delta) for h in histories]
        return max(spent, default=0.0)

    def require_global(self) -> list[Array]:
        if self.global_model is None:
            raise RuntimeError(
                f"{type(self).__name__} needs the current global model for this setting: "
                "pass the initial model or let the server configure a round first"
            )
        return self.global_model

    # ---- internals ------------------------------------------------------------------

    def _check_coefficients(self, chosen: Coefficients, count: int) -> None:
        """A rule's coefficients must be finite, one per update, and sum to 1."""
        clients = np.asarray(chosen.clients, dtype=np.float64)
        total = float(clients.sum()) + chosen.global_model
        if clients.shape != (count,) or not np.all(np.isfinite(clients)) or abs(total - 1) > 1e-6:
            raise ValueError(
                f"{type(self).__name__}.coefficients gave {clients.tolist()} "
                f"(+ {chosen.global_model} of the global model) for {count} updates: "
                "they must be finite, one per update, and sum to 1"
            )

    def _empty_round(
        self,
        server_round: int,
        metrics: Metrics,
        rejected: Sequence[tuple[ClientUpdate, str]],
        failures: Sequence[str],
    ) -> RoundResult:
        if rejected:
            reasons = Counter(reason for _, reason in rejected)
            said = "; ".join(f"{reason} (x{n})" for reason, n in reasons.most_common(3))
            why = f"all {len(rejected)} updates were rejected: {said}; fix: "
            why += self.explain_rejections(rejected)
        elif failures:
            why = (
                f"all {len(failures)} sampled clients failed (first: {failures[0]}); fix: "
                "see the clients' errors (run_simulation.py --verbose, or flwr log)"
            )
        else:
            why = (
                "no client was sampled or answered; fix: check that enough clients are "
                "connected (min-available-clients) and round-timeout"
            )
        problem = f"round {server_round}: nothing aggregated, keeping the previous model: {why}"
        self.state.empty_rounds += 1
        LOG.warning(problem)
        limit = self.options.max_empty_rounds
        if limit and self.state.empty_rounds >= limit:
            raise NothingAggregatedError(
                f"{problem} (stopping: {self.state.empty_rounds} rounds in a row aggregated "
                f"nothing; max-empty-rounds={limit}, 0 disables the stop)",
                metrics,
            )
        return RoundResult(None, metrics, [], problem)

    def _validate(
        self, server_round: int, updates: Sequence[ClientUpdate]
    ) -> tuple[list[ClientUpdate], list[tuple[ClientUpdate, str]]]:
        """Decode and check every update; return the valid ones and the rejected ones.

        Updates are taken in a canonical order (by content), not in the order clients
        answered: float sums depend on their order, and a rerun with the same seed must
        give the same model bit for bit.
        """
        template: Sequence[Array] | None = self.global_model
        accepted: list[ClientUpdate] = []
        rejected: list[tuple[ClientUpdate, str]] = []
        for update in sorted(updates, key=ClientUpdate.sort_key):
            reason = update.problem
            if reason is None:
                try:
                    update.arrays = decode_tensors(update.tensors)
                except ValueError as err:
                    reason = f"undecodable parameters ({err})"
                else:
                    if template is None:  # no global model known: the first sets the layout
                        template = update.arrays
                    reason = self._check(server_round, update, template)
                    update.arrays = []
            if reason is None:
                accepted.append(update)
            else:
                rejected.append((update, reason))
                LOG.warning(
                    f"round {server_round}: rejected update from client {update.client_id}: "
                    f"{reason}"
                )
        return accepted, rejected

    def _check(
        self, server_round: int, update: ClientUpdate, template: Sequence[Array]
    ) -> str | None:
        n = update.num_examples
        if isinstance(n, bool) or not isinstance(n, int | np.integer):
            return f"num_examples={n!r} is not an integer"
        if n <= 0:
            return f"num_examples={n} is not positive"
        shape_problem = aggregate.mismatch(update.arrays, template)
        if shape_problem is not None:
            return shape_problem
        if not aggregate.all_finite(update.arrays):
            return "parameters contain NaN or Inf"
        if self.needs_distance(server_round) or self.options.dp == "central":
            update.distance = aggregate.distance(update.arrays, self.require_global())
            if not math.isfinite(update.distance):
                return "the update's norm ‖θ_i − θ_g‖ exceeds float64's range"
        if self.options.dp == "dp-sgd" and dp_sgd_schedule_of(update) is None:
            return (
                f"dp = dp-sgd, but it reported no {' and '.join(DP_SGD_METRICS)} "
                "(it did not train with DP-SGD, so its privacy cannot be accounted)"
            )
        return self.check_update(server_round, update)


def secure_aggregation_problem(rule: Rule) -> str | None:
    """Why ``rule`` cannot run under SecAgg+ (None: it can)."""
    if rule.options.dp == "central":
        return (
            "central DP clips each update, and SecAgg+ shows the server only their sum: "
            "use dp = local or dp-sgd (the clients privatize) or none"
        )
    if rule.secure_weight(rule.options) is None:
        return (
            f"{type(rule).__name__} weighs, scores or filters each update with these options, "
            "and SecAgg+ shows the server only the weighted sum: use simple, fedavg, "
            "or hybrid with hybrid-lambda = 1 and robust-filter = none"
        )
    return None


def dp_sgd_schedule_of(update: ClientUpdate) -> tuple[float, int] | None:
    """The ``(sample rate, steps)`` a DP-SGD client reported, or None (absent or malformed)."""
    rate, steps = (update.metrics.get(key) for key in DP_SGD_METRICS)
    if not isinstance(rate, float | int) or not isinstance(steps, int) or isinstance(steps, bool):
        return None
    if not 0 < rate <= 1 or steps < 0:
        return None
    return float(rate), int(steps)


def take_knobs(rule_type: type[Rule] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Move the rule's knobs (fields of its options) out of ``kwargs``, which keeps the rest."""
    known = rule_type.Options.field_names() if rule_type is not None else ()
    return {key: kwargs.pop(key) for key in list(kwargs) if key in known}


def build_rule(
    rule_type: type[Rule] | None,
    *,
    rule: Rule | None,
    options: ServerOptions | None,
    score_fn: ScoreFn | None,
    knobs: Mapping[str, Any],
) -> Rule:
    """The rule an adapter wraps: ``rule`` itself, or ``rule_type`` built from ``options``
    or from keyword ``knobs`` (the fields of ``rule_type.Options``)."""
    if rule is not None:
        if knobs or options is not None or score_fn is not None:
            given = sorted(knobs) + [
                k for k, v in (("options", options), ("score_fn", score_fn)) if v
            ]
            raise TypeError(
                f"pass either rule= or the rule's knobs, not both (got rule= and "
                f"{', '.join(given)}); {type(rule).__name__}'s knobs go into its "
                f"{rule.Options.__name__}"
            )
        if rule_type is not None and not isinstance(rule, rule_type):
            raise TypeError(f"rule= must be a {rule_type.__name__}, not {type(rule).__name__}")
        return rule
    if rule_type is None:
        raise TypeError("pass rule=, or use a strategy class that names its rule")
    if options is not None and knobs:
        raise TypeError(f"pass either options= or the knobs {sorted(knobs)}, not both")
    allowed = rule_type.Options.field_names()
    unknown = sorted(set(knobs) - set(allowed))
    if unknown:
        raise TypeError(
            f"{rule_type.__name__} has no option {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(allowed)}"
        )
    return rule_type(options or rule_type.Options(**knobs), score_fn=score_fn)


class RuleAdapter:
    """What both Flower adapters share: the rule they run, its state, the last round.

    A subclass of a Flower strategy class and of this one; ``of`` names one per rule.
    """

    rule_type: ClassVar[type[Rule] | None] = None
    rule: Rule
    last_result: RoundResult | None
    # Seeded sampling (None: Flower's own, unseeded) and how long to wait for the nodes'
    # partition ids; ``last_sampled`` names the nodes the last training round sampled.
    sampler: SeededSampler | None
    query_timeout: float | None
    last_sampled: list[int | str] | None
    # Logical clients (partitions) served by a pool of nodes: every message names the
    # partition it is for (None: each node is one client, its own partition).
    num_partitions: int | None

    def adopt(
        self,
        rule: Rule | None,
        options: ServerOptions | None,
        score_fn: ScoreFn | None,
        knobs: Mapping[str, Any],
        *,
        sampling_seed: int | None = None,
        query_timeout: float | None = None,
        num_partitions: int | None = None,
    ) -> None:
        """Take ``rule``, or build ``rule_type`` from ``options`` or ``knobs``."""
        self.rule = build_rule(
            self.rule_type, rule=rule, options=options, score_fn=score_fn, knobs=knobs
        )
        self.last_result = None
        self.sampler = None if sampling_seed is None else SeededSampler(sampling_seed)
        self.query_timeout = query_timeout
        self.last_sampled = None
        if num_partitions is not None and num_partitions < 1:
            raise ValueError(f"num_partitions={num_partitions} is not allowed: must be >= 1")
        self.num_partitions = num_partitions

    def assign(
        self, server_round: int, purpose: str, size: int, nodes: Sequence[Node]
    ) -> list[tuple[Node, dict[str, int]]]:
        """A pool's round: ``size`` of the ``num_partitions`` logical clients, each with
        the node that runs it (dealt in turn over ``nodes`` in the order given) and the
        message config naming it.

        Seeded, the partitions are the very ones the seeded sampler draws among nodes
        that report partitions 0..N-1, one a node: a pool repeats one node per client.
        """
        total = self.num_partitions
        assert total is not None, "assign() is for a pool (num_partitions set)"
        if not nodes or size <= 0:
            return []
        size = min(size, total)
        if self.sampler is None:  # Flower's way: unseeded
            partitions = sorted(random.sample(range(total), size))
        else:
            partitions = self.sampler.draw(server_round, purpose, total, size)
        if purpose == "train":
            self.last_sampled = list(partitions)
        return [
            (nodes[i % len(nodes)], {PARTITION_KEY: p, NUM_PARTITIONS_KEY: total})
            for i, p in enumerate(partitions)
        ]

    def reseed(
        self,
        server_round: int,
        purpose: str,
        flower_sample: Sequence[Node],
        available: Sequence[Node],
        ask: Callable[[list[Node]], Mapping[Node, object]],
    ) -> list[Node]:
        """The nodes of this round: as many as Flower sampled (Flower decides how many
        and waits for them), chosen by the seeded sampler among ``available``.

        ``ask(nodes)`` asks nodes that have not reported yet for their partition id and
        returns what those that answered reported; the others are asked again next round.
        """
        if self.sampler is None:
            return list(flower_sample)
        unknown = self.sampler.unknown(available) if flower_sample else []
        if unknown:
            for node, partition_id in ask(unknown).items():
                self.sampler.learn(node, partition_id)
        chosen = self.sampler.sample(server_round, purpose, available, len(flower_sample))
        if len(chosen) < len(flower_sample):
            LOG.warning(
                "round %d: %d of %d nodes sampled for %s; the others have not reported "
                "their partition id yet",
                server_round,
                len(chosen),
                len(flower_sample),
                purpose,
            )
        if purpose == "train":
            self.last_sampled = [self.sampler.label(node) for node in chosen]
        return chosen

    def client_name(self, node: Hashable) -> str:
        """How round results name ``node``: its partition id when it reported one (the same
        in every run), else its Flower id."""
        if self.sampler is not None and node in self.sampler.keys:
            return str(self.sampler.label(node))
        return str(node)

    @classmethod
    def of(cls, rule_type: type[Rule], name: str) -> type[Self]:
        """A subclass named ``name`` whose instances run ``rule_type`` (built from its knobs)."""
        doc = f"{rule_type.__name__} as a {cls.__name__}: {rule_type.__doc__}"
        namespace = {"rule_type": rule_type, "__doc__": doc, "__module__": cls.__module__}
        return type(name, (cls,), namespace)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.rule.options})"

    # strategies.core.Stateful, for checkpoints
    def get_state(self) -> StrategyState:
        return self.rule.state

    def set_state(self, state: StrategyState) -> None:
        self.rule.state = state
