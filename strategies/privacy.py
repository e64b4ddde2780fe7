"""Client-level differential privacy: clip, add Gaussian noise, account ε.

What the server does each round under ``dp = central`` (:class:`~strategies.core.Rule`):

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

The privacy spent is accounted with Google's ``dp_accounting`` RDP accountant (Flower's
``flwr[dp]`` extra) for the mechanism as it runs: neighbouring federations differ in one
client's data (replace-one; the client set and its size stay public), so the clipped
aggregate's sensitivity is ``2 · C · max w_i`` and the multiplier the accountant sees is
``z/2``; a round that samples ``m`` of ``N`` clients (seeded sampling draws without
replacement) is a sampled-without-replacement Gaussian, a round with every client a plain
Gaussian. Rounds that aggregated nothing released nothing and cost nothing.

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
from collections import Counter
from collections.abc import Sequence

import numpy as np

from strategies import aggregate
from strategies.aggregate import Array, Model

DP_MODES = ("none", "central", "local", "dp-sgd")
# Central DP's clipping norm: fixed, or adapted to a quantile of the update norms.
DP_CLIPPINGS = ("fixed", "adaptive")
# What a DP-SGD client reports each round: its Poisson sample rate and its steps.
DP_SGD_METRICS = ("dp_sample_rate", "dp_steps")


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


def dp_sgd_schedule(num_examples: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """``(q, steps)`` of DP-SGD on ``num_examples`` as Opacus runs it: each example in a
    Poisson batch with probability ``q = 1 / ceil(n / B)``, ``int(1 / q)`` batches per
    epoch (one fewer than ``ceil(n / B)`` where ``1 / (1 / k)`` rounds below ``k``)."""
    rate = 1.0 / max(1, math.ceil(num_examples / batch_size))
    return rate, epochs * int(1 / rate)


def sample_epsilon(
    schedules: Sequence[tuple[float, int]], noise_multiplier: float, delta: float
) -> float:
    """ε at ``delta`` of one client's DP-SGD rounds, each ``(q, steps)``, with Opacus's RDP
    accountant (Poisson-subsampled Gaussian steps, add/remove-one example). ``inf``
    without noise."""
    from opacus.accountants import RDPAccountant

    if not schedules:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    accountant = RDPAccountant()
    for (rate, steps), count in Counter(schedules).items():
        accountant.history.append((noise_multiplier, rate, steps * count))
    return float(accountant.get_epsilon(delta))


def epsilon(rounds: Sequence[tuple[int, int]], noise_multiplier: float, delta: float) -> float:
    """ε at ``delta`` after ``rounds`` Gaussian releases, each sampling ``(sampled,
    available)`` clients (a local-DP client's own releases are ``(1, 1)``).

    Replace-one adjacency: the accountant's multiplier is ``noise_multiplier / 2``.
    ``inf`` without noise.
    """
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    if not rounds:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    accountant = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier / 2)
    # RDP adds up over rounds: each kind of round is composed once, with its count.
    for (sampled, available), count in Counter(rounds).items():
        event = (
            gaussian
            if sampled >= available
            else dp_accounting.SampledWithoutReplacementDpEvent(available, sampled, gaussian)
        )
        accountant.compose(event, count)
    return float(accountant.get_epsilon(delta))
