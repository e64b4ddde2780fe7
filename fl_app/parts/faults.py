"""Fault injection: clients that fail, straggle, poison their update or lie.

Off by default (``fault-kind = "none"``). A fixed, seed-chosen ``fault-fraction`` of the
clients is faulty for the whole run; each of them, in every round:

- ``raise``: raises during ``fit`` (a crash, counted as a failure);
- ``straggle``: sleeps ``straggle-seconds`` before answering (past ``round-timeout``);
- ``nan`` / ``inf``: sends parameters with a NaN / +Inf in them;
- ``wrong-shape``: sends a first layer with one row missing;
- ``zero-examples`` / ``negative-examples``: reports 0 / -n training examples;
- ``scale``: sends ``θ_g + s·Δ`` (``s = fault-scale``, ``Δ`` its honest update);
- ``sign-flip``: sends ``θ_g − Δ``;
- ``lie-quality``: sends ``θ_g − s·Δ`` and reports perfect quality (``val_accuracy`` 1,
  ``val_loss`` 0): the attack quality weighting from client metrics cannot see.
- ``little-is-enough`` (after Baruch et al. 2019, "A little is enough"): sends
  ``θ_g + μ − s·σ``, with ``μ`` and ``σ`` the per-coordinate mean and standard deviation
  of the updates it trains on ``LIE_SHARDS`` disjoint shards of its own data (its estimate
  of what honest clients send): close to the honest updates in norm and direction, a
  small shift in every coordinate. Its metrics are those of its honest training.

The optional part ``faults``: its config keys and what a poisoned update is (numpy only,
no torch or Flower: the config imports this module); :mod:`fl_app.parts.faulty_client`
wraps an honest client, fails or straggles before it trains, and applies :func:`poison`
to what it trained.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from fl_app.kit.keys import keys, option
from fl_app.kit.seeds import rng_for

Arrays = list[NDArray[Any]]
BEFORE_TRAINING = ("raise", "straggle")
POISONINGS = (
    "nan",
    "inf",
    "wrong-shape",
    "zero-examples",
    "negative-examples",
    "scale",
    "sign-flip",
    "lie-quality",
    "little-is-enough",
)
# Shards a little-is-enough client trains on to estimate the honest updates' spread.
LIE_SHARDS = 4
FAULT_KINDS = ("none", *BEFORE_TRAINING, *POISONINGS)


@keys
class FaultKeys:
    """The config keys of fault injection (off by default)."""

    fault_kind: str = option(
        "what the faulty clients do (see fl_app/parts/faults.py)", choices=FAULT_KINDS
    )
    fault_fraction: float = option(
        "share of clients that are faulty (the same ones every round)", at_least=0, at_most=1
    )
    fault_scale: float = option("fault-kind scale: factor applied to the update", above=0)
    straggle_seconds: float = option("fault-kind straggle: delay before answering", at_least=0)


def is_faulty(cfg: Any, partition_id: int, num_partitions: int) -> bool:
    """Whether client ``partition_id`` is one of the ``fault-fraction`` faulty clients."""
    if cfg.fault_kind == "none" or cfg.fault_fraction == 0:
        return False
    count = round(cfg.fault_fraction * num_partitions)
    chosen = rng_for(cfg.seed, "faulty-clients").permutation(num_partitions)[:count]
    return partition_id in set(chosen.tolist())


def poison(
    kind: str,
    received: Arrays,
    trained: Arrays,
    num_examples: int,
    metrics: dict[str, Any],
    scale: float,
) -> tuple[Arrays, int, dict[str, Any]]:
    """What a faulty client of ``kind`` sends instead of (trained, num_examples, metrics)."""
    arrays = [np.array(a, copy=True) for a in trained]
    if kind in ("nan", "inf"):
        arrays[0].reshape(-1)[0] = np.nan if kind == "nan" else np.inf
    elif kind == "wrong-shape":
        arrays[0] = arrays[0][:-1]
    elif kind == "zero-examples":
        num_examples = 0
    elif kind == "negative-examples":
        num_examples = -num_examples
    elif kind in ("scale", "sign-flip", "lie-quality"):
        factor = {"scale": scale, "sign-flip": -1.0, "lie-quality": -scale}[kind]
        arrays = [
            (g + factor * (t - g)).astype(t.dtype) for g, t in zip(received, trained, strict=True)
        ]
        if kind == "lie-quality":
            metrics = {**metrics, "val_accuracy": 1.0, "val_loss": 0.0}
    return arrays, num_examples, metrics


def little_is_enough(received: Arrays, shard_models: list[Arrays], scale: float) -> Arrays:
    """``θ_g + μ − s·σ``: ``μ``, ``σ`` the per-coordinate mean and (population) standard
    deviation of the shard updates ``θ_k − θ_g``."""
    sent = []
    for index, g in enumerate(received):
        deltas = np.stack([model[index] - g for model in shard_models]).astype(np.float64)
        shifted = g + deltas.mean(axis=0) - scale * deltas.std(axis=0)
        sent.append(shifted.astype(g.dtype))
    return sent
