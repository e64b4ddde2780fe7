"""How a config key is declared (help, allowed values, bounds; its default is the pyproject's)
and a bad value refused in one line: apart from the config, which imports the parts' keys."""

from __future__ import annotations

import operator
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import Field, dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar, dataclass_transform

T = TypeVar("T")
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


class ConfigError(ValueError):
    """A configuration key has a value that is not allowed."""


def fail(key: str, value: Any, allowed: str) -> NoReturn:
    raise ConfigError(f"config {key!r} = {value!r} is not allowed: must be {allowed}")


class Names:
    """The names of a registry: its keys, and prefixes that name more (``<prefix><name>``),
    read at each use: an optional part may add entries after the config is defined."""

    def __init__(self, entries: Mapping[str, Any], prefixes: Mapping[str, Any] | None = None):
        self.entries, self.prefixes = entries, prefixes or {}

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return name in self.entries or any(name.startswith(p) and name != p for p in self.prefixes)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def describe(self) -> str:
        return ", ".join([*self.entries, *(f"{p}<name>" for p in self.prefixes)])


BOUNDS = (
    ("at_least", ">=", operator.ge),
    ("above", ">", operator.gt),
    ("at_most", "<=", operator.le),
    ("below", "<", operator.lt),
)


def option(help: str, *, choices: Names | tuple[str, ...] | None = None, **bounds: float) -> Any:
    """A config key: its help text and the values it allows (``bounds``: names of ``BOUNDS``)."""
    known = {name for name, _, _ in BOUNDS}
    if not set(bounds) <= known:
        raise TypeError(f"unknown bounds {sorted(set(bounds) - known)}: use {sorted(known)}")
    choices = Names(dict.fromkeys(choices)) if isinstance(choices, tuple) else choices
    return field(metadata={"help": help, "choices": choices, **dict.fromkeys(known), **bounds})


def pyproject_table(path: Path = PYPROJECT) -> dict[str, Any]:
    """``[tool.flwr.app.config]`` of ``path`` ({} when there is no such file)."""
    toml = tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return dict(toml.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}))


# The one place a default is set (Flower's convention); without the file (a deployment's
# FAB) Flower hands every key over.
DEFAULTS = pyproject_table()


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(field,))
def keys(cls: type[T]) -> type[T]:
    """``cls`` as a frozen dataclass of config keys, their defaults from :data:`DEFAULTS`."""
    for name, value in vars(cls).items():
        if isinstance(value, Field) and key_of(name) in DEFAULTS:
            value.default = DEFAULTS[key_of(name)]
    return dataclass(frozen=True, kw_only=True)(cls)


def key_of(name: str) -> str:  # the config key (kebab-case) of a field name
    return name.replace("_", "-")
