"""The server's optimizer step on the aggregate, the optional part ``server-optimizer``: FedAvgM
(Hsu et al. 2019) and FedAdagrad, FedAdam, FedYogi (Reddi et al. 2021), after every rule's fold.

With ``Δ = θ_avg − θ_g`` the round's aggregate change (the pseudo-gradient):

- ``sgd`` (FedAvgM): ``m ← β m + Δ``, ``θ_g ← θ_g + η m`` (``server_momentum`` β);
  η = 1, β = 0 is the fold itself.
- ``adagrad``, ``adam``, ``yogi`` (Flower's formulas): ``m ← β₁ m + (1 − β₁) Δ``, then
  ``v ← v + Δ²`` (adagrad), ``v ← β₂ v + (1 − β₂) Δ²`` (adam) or
  ``v ← v − (1 − β₂) Δ² sign(v − Δ²)`` (yogi), and ``θ_g ← θ_g + η_t m / (√v + τ)``, where
  ``η_t = η`` but for adam ``η √(1 − β₂^(t+1)) / (1 − β₁^(t+1))`` at round t.

``m`` and ``v`` start at zero and are the state a checkpoint keeps. The step comes after any
noise an optional part adds; a step whose model is not finite voids the round, state and all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, TypeVar

import numpy as np

from strategies.aggregate import Array, Model, accumulator_dtype, cast_like

OPTIMIZERS = ("sgd", "adagrad", "adam", "yogi")
S = TypeVar("S")


def _changes(average: Model, global_model: Sequence[Array]) -> Model:
    """``Δ = θ_avg − θ_g`` in place on ``average``'s float layers (integer layers: float64)."""
    work = [a if a.dtype == accumulator_dtype(a.dtype) else a.astype(np.float64) for a in average]
    for delta, g in zip(work, global_model, strict=True):
        np.subtract(delta, g, out=delta)
    return work


def _plus_global(work: Model, global_model: Sequence[Array], average: Model) -> Model:
    """``θ_g + step`` (the step in ``work``, in place), cast back to ``average``'s dtypes."""
    for out, g in zip(work, global_model, strict=True):
        np.add(out, g, out=out)
    return [cast_like(w, a.dtype) for w, a in zip(work, average, strict=True)]


def server_step(
    average: Model,
    global_model: Sequence[Array],
    velocity: Model | None,
    *,
    learning_rate: float,
    momentum: float,
) -> tuple[Model, Model | None]:
    """FedAvgM, in place on ``average``: ``m ← β m + Δ``, ``θ_g ← θ_g + η m``. Returns the model
    and the new ``m`` (``velocity`` is left as it was); η=1, β=0: ``average`` itself."""
    if learning_rate == 1.0 and momentum == 0.0:
        return average, None
    work = _changes(average, global_model)
    step = work
    if momentum > 0.0:
        previous = velocity or [np.zeros_like(d) for d in work]
        step = velocity = [
            np.multiply(v, momentum) + d for v, d in zip(previous, work, strict=True)
        ]
    for out, s in zip(work, step, strict=True):
        np.multiply(s, learning_rate, out=out)
    return _plus_global(work, global_model, average), velocity


def adaptive_step(
    average: Model,
    global_model: Sequence[Array],
    moments: tuple[Model, Model] | None,
    *,
    optimizer: str,
    server_round: int,
    learning_rate: float,
    beta_1: float,
    beta_2: float,
    tau: float,
) -> tuple[Model, tuple[Model, Model]]:
    """FedAdagrad, FedAdam or FedYogi (``optimizer``), in place on ``average``. Returns the
    model and the new moments ``(m, v)`` (``moments`` are left as they were)."""
    work = _changes(average, global_model)
    m_old, v_old = moments or ([np.zeros_like(d) for d in work], [np.zeros_like(d) for d in work])
    m = [beta_1 * m_i + (1 - beta_1) * d for m_i, d in zip(m_old, work, strict=True)]
    squares = [np.square(d) for d in work]
    if optimizer == "adagrad":
        v = [v_i + s for v_i, s in zip(v_old, squares, strict=True)]
    elif optimizer == "adam":
        v = [beta_2 * v_i + (1 - beta_2) * s for v_i, s in zip(v_old, squares, strict=True)]
    else:  # yogi
        v = [
            v_i - (1 - beta_2) * s * np.sign(v_i - s) for v_i, s in zip(v_old, squares, strict=True)
        ]
    rate = learning_rate
    if optimizer == "adam":  # bias correction, counting rounds as Flower's FedAdam does
        rate *= math.sqrt(1 - beta_2 ** (server_round + 1)) / (1 - beta_1 ** (server_round + 1))
    for out, m_i, v_i in zip(work, m, v, strict=True):
        np.divide(rate * m_i, np.sqrt(v_i) + tau, out=out)
    return _plus_global(work, global_model, average), (m, v)


