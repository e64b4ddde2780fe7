"""The knobs of every rule; a rule with knobs of its own subclasses :class:`ServerOptions`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from strategies.client_states import ClientStateOptions  # part: client-state
from strategies.privacy import PrivacyOptions  # part: dp
from strategies.server_optimizer import ServerOptimizerOptions  # part: server-optimizer


@dataclass(frozen=True, kw_only=True)
class CoreOptions:
    max_empty_rounds: int = 3  # stop when so many rounds in a row aggregated nothing (0: never)

    def __post_init__(self) -> None:
        rounds = self.max_empty_rounds
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
            raise ValueError(f"max_empty_rounds={rounds!r}: must be an int >= 0")


@dataclass(frozen=True, kw_only=True)
class ServerOptions(
    ClientStateOptions,  # part: client-state
    PrivacyOptions,  # part: dp
    ServerOptimizerOptions,  # part: server-optimizer
    CoreOptions,
):
    """The knobs of every rule: the core's, then each optional part's."""

    @classmethod
    def from_config(cls, config: Any) -> Self:
        """The options read from ``config``, which has an attribute per field."""
        return cls(**{name: getattr(config, name) for name in cls.field_names()})

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(cls.__dataclass_fields__)
