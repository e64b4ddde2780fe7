"""The knobs every rule has: the server step's, the empty-round limit, and each part's.

A rule with knobs of its own subclasses :class:`ServerOptions` (``QualityOptions``,
``HybridOptions``); the adapters take every field as a keyword argument, and
``from_config`` reads them from the run config, which has a key for each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Self

from strategies.privacy import PrivacyOptions  # part: dp


@dataclass(frozen=True, kw_only=True)
class StepOptions:
    """The FedAvgM server step and the empty-round limit.

    server_learning_rate : η > 0. 1.0 (with β = 0) takes the average as the new model.
    server_momentum : β in [0, 1). 0.0 disables server momentum.
    max_empty_rounds : stop with :class:`~strategies.core.update.NothingAggregatedError`
        after this many rounds in a row that aggregated nothing (0: never stop).
    """

    server_learning_rate: float = 1.0
    server_momentum: float = 0.0
    max_empty_rounds: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.server_learning_rate < math.inf:
            raise ValueError(
                f"server_learning_rate={self.server_learning_rate!r}: must be finite and > 0"
            )
        if not 0.0 <= self.server_momentum < 1.0:
            raise ValueError(f"server_momentum={self.server_momentum!r}: must be in [0, 1)")
        if isinstance(self.max_empty_rounds, bool) or not (
            isinstance(self.max_empty_rounds, int) and self.max_empty_rounds >= 0
        ):
            raise ValueError(f"max_empty_rounds={self.max_empty_rounds!r}: must be an int >= 0")


@dataclass(frozen=True, kw_only=True)
class ServerOptions(
    PrivacyOptions,  # part: dp
    StepOptions,
):
    """The knobs of every rule: the server step's, then each optional part's."""

    @classmethod
    def from_config(cls, config: Any) -> Self:
        """These options read from ``config`` (any object with an attribute per field,
        e.g. :class:`fl_app.kit.config.RunConfig`)."""
        return cls(**{name: getattr(config, name) for name in cls.field_names()})

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(cls.__dataclass_fields__)
