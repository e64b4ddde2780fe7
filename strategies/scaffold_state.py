"""SCAFFOLD's server control variate c as the strategy carries it from round to round (the
optional part ``scaffold``): checkpoints hold it. Numpy only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from strategies.aggregate import Array, Model


@dataclass
class ScaffoldState:
    """The server's control variate c (a base of :class:`~strategies.core.state.StrategyState`;
    None before the first round: zeros)."""

    control: Model | None = None

    def to_arrays(self) -> dict[str, list[Array]]:
        arrays: dict[str, list[Array]] = super().to_arrays()  # type: ignore[misc]
        if self.control is not None:
            arrays["control"] = [c.copy() for c in self.control]
        return arrays

    @classmethod
    def fields_from(cls, arrays: Mapping[str, Sequence[Array]]) -> dict[str, Any]:
        fields: dict[str, Any] = super().fields_from(arrays)  # type: ignore[misc]
        stored = arrays.get("control")
        fields["control"] = None if stored is None else [np.array(c) for c in stored]
        return fields
