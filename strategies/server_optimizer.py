"""The server's optimizer step on the aggregate, the optional part ``server-optimizer``:
FedAvgM (Hsu et al. 2019), after every rule's fold.

With ``Δ = θ_avg − θ_g`` the round's aggregate change, the server keeps a velocity ``v``
and takes ``v ← β v + Δ``, ``θ_g ← θ_g + η v`` (``server_learning_rate`` η,
``server_momentum`` β). η = 1, β = 0 is the fold itself. The step comes after any noise
an optional part adds; a step whose model is not finite voids the round, velocity and all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from strategies.aggregate import Array, Model, accumulator_dtype, cast_like


def server_step(
    average: Model,
    global_model: Sequence[Array],
    velocity: Model | None,
    *,
    learning_rate: float,
    momentum: float,
) -> tuple[Model, Model | None]:
    """FedAvgM, in place on ``average``: ``Δ = θ_avg − θ_g``, ``v ← β v + Δ``, ``θ_g ← θ_g + η v``.
    Returns the model and a new velocity (``velocity`` is left as it was); η=1, β=0: ``average``."""
    if learning_rate == 1.0 and momentum == 0.0:
        return average, None
    # Float layers are updated in place; integer layers in a float64 copy, rounded back.
    work = [a if a.dtype == accumulator_dtype(a.dtype) else a.astype(np.float64) for a in average]
    for delta, g in zip(work, global_model, strict=True):
        np.subtract(delta, g, out=delta)
    step = work
    if momentum > 0.0:
        previous = velocity or [np.zeros_like(d) for d in work]
        step = velocity = [
            np.multiply(v, momentum) + d for v, d in zip(previous, work, strict=True)
        ]
    for out, s, g in zip(work, step, global_model, strict=True):
        np.multiply(s, learning_rate, out=out)
        np.add(out, g, out=out)
    return [cast_like(w, a.dtype) for w, a in zip(work, average, strict=True)], velocity


@dataclass(frozen=True, kw_only=True)
class ServerOptimizerOptions:
    """The step's knobs (a base of :class:`~strategies.core.options.ServerOptions`):
    ``server_learning_rate`` η > 0 and ``server_momentum`` β in [0, 1)."""

    server_learning_rate: float = 1.0  # 1.0 with β = 0: the average is the new model
    server_momentum: float = 0.0

    def __post_init__(self) -> None:
        lr, beta = self.server_learning_rate, self.server_momentum
        if not 0 < lr < math.inf:
            raise ValueError(f"server_learning_rate={lr!r}: must be finite and > 0")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"server_momentum={beta!r}: must be in [0, 1)")
        super().__post_init__()  # type: ignore[misc]


@dataclass
class ServerOptimizerState:
    """The velocity ``v`` (a base of :class:`~strategies.core.state.StrategyState`; None
    while β = 0 or before the first step)."""

    velocity: Model | None = None

    def to_arrays(self) -> dict[str, list[Array]]:
        arrays: dict[str, list[Array]] = super().to_arrays()  # type: ignore[misc]
        if self.velocity is not None:
            arrays["velocity"] = [v.copy() for v in self.velocity]
        return arrays

    @classmethod
    def fields_from(cls, arrays: Mapping[str, Sequence[Array]]) -> dict[str, Any]:
        velocity = arrays.get("velocity")
        fields: dict[str, Any] = super().fields_from(arrays)  # type: ignore[misc]
        return fields | {"velocity": None if velocity is None else [np.array(v) for v in velocity]}


class ServerOptimizer:
    """The step in every round of a rule (a base of :class:`~strategies.core.rule.Rule`, whose
    marked lines call these hooks)."""

    options: ServerOptimizerOptions
    state: ServerOptimizerState
    require_global: Callable[[], list[Array]]
    _velocity: Model | None = None  # this round's, kept if its model is

    def stepped(self, server_round: int, average: Model) -> Model:
        lr, beta = self.options.server_learning_rate, self.options.server_momentum
        self._velocity = self.state.velocity
        if lr == 1.0 and beta == 0.0:
            return average
        average, self._velocity = server_step(
            average, self.require_global(), self._velocity, learning_rate=lr, momentum=beta
        )
        return average

    def committed(self, server_round: int) -> None:
        self.state.velocity = self._velocity
