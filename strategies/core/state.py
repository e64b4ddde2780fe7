"""What a strategy carries from one round to the next, as a checkpoint stores it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from strategies.aggregate import Array, Model
from strategies.privacy import PrivacyState  # part: dp


@dataclass
class CoreState:
    velocity: Model | None = None  # the server momentum (None while β = 0 or before round 1)
    empty_rounds: int = 0  # rounds in a row that aggregated nothing

    def to_arrays(self) -> dict[str, list[Array]]:
        arrays = {"empty_rounds": [np.array(self.empty_rounds, dtype=np.int64)]}
        if self.velocity is not None:
            arrays["velocity"] = [v.copy() for v in self.velocity]
        return arrays

    @classmethod
    def fields_from(cls, arrays: Mapping[str, Sequence[Array]]) -> dict[str, Any]:
        """The fields :meth:`to_arrays` stored (absent ones keep their defaults)."""
        velocity, empty = arrays.get("velocity"), arrays.get("empty_rounds")
        copied = None if velocity is None else [np.array(v) for v in velocity]
        return {"velocity": copied, "empty_rounds": int(empty[0]) if empty else 0}


@dataclass
class StrategyState(
    PrivacyState,  # part: dp
    CoreState,
):
    """The core's state and each optional part's (a base class a part, on its line)."""

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Sequence[Array]]) -> StrategyState:
        return cls(**cls.fields_from(arrays))


@runtime_checkable
class Stateful(Protocol):
    """A strategy whose state a server checkpoints and restores."""

    def get_state(self) -> StrategyState: ...
    def set_state(self, state: StrategyState) -> None: ...