@dataclass(frozen=True, kw_only=True)
class ServerOptimizerOptions:
    """The step's knobs (a base of :class:`~strategies.core.options.ServerOptions`):
    ``server_optimizer`` (one of :data:`OPTIMIZERS`), its learning rate η > 0, sgd's
    ``server_momentum`` β in [0, 1), and the adaptive ones' β₁, β₂ in [0, 1) and τ > 0."""

    server_optimizer: str = "sgd"
    server_learning_rate: float = 1.0  # 1.0 with sgd and β = 0: the average is the new model
    server_momentum: float = 0.0
    server_beta_1: float = 0.9
    server_beta_2: float = 0.99
    server_tau: float = 1e-3

    def __post_init__(self) -> None:
        if self.server_optimizer not in OPTIMIZERS:
            wanted = f"one of {', '.join(OPTIMIZERS)}"
            raise ValueError(f"server_optimizer={self.server_optimizer!r}: must be {wanted}")
        if not 0 < self.server_learning_rate < math.inf:
            raise ValueError(
                f"server_learning_rate={self.server_learning_rate!r}: must be finite and > 0"
            )
        for name in ("server_momentum", "server_beta_1", "server_beta_2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be in [0, 1)")
        if not 0 < self.server_tau < math.inf:
            raise ValueError(f"server_tau={self.server_tau!r}: must be finite and > 0")
        if self.server_momentum and self.server_optimizer != "sgd":
            raise ValueError(
                f"server_momentum={self.server_momentum!r}: sgd's momentum, must be 0 with "
                f"server_optimizer={self.server_optimizer!r} (its momentum is server_beta_1)"
            )
        super().__post_init__()  # type: ignore[misc]


@dataclass
class ServerOptimizerState:
    """The optimizer's state (a base of :class:`~strategies.core.state.StrategyState`):
    ``velocity``, sgd's ``m`` or the adaptive ones' first moment, and their ``second_moment`` v
    (None before the first step, or while sgd has β = 0)."""

    velocity: Model | None = None
    second_moment: Model | None = None

    def to_arrays(self) -> dict[str, list[Array]]:
        arrays: dict[str, list[Array]] = super().to_arrays()  # type: ignore[misc]
        for name in ("velocity", "second_moment"):
            if (value := getattr(self, name)) is not None:
                arrays[name] = [v.copy() for v in value]
        return arrays

    @classmethod
    def fields_from(cls, arrays: Mapping[str, Sequence[Array]]) -> dict[str, Any]:
        fields: dict[str, Any] = super().fields_from(arrays)  # type: ignore[misc]
        for name in ("velocity", "second_moment"):
            stored = arrays.get(name)
            fields[name] = None if stored is None else [np.array(v) for v in stored]
        return fields


class ServerOptimizer:
    """The step in every round of a rule (a base of :class:`~strategies.core.rule.Rule`, whose
    marked lines call these hooks)."""

    options: ServerOptimizerOptions
    state: ServerOptimizerState
    require_global: Callable[[], list[Array]]
    _stepped_state: tuple[Model | None, Model | None] = (None, None)  # kept if the model is

    def stepped(self, server_round: int, average: Model) -> Model:
        o, state = self.options, self.state
        self._stepped_state = (state.velocity, state.second_moment)
        if o.server_optimizer == "sgd":
            if o.server_learning_rate == 1.0 and o.server_momentum == 0.0:
                return average
            average, velocity = server_step(
                average,
                self.require_global(),
                state.velocity,
                learning_rate=o.server_learning_rate,
                momentum=o.server_momentum,
            )
            self._stepped_state = (velocity, None)
            return average
        moments = None
        if state.velocity is not None and state.second_moment is not None:
            moments = (state.velocity, state.second_moment)
        average, (m, v) = adaptive_step(
            average,
            self.require_global(),
            moments,
            optimizer=o.server_optimizer,
            server_round=server_round,
            learning_rate=o.server_learning_rate,
            beta_1=o.server_beta_1,
            beta_2=o.server_beta_2,
            tau=o.server_tau,
        )
        self._stepped_state = (m, v)
        return average

    def committed(self, server_round: int) -> None:
        self.state.velocity, self.state.second_moment = self._stepped_state


