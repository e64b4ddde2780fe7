"""Flower's own robust aggregators as rules, to compare against (not part of the four), and
Flower's FedAvg and FedAdam as reference rows (``flower-fedavg``, ``flower-fedadam``).

Krum, MultiKrum, Bulyan, FedMedian and FedTrimmedAvg combine the updates with the very
functions Flower's legacy strategies call in ``aggregate_fit``
(``flwr.server.strategy.aggregate``), with the same arguments. Everything around the
combination is the project's: validation and rejection, seeded sampling, records,
checkpoints and what the optional parts add, on both Flower API halves. So a robustness table
compares aggregation rules, and nothing else. (The rules see the updates in a canonical
order, by content, so a run is reproducible; Flower's Bulyan breaks its repeated Krum's
ties by that order.)

They are experiment baselines (``strategy = flower-krum`` ...), registered in
:data:`BASELINES`, not in :data:`strategies.REGISTRY`. Unlike the project's rules they
hold every update in memory at once (Flower's functions stack them), and Krum/Bulyan
compute all K² pairwise distances.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from strategies import aggregate
from strategies.aggregate import Array, Model
from strategies.core.codec import decode_tensors
from strategies.core.options import ServerOptions
from strategies.core.rule import Rule
from strategies.core.update import ClientUpdate, Coefficients

Results = list[tuple[list[Array], int]]

NO_CENTRAL_DP = "dp='central': Flower's robust aggregators combine the updates their own way, and central DP needs the weighted sum of clipped updates: use dp='none' or 'local'"  # part: dp


@dataclass(frozen=True, kw_only=True)
class FlowerRobustOptions(ServerOptions):
    """Knobs of Flower's robust aggregators (Flower's own names and defaults).

    num_malicious_clients : f, the attackers Krum, MultiKrum and Bulyan assume (Bulyan
        needs at least 4f + 3 updates).
    num_clients_to_keep : MultiKrum's m (0: K − f, the updates that are not attackers).
    trimmed_beta : FedTrimmedAvg's β in [0, 0.5): the share cut at each end of every
        coordinate.
    """

    num_malicious_clients: int = 0
    num_clients_to_keep: int = 0
    trimmed_beta: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("num_malicious_clients", "num_clients_to_keep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r}: must be an int >= 0")
        if not 0.0 <= self.trimmed_beta < 0.5:
            raise ValueError(f"trimmed_beta={self.trimmed_beta!r}: must be in [0, 0.5)")
        if self.dp == "central":  # part: dp
            raise ValueError(NO_CENTRAL_DP)  # part: dp


class FlowerRobustRule(Rule):
    """A Flower aggregation function over every accepted update, in place of the weighted
    sum. Weights reported: uniform (the function sees every accepted update)."""

    Options = FlowerRobustOptions
    options: FlowerRobustOptions

    def coefficients(self, server_round: int, updates: list[ClientUpdate]) -> Coefficients:
        return Coefficients(aggregate.uniform_weights(len(updates)))

    def combine(
        self,
        folded: Sequence[tuple[ClientUpdate, float]],
        global_share: float,
        template: Sequence[Array],
    ) -> Model:
        results: Results = [(decode_tensors(u.tensors), int(u.num_examples)) for u, _ in folded]
        combined = self.flower(results)
        # A writable copy in the model's dtypes (Krum returns one client's read-only view).
        return [np.array(a, dtype=t.dtype) for a, t in zip(combined, template, strict=True)]

    def flower(self, results: Results) -> list[Array]:
        """What Flower's aggregation function makes of ``results``."""
        raise NotImplementedError


class KrumRule(FlowerRobustRule):
    """Krum (Blanchard et al. 2017): the update with the least summed squared distance to
    its K − f − 2 nearest others (Flower's ``Krum``)."""

    def flower(self, results: Results) -> list[Array]:
        from flwr.server.strategy.aggregate import aggregate_krum

        return aggregate_krum(results, self.options.num_malicious_clients, 0)


class MultiKrumRule(FlowerRobustRule):
    """MultiKrum: the example-weighted mean of the m best Krum scores (Flower's ``Krum``
    with ``num_clients_to_keep = m``; m = K − f when 0)."""

    def flower(self, results: Results) -> list[Array]:
        from flwr.server.strategy.aggregate import aggregate_krum

        options = self.options
        keep = options.num_clients_to_keep or len(results) - options.num_malicious_clients
        return aggregate_krum(results, options.num_malicious_clients, max(keep, 1))


class BulyanRule(FlowerRobustRule):
    """Bulyan (El Mhamdi et al. 2018): K − 2f updates chosen by repeated Krum, then the
    coordinate-wise mean of the K − 4f values closest to their median (Flower's
    ``Bulyan``; it needs K >= 4f + 3)."""

    def flower(self, results: Results) -> list[Array]:
        from flwr.server.strategy.aggregate import aggregate_bulyan, aggregate_krum

        f = self.options.num_malicious_clients
        if len(results) < 4 * f + 3:
            raise ValueError(
                f"Bulyan needs at least 4f + 3 = {4 * f + 3} updates (num-malicious-clients "
                f"= {f}), got {len(results)}"
            )
        return aggregate_bulyan(results, f, aggregate_krum, to_keep=0)


class MedianRule(FlowerRobustRule):
    """Coordinate-wise median (Yin et al. 2018; Flower's ``FedMedian``)."""

    def flower(self, results: Results) -> list[Array]:
        from flwr.server.strategy.aggregate import aggregate_median

        return aggregate_median(results)


class TrimmedMeanRule(FlowerRobustRule):
    """Coordinate-wise mean without the β share of smallest and largest values (Flower's
    ``FedTrimmedAvg``)."""

    def flower(self, results: Results) -> list[Array]:
        from flwr.server.strategy.aggregate import aggregate_trimmed_avg

        return aggregate_trimmed_avg(results, self.options.trimmed_beta)


class FedAvgReferenceRule(FlowerRobustRule):
    """Flower's FedAvg as a reference row: the example-weighted mean by Flower's own
    ``aggregate`` (with ``proximal-mu``, Flower's FedProx)."""

    def flower(self, results: Results) -> list[Array]:
        from flwr.server.strategy.aggregate import aggregate

        return aggregate(results)


class FedAdamReferenceRule(FlowerRobustRule):
    """Flower's legacy ``FedAdam`` itself, with its defaults (η = 0.1, β₁ = 0.9, β₂ = 0.99,
    τ = 1e-9), fed each round's accepted updates: a reference row. Its moments live in that
    object, not in the checkpoint: a resumed run starts them again."""

    flower_strategy: Any = None

    def flower(self, results: Results) -> list[Array]:
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
        from flwr.server.strategy import FedAdam

        if self.flower_strategy is None:
            start = ndarrays_to_parameters(self.require_global())
            self.flower_strategy = FedAdam(initial_parameters=start)
        self.rounds = getattr(self, "rounds", 0) + 1
        ok = Status(Code.OK, "")
        fits = [(None, FitRes(ok, ndarrays_to_parameters(a), n, {})) for a, n in results]
        parameters, _ = self.flower_strategy.aggregate_fit(self.rounds, fits, [])
        return parameters_to_ndarrays(parameters)


BASELINES: dict[str, type[FlowerRobustRule]] = {
    "flower-krum": KrumRule,
    "flower-multikrum": MultiKrumRule,
    "flower-bulyan": BulyanRule,
    "flower-median": MedianRule,
    "flower-trimmed-mean": TrimmedMeanRule,
    "flower-fedavg": FedAvgReferenceRule,
    "flower-fedadam": FedAdamReferenceRule,
}
