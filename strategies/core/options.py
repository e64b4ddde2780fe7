"""The knobs of every rule; a rule with knobs of its own subclasses :class:`ServerOptions`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Self

from strategies.privacy import PrivacyOptions  # part: dp


@dataclass(frozen=True, kw_only=True)
class StepOptions:
    """The FedAvgM server step and the empty-round limit."""

    server_learning_rate: float = 1.0  # η > 0 (1.0 with β = 0: the average is the new model)
    server_momentum: float = 0.0  # β in [0, 1)
    max_empty_rounds: int = 3  # stop when so many rounds in a row aggregated nothing (0: never)

    def __post_init__(self) -> None:
        lr, beta, rounds = self.server_learning_rate, self.server_momentum, self.max_empty_rounds
        if not 0 < lr < math.inf:
            raise ValueError(f"server_learning_rate={lr!r}: must be finite and > 0")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"server_momentum={beta!r}: must be in [0, 1)")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
            raise ValueError(f"max_empty_rounds={rounds!r}: must be an int >= 0")


@dataclass(frozen=True, kw_only=True)
class ServerOptions(
    PrivacyOptions,  # part: dp
    StepOptions,
):
    """The knobs of every rule: the server step's, then each optional part's."""

    @classmethod
    def from_config(cls, config: Any) -> Self:
        """The options read from ``config``, an object with an attribute per field."""
        return cls(**{name: getattr(config, name) for name in cls.field_names()})

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(cls.__dataclass_fields__)