# Flower's FedAdagrad, FedAdam and FedYogi (Message API): each one's optimizer and arguments with
# their defaults. Its FedAdagrad has no first moment (β₁ = 0).
FLOWER_CLASSES = {
    "FedAdagrad": (
        "adagrad",
        {"eta": 0.1, "eta_l": 0.1, "beta_1": 0.0, "beta_2": 0.0, "tau": 1e-3},
    ),
    "FedAdam": ("adam", {"eta": 0.1, "eta_l": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}),
    "FedYogi": ("yogi", {"eta": 0.01, "eta_l": 0.0316, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}),
}
# Flower's names of the knobs, and ours.
FLOWER_KNOBS = {
    "eta": "server_learning_rate",
    "beta_1": "server_beta_1",
    "beta_2": "server_beta_2",
    "tau": "server_tau",
}


def _knob(option: str) -> property:
    """An option of the strategy's rule as an attribute: set, it applies from the next round."""

    def get(self: Any) -> Any:
        return getattr(self.rule.options, option)

    def set_(self: Any, value: Any) -> None:
        self.rule.options = replace(self.rule.options, **{option: value})

    return property(get, set_)


def _current_arrays() -> property:
    """The global model, where Flower's Message-API FedAvgM and FedOpt keep it."""

    def set_(self: Any, arrays: Any) -> None:
        self.set_global_model(arrays)

    return property(lambda self: self.rule.global_model, set_)


class FlowerOptimizer:
    """Flower's FedAdagrad, FedAdam or FedYogi, before a FedAvg adapter in a class's bases (see
    :func:`flower_optimizers`): Flower's arguments and defaults, and its attributes."""

    optimizer: ClassVar[str]
    defaults: ClassVar[dict[str, float]]
    current_arrays = _current_arrays()
    eta = _knob("server_learning_rate")
    beta_1 = _knob("server_beta_1")
    beta_2 = _knob("server_beta_2")
    tau = _knob("server_tau")

    def __init__(self, **kwargs: Any) -> None:
        self.eta_l = kwargs.pop("eta_l", self.defaults["eta_l"])  # the clients' rate: kept only
        knobs = {
            ours: kwargs.pop(k, v)
            for k, v in self.defaults.items()
            if (ours := FLOWER_KNOBS.get(k))
        }
        super().__init__(server_optimizer=self.optimizer, **knobs, **kwargs)  # type: ignore[call-arg]


class FlowerFedAvgM:
    """Flower's FedAvgM, before a FedAvg adapter in a class's bases: its server learning rate
    and momentum as attributes (set, they apply from the next round)."""

    current_arrays = _current_arrays()
    server_learning_rate = _knob("server_learning_rate")
    server_momentum = _knob("server_momentum")


def flower_optimizers(strategy: type[S], **changed: dict[str, float]) -> tuple[type[S], ...]:
    """Flower's FedAvgM, FedAdagrad, FedAdam and FedYogi as subclasses of ``strategy`` (a
    FedAvg), with Flower's defaults (``changed``: a class's other ones on that API half)."""
    namespace = {
        "__module__": strategy.__module__,
        "__doc__": f"Flower's FedAvgM: {strategy.__doc__}",
    }
    fedavgm = type("FedAvgM", (FlowerFedAvgM, strategy), namespace)
    return fedavgm, *(
        type(
            name,
            (FlowerOptimizer, strategy),
            {
                "optimizer": optimizer,
                "defaults": defaults | changed.get(name, {}),
                "__module__": strategy.__module__,
                "__doc__": f"Flower's {name} ({optimizer} steps): {strategy.__doc__}",
            },
        )
        for name, (optimizer, defaults) in FLOWER_CLASSES.items()
    )
