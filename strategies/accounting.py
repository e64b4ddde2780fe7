"""The privacy a DP run spends, as ε at δ, with the RDP accountants of Google's
``dp_accounting`` and of Opacus (the optional part ``dp``).

The privacy spent is accounted with Google's ``dp_accounting`` RDP accountant (Flower's
``flwr[dp]`` extra) for the mechanism as it runs: neighbouring federations differ in one
client's data (replace-one; the client set and its size stay public), so the clipped
aggregate's sensitivity is ``2 · C · max w_i`` and the multiplier the accountant sees is
``z/2``; a round that samples ``m`` of ``N`` clients (seeded sampling draws without
replacement) is a sampled-without-replacement Gaussian, a round with every client a plain
Gaussian. Rounds that aggregated nothing released nothing and cost nothing.

DP-SGD's sample-level ε composes each client's rounds (sample rate ``q``, steps) with
Opacus's RDP accountant (Poisson-subsampled Gaussian steps, add/remove-one example).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from strategies.core.update import ClientUpdate

# What a DP-SGD client reports each round: its Poisson sample rate and its steps.
DP_SGD_METRICS = ("dp_sample_rate", "dp_steps")


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


def dp_sgd_schedule_of(update: ClientUpdate) -> tuple[float, int] | None:
    """The ``(sample rate, steps)`` a DP-SGD client reported, or None (absent or malformed)."""
    rate, steps = (update.metrics.get(key) for key in DP_SGD_METRICS)
    if not isinstance(rate, float | int) or not isinstance(steps, int) or isinstance(steps, bool):
        return None
    if not 0 < rate <= 1 or steps < 0:
        return None
    return float(rate), int(steps)
