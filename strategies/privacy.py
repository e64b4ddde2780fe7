"""Client-level differential privacy: clip, add Gaussian noise, account ε.

What the server does each round under ``dp = central`` (:class:`~strategies.core.rule.Rule`):

1. every accepted update ``Δ_i = θ_i − θ_g`` is scaled to norm at most ``C``
   (``dp_clipping_norm``), whatever the rule: ``θ = θ_g + Σ w_i min(1, C/‖Δ_i‖) Δ_i``;
2. Gaussian noise of standard deviation ``σ = z · C · max_i w_i`` is added to every
   coordinate (``z = dp_noise_multiplier``). One client moves the aggregate by at most
   ``w_i · C``, so the noise is calibrated to the largest weight any client got this
   round: weighted rules (FedAvg's ``n_i/Σn``, quality weights) get more noise than the
   ``C/m`` Flower's wrappers assume, and ``z`` holds for every client.
3. under ``dp_clipping = adaptive`` (Andrew et al. 2021, as Flower's adaptive-clipping
   wrappers), ``C`` starts at ``dp_clipping_norm`` and after each round moves towards the
   ``dp_target_quantile`` γ of the update norms: ``C ← C · exp(−η_C (b̃ − γ))`` with
   ``b̃`` the share of updates with ``‖Δ_i‖ ≤ C``, counted with ``N(0, σ_b²)`` noise. That
   count is a release too: the update's noise uses ``z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)`` so
   that both together spend what one Gaussian of multiplier ``z`` spends.

The privacy spent is accounted by :mod:`strategies.accounting`.

Under ``dp = local`` each client clips its own update to ``C`` and adds ``N(0, (z·C)²)``
to every coordinate before sending (:func:`privatize_update`), so not even the server
sees its update; each release is a Gaussian with sensitivity ``2C`` (replace-one), and a
round reports the ε of the client that has sent most often (no amplification: the server
knows who was sampled). The noise of K clients adds up in the average, so local DP needs
much more noise for the same model quality.

Under ``dp = dp-sgd`` the privacy is sample-level: each client trains with Opacus's DP-SGD
(every example's gradient clipped to ``C``, ``N(0, (z·C)²)`` added to the batch's sum,
Poisson-sampled batches), so what is protected is one training example of one client
(add/remove-one adjacency), not a client's participation. Each round a client reports its
schedule (sample rate ``q``, steps); the server composes each client's rounds with
Opacus's RDP accountant and reports the ε of the worst client.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from strategies import aggregate
from strategies.accounting import DP_SGD_METRICS, dp_sgd_schedule_of, epsilon, sample_epsilon
from strategies.aggregate import Array, Model
from strategies.core.update import (
    ClientUpdate,
    Coefficients,
    Metrics,
    NothingAggregatedError,
)

DP_MODES = ("none", "central", "local", "dp-sgd")
# Central DP's clipping norm: fixed, or adapted to a quantile of the update norms.
DP_CLIPPINGS = ("fixed", "adaptive")


def noise_std(noise_multiplier: float, clipping_norm: float, weights: Array) -> float:
    """``σ = z · C · max_i w_i``: the noise that gives every client multiplier ``z``."""
    return float(noise_multiplier * clipping_norm * np.max(weights))


def add_noise(model: Model, std: float, rng: np.random.Generator) -> None:
    """Add ``N(0, std²)`` to every float coordinate of ``model``, in place, a layer at a time."""
    for layer in model:
        if np.issubdtype(layer.dtype, np.floating):
            layer += rng.normal(scale=std, size=layer.shape).astype(layer.dtype)


def privatize_update(
    received: Model,
    trained: Model,
    clipping_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> Model:
    """``θ_g + min(1, C/‖Δ‖) Δ + N(0, (z·C)²)`` for the float layers (``Δ = θ − θ_g``);
    other layers are sent as trained."""
    factor = float(
        aggregate.clip_factors([aggregate.distance(trained, received)], clipping_norm)[0]
    )
    sent = [
        (g + factor * (t.astype(np.float64) - g)).astype(t.dtype)
        if np.issubdtype(t.dtype, np.floating)
        else t
        for g, t in zip(received, trained, strict=True)
    ]
    add_noise(sent, noise_multiplier * clipping_norm, rng)
    return sent


def count_stddev(configured: float, sampled: int) -> float:
    """σ_b of adaptive clipping's unclipped count: ``configured``, or m/20 for the ``sampled``
    clients of a round when 0 (Andrew et al.'s choice, Flower's default)."""
    return configured or sampled / 20


def update_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """The multiplier ``z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)`` left for the update when the
    unclipped count gets noise ``σ_b``, so that both releases together are one Gaussian
    mechanism of multiplier ``z`` (Andrew et al. 2021, Thm 1; replace-one: the update's
    sensitivity is ``2C·max w``, the count's 1). Needs ``z < 2σ_b``."""
    if noise_multiplier == 0:
        return 0.0
    if noise_multiplier >= 2 * count_stddev:
        raise ValueError(
            f"dp_noise_multiplier={noise_multiplier!r} needs dp_clipped_count_stddev > "
            f"{noise_multiplier / 2:g} under adaptive clipping (it is {count_stddev:g}): the "
            "noisy count would take the whole privacy budget"
        )
    return float((noise_multiplier**-2 - (2 * count_stddev) ** -2) ** -0.5)


def adapt_clipping_norm(
    clipping_norm: float,
    unclipped: int,
    count: int,
    *,
    stddev: float,
    target_quantile: float,
    learning_rate: float,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """Andrew et al.'s geometric update: ``b̃ = (unclipped + N(0, σ_b²)) / count``,
    ``C ← C · exp(−η_C (b̃ − γ))``; returns the next norm and ``b̃``."""
    share = (unclipped + float(rng.normal(scale=stddev))) / count
    return clipping_norm * math.exp(-learning_rate * (share - target_quantile)), share


# ---- in the rule: the options, the state, the round's hooks ---------------------------


@dataclass(frozen=True, kw_only=True)
class PrivacyOptions:
    """The DP knobs of every rule (a base of :class:`~strategies.core.options.ServerOptions`).

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
            update_noise_multiplier(self.dp_noise_multiplier, stddev)  # raises if z too big
        super().__post_init__()  # type: ignore[misc]


@dataclass
class PrivacyState:
    """What DP carries between rounds (a base of
    :class:`~strategies.core.state.StrategyState`): ``private_rounds``, the ``(sampled,
    available)`` clients of each round released under central DP (what the accountant
    composes); ``releases``, under local DP and DP-SGD, every update a client sent, as
    ``(client, sample rate, steps)`` (a local-DP release is ``(c, 1, 1)``);
    ``clipping_norm``, the next round's clipping norm under adaptive clipping."""

    private_rounds: list[tuple[int, int]] = field(default_factory=list)
    releases: list[tuple[str, float, int]] = field(default_factory=list)
    clipping_norm: float | None = None

    def to_arrays(self) -> dict[str, list[Array]]:
        clients, rates, steps = zip(*self.releases, strict=True) if self.releases else ((), (), ())
        arrays: dict[str, list[Array]] = super().to_arrays()  # type: ignore[misc]
        arrays["private_rounds"] = [np.array(self.private_rounds, dtype=np.int64).reshape(-1, 2)]
        arrays["releases"] = [
            np.array(clients, dtype=np.str_),
            np.array(rates, dtype=np.float64),
            np.array(steps, dtype=np.int64),
        ]
        if self.clipping_norm is not None:
            arrays["clipping_norm"] = [np.array(self.clipping_norm, dtype=np.float64)]
        return arrays

    @classmethod
    def fields_from(cls, arrays: Mapping[str, Sequence[Array]]) -> dict[str, Any]:
        private = arrays.get("private_rounds")
        releases = arrays.get("releases")
        clipping_norm = arrays.get("clipping_norm")
        fields: dict[str, Any] = super().fields_from(arrays)  # type: ignore[misc]
        return fields | {
            "private_rounds": [] if not private else [(int(m), int(n)) for m, n in private[0]],
            "releases": []
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
            "clipping_norm": float(clipping_norm[0]) if clipping_norm else None,
        }


class PrivateRule:
    """DP inside every round of a rule (a base of :class:`~strategies.core.rule.Rule`, whose
    marked lines call these hooks): central DP clips the updates, adds the noise and
    accounts; local DP and DP-SGD account the clients' releases, and DP-SGD refuses an
    update without its schedule."""

    options: PrivacyOptions
    state: PrivacyState
    sampling: tuple[int, int] | None
    global_model: list[Array] | None
    _noise: tuple[float, float]  # this round's (update noise multiplier, count σ_b)

    def received(self, updates: Sequence[ClientUpdate], metrics: Metrics) -> None:
        if self.options.dp in ("local", "dp-sgd"):  # the clients' own releases
            metrics["epsilon"] = self._count_releases(updates)

    def measures_distance(self) -> bool:
        return self.options.dp == "central"

    def refuses(self, update: ClientUpdate) -> str | None:
        if self.options.dp == "dp-sgd" and dp_sgd_schedule_of(update) is None:
            return (
                f"dp = dp-sgd, but it reported no {' and '.join(DP_SGD_METRICS)} "
                "(it did not train with DP-SGD, so its privacy cannot be accounted)"
            )
        return None

    def adjusted(
        self,
        server_round: int,
        chosen: Coefficients,
        accepted: list[ClientUpdate],
        answered: int,
        metrics: Metrics,
    ) -> Coefficients:
        if self.options.dp != "central":
            return chosen
        self._noise = self._noise_multipliers(server_round, answered, metrics)
        return self._clipped(chosen, accepted)

    def released(
        self,
        server_round: int,
        average: Model,
        weights: Array,
        answered: int,
        accepted: Sequence[ClientUpdate],
    ) -> Metrics:
        if self.options.dp != "central":
            return {}
        return self._privatize(server_round, average, weights, answered, accepted, self._noise)

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
        stddev = count_stddev(options.dp_clipped_count_stddev, sampled)
        try:  # the count's noise takes its share of the privacy budget
            return update_noise_multiplier(options.dp_noise_multiplier, stddev), stddev
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
        std = noise_std(z, self.clipping_norm, weights)
        seed = None if options.seed is None else [options.seed, server_round]
        rng = np.random.default_rng(seed)
        add_noise(average, std, rng)
        self.state.private_rounds.append(self.sampling or (answered, answered))
        spent = epsilon(self.state.private_rounds, options.dp_noise_multiplier, options.dp_delta)
        metrics: Metrics = {"dp_noise_std": std, "epsilon": spent}
        if options.dp_clipping == "adaptive":
            unclipped = sum(1 for u in accepted if u.distance <= self.clipping_norm)
            self.state.clipping_norm, metrics["dp_unclipped_share"] = adapt_clipping_norm(
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
            spent = [sample_epsilon(h, z, delta) for h in histories]
        else:
            spent = [epsilon([(1, 1)] * len(h), z, delta) for h in histories]
        return max(spent, default=0.0)
