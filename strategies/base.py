"""Behaviour every project strategy shares, on top of Flower's FedAvg.

Flower's ``FedAvg`` gives client sampling, fit/evaluate configuration, centralized
evaluation and evaluate-metric aggregation. This base replaces ``aggregate_fit`` with one
pipeline: decode each update without copying, validate it against the global model,
let the strategy choose coefficients, fold the updates into one accumulator, take the
server step, and report what happened in the round's metrics.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.common import (
    FitRes,
    Metrics,
    NDArrays,
    Parameters,
    Scalar,
    ndarray_to_bytes,
    parameters_to_ndarrays,
)
from flwr.common.logger import log
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as FlowerFedAvg

from strategies import aggregate
from strategies.aggregate import Array, Model

MetricsFn = Callable[[list[tuple[int, Metrics]]], Metrics]


def weighted_metrics(results: list[tuple[int, Metrics]]) -> Metrics:
    """Example-weighted mean of every numeric metric the clients reported."""
    totals: dict[str, float] = {}
    weights: dict[str, int] = {}
    for num_examples, metrics in results:
        for key, value in metrics.items():
            if isinstance(value, int | float) and math.isfinite(value):
                totals[key] = totals.get(key, 0.0) + num_examples * float(value)
                weights[key] = weights.get(key, 0) + num_examples
    return {key: totals[key] / weights[key] for key in totals if weights[key] > 0}


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


def decode_parameters(parameters: Parameters) -> list[Array]:
    """Read-only views of the arrays in ``parameters``, without copying their bytes.

    Flower serialises each array with ``np.save``; the data follows the ``.npy`` header,
    so ``np.frombuffer`` can point straight at it.
    """
    arrays = []
    for tensor in parameters.tensors:
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


def encode_parameters(arrays: list[Array]) -> Parameters:
    """``arrays`` as Flower ``Parameters``, byte for byte what ``ndarrays_to_parameters`` gives.

    Each C-contiguous layer is copied once, straight into its ``.npy`` bytes (``np.save``
    into a buffer copies twice), and ``arrays`` is emptied as it goes, so the peak is
    the model plus one layer.
    """
    tensors = []
    while arrays:
        array = arrays.pop(0)
        if not array.flags.c_contiguous or array.dtype.kind not in "biuf":
            tensors.append(ndarray_to_bytes(array))
            continue
        header = io.BytesIO()  # a plain dtype's header always fits format 1.0, as in np.save
        np.lib.format.write_array_header_1_0(
            header, np.lib.format.header_data_from_array_1_0(array)
        )
        tensors.append(b"".join((header.getvalue(), array.data)))
        del array
    return Parameters(tensors=tensors, tensor_type="numpy.ndarray")


def _content_key(result: tuple[ClientProxy, FitRes]) -> tuple[int, bytes]:
    """A cheap sort key that depends on what a client sent, not on when or who it is.

    The tail of each tensor holds its last values; two updates that agree there are,
    in practice, the same update, so their order does not matter.
    """
    _, fit_res = result
    num_examples = fit_res.num_examples if isinstance(fit_res.num_examples, int) else 0
    return num_examples, b"".join(bytes(t[-16:]) for t in fit_res.parameters.tensors)


@dataclass(slots=True)
class ClientUpdate:
    """One client's update as the strategy sees it.

    ``arrays`` are the decoded layers while the update is validated (``check_update``);
    they are released after validation, so memory does not grow with the number of
    clients, and decoded again, one update at a time, to fold them. What a strategy
    needs of the layers to choose coefficients is measured during validation:
    ``quality`` (quality-weighted strategies) and ``distance`` ``‖θ_i − θ_g‖`` (when
    :meth:`AggregationStrategy.needs_distance` says so).
    """

    client_id: str
    parameters: Parameters
    arrays: list[Array]
    num_examples: int
    metrics: dict[str, Scalar]
    quality: float = math.nan
    distance: float = math.nan


@dataclass
class Coefficients:
    """What a strategy decides for a round: ``θ = c_g θ_g + Σ c_i θ_i``.

    ``clients`` has one coefficient per valid update (0 drops it); ``global_model`` is
    the share kept of the current global model (non-zero only for norm clipping).
    ``weights`` are the per-client weights reported in the metrics; ``metrics`` is any
    strategy-specific detail for the round.
    """

    clients: np.ndarray[Any, np.dtype[np.float64]]
    global_model: float = 0.0
    weights: np.ndarray[Any, np.dtype[np.float64]] | None = None
    metrics: dict[str, Scalar] = field(default_factory=dict)


class AggregationStrategy(FlowerFedAvg):
    """Base of the project strategies: validated, streaming aggregation with a server step.

    Subclasses only decide the coefficients (:meth:`coefficients`) and, when they need
    more than the shared checks, validate further (:meth:`check_update`).

    Update rule: ``θ_avg = Σ c_i θ_i`` (``Σ c_i = 1``), then the FedAvgM server step
    ``Δ = θ_avg − θ_g``, ``v ← β v + Δ``, ``θ_g ← θ_g + η v``.

    Parameters
    ----------
    server_learning_rate : float
        η > 0. 1.0 (with β = 0) takes the average as the new global model.
    server_momentum : float
        β in [0, 1). 0.0 disables server momentum.
    **kwargs
        Flower's ``FedAvg`` arguments: ``fraction_fit``, ``fraction_evaluate``,
        ``min_fit_clients``, ``min_evaluate_clients``, ``min_available_clients``,
        ``evaluate_fn``, ``on_fit_config_fn``, ``on_evaluate_config_fn``,
        ``accept_failures``, ``initial_parameters``, ``fit_metrics_aggregation_fn``,
        ``evaluate_metrics_aggregation_fn`` (both default to the example-weighted mean).

    Every update is checked before it is folded in: it must decode, match the global
    model's layer shapes and dtypes, hold only finite values, and report a positive
    integer ``num_examples``. A failing update is rejected, logged with the client's id
    and the reason, and counted in the round's ``rejected`` metric. When nothing valid
    arrives the round returns no parameters, so Flower keeps the previous global model.
    """

    def __init__(
        self,
        *,
        server_learning_rate: float = 1.0,
        server_momentum: float = 0.0,
        fit_metrics_aggregation_fn: MetricsFn | None = weighted_metrics,
        evaluate_metrics_aggregation_fn: MetricsFn | None = weighted_metrics,
        **kwargs: Any,
    ) -> None:
        if not server_learning_rate > 0:
            raise ValueError(f"server_learning_rate={server_learning_rate!r}: must be > 0")
        if not 0.0 <= server_momentum < 1.0:
            raise ValueError(f"server_momentum={server_momentum!r}: must be in [0, 1)")
        super().__init__(
            fit_metrics_aggregation_fn=fit_metrics_aggregation_fn,
            evaluate_metrics_aggregation_fn=evaluate_metrics_aggregation_fn,
            **kwargs,
        )
        self.server_learning_rate = server_learning_rate
        self.server_momentum = server_momentum
        self.global_model: NDArrays | None = None
        self.velocity: Model | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(accept_failures={self.accept_failures})"

    # ---- state to checkpoint --------------------------------------------------------

    def state(self) -> dict[str, Model]:
        """A copy of what the strategy carries from round to round (server momentum)."""
        return {} if self.velocity is None else {"velocity": [v.copy() for v in self.velocity]}

    def load_state(self, state: Mapping[str, Sequence[Array]]) -> None:
        """Restore what :meth:`state` returned."""
        velocity = state.get("velocity")
        self.velocity = None if velocity is None else [np.array(v) for v in velocity]

    # ---- hooks for subclasses -------------------------------------------------------

    def coefficients(self, server_round: int, updates: list[ClientUpdate]) -> Coefficients:
        """Coefficients of the valid ``updates`` (summing to 1 with ``global_model``)."""
        raise NotImplementedError

    def check_update(self, server_round: int, update: ClientUpdate) -> str | None:
        """Strategy-specific validation; return the reason to reject, or None."""
        return None

    def needs_distance(self, server_round: int) -> bool:
        """Whether :meth:`coefficients` reads ``ClientUpdate.distance`` this round."""
        return False

    # ---- Flower Strategy API --------------------------------------------------------

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        parameters = super().initialize_parameters(client_manager)
        if parameters is not None:
            self.global_model = parameters_to_ndarrays(parameters)
        return parameters

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, Any]]:
        # The server hands over the current global model here every round: keep it
        # to validate updates against and to take the server step from.
        self.global_model = parameters_to_ndarrays(parameters)
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        metrics: dict[str, Scalar] = {"results": len(results), "failures": len(failures)}
        if not self.accept_failures and failures:
            log(
                WARNING,
                "round %d: %d failures and accept_failures=False",
                server_round,
                len(failures),
            )
            return None, metrics
        updates, rejected = self._validate(server_round, results)
        metrics |= {"rejected": rejected, "accepted": len(updates)}
        if not updates:
            log(
                WARNING,
                "round %d: no valid update; keeping the previous global model",
                server_round,
            )
            return None, metrics

        chosen = self.coefficients(server_round, updates)
        folded = [(u, float(c)) for u, c in zip(updates, chosen.clients, strict=True) if c != 0.0]
        # Decoded one update at a time, as the fold reaches it.
        terms: Iterator[tuple[Sequence[Array], float]] = (
            (decode_parameters(u.parameters), c) for u, c in folded
        )
        if chosen.global_model != 0.0:
            terms = itertools.chain(terms, [(self._require_global(), chosen.global_model)])
        average = aggregate.weighted_sum(terms, template=decode_parameters(updates[0].parameters))
        if self.server_learning_rate != 1.0 or self.server_momentum != 0.0:
            average, self.velocity = aggregate.server_step(
                average,
                self._require_global(),
                self.velocity,
                learning_rate=self.server_learning_rate,
                momentum=self.server_momentum,
            )

        weights = chosen.clients if chosen.weights is None else chosen.weights
        metrics |= chosen.metrics
        metrics["weights"] = json.dumps(
            {u.client_id: round(float(w), 6) for u, w in zip(updates, weights, strict=True)}
        )
        if self.fit_metrics_aggregation_fn is not None:
            client_metrics = [(u.num_examples, u.metrics) for u in updates]
            metrics = self.fit_metrics_aggregation_fn(client_metrics) | metrics
        log(
            INFO,
            "round %d: aggregated %d of %d results (%d rejected, %d failures)",
            server_round,
            len(folded),
            len(results),
            rejected,
            len(failures),
        )
        return encode_parameters(average), metrics

    # ---- internals ------------------------------------------------------------------

    def _require_global(self) -> NDArrays:
        if self.global_model is None:
            raise RuntimeError(
                f"{type(self).__name__} needs the current global model for this setting: "
                "pass initial_parameters or let the server call configure_fit first"
            )
        return self.global_model

    def _validate(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]]
    ) -> tuple[list[ClientUpdate], int]:
        """Decode and check every result; return the valid updates and the rejected count.

        Results are taken in a canonical order (by content), not in the order clients
        answered: float sums depend on their order, and a rerun with the same seed must
        give the same model bit for bit.
        """
        template: Sequence[Array] | None = self.global_model
        updates: list[ClientUpdate] = []
        rejected = 0
        for proxy, fit_res in sorted(results, key=_content_key):
            reason: str | None
            try:
                arrays = decode_parameters(fit_res.parameters)
            except (ValueError, TypeError) as err:
                arrays, reason = [], f"undecodable parameters ({err})"
            else:
                if template is None:  # no global model known: the first result sets the layout
                    template = arrays
                update = ClientUpdate(
                    proxy.cid, fit_res.parameters, arrays, fit_res.num_examples, fit_res.metrics
                )
                reason = self._check(server_round, update, template)
                update.arrays = []
            if reason is None:
                updates.append(update)
            else:
                rejected += 1
                log(
                    WARNING,
                    "round %d: rejected update from client %s: %s",
                    server_round,
                    proxy.cid,
                    reason,
                )
        return updates, rejected

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
        if self.needs_distance(server_round):
            update.distance = aggregate.distance(update.arrays, self._require_global())
        return self.check_update(server_round, update)
