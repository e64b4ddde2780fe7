"""What a strategy carries from one round to the next, as a checkpoint stores it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from strategies.aggregate import Array
from strategies.client_states import ClientStatesState  # part: client-state
from strategies.privacy import PrivacyState  # part: dp
from strategies.scaffold_state import ScaffoldState  # part: scaffold
from strategies.server_optimizer import ServerOptimizerState  # part: server-optimizer


@dataclass
class CoreState:
    empty_rounds: int = 0  # rounds in a row that aggregated nothing

    def to_arrays(self) -> dict[str, list[Array]]:
        return {"empty_rounds": [np.array(self.empty_rounds, dtype=np.int64)]}

    @classmethod
    def fields_from(cls, arrays: Mapping[str, Sequence[Array]]) -> dict[str, Any]:
        """The fields :meth:`to_arrays` stored (absent ones keep their defaults)."""
        return {"empty_rounds": int(empty[0]) if (empty := arrays.get("empty_rounds")) else 0}


@dataclass
class StrategyState(
    ClientStatesState,  # part: client-state
    PrivacyState,  # part: dp
    ScaffoldState,  # part: scaffold
    ServerOptimizerState,  # part: server-optimizer
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
