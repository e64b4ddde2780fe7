"""How a config key is declared: its default, help, allowed values and bounds.

Apart from :mod:`fl_app.kit.config` so that an optional part (docs/template.md) can declare
its own keys in its own files, which ``RunConfig`` then inherits: ``fl_app.kit.config``
imports those files, so they cannot import it back.
"""

from __future__ import annotations

import importlib
import operator
from collections.abc import Iterator, Mapping
from dataclasses import field
from typing import Any, NoReturn


class ConfigError(ValueError):
    """A configuration key has a value that is not allowed."""


def fail(key: str, value: Any, allowed: str) -> NoReturn:
    """Refuse ``key`` = ``value`` in one line: what is allowed."""
    raise ConfigError(f"config {key!r} = {value!r} is not allowed: must be {allowed}")


class Names:
    """The names of a registry (a dict, and prefixes that name more, as ``hf:<name>``),
    read at each use: an optional part may add entries after the config is defined."""

    def __init__(self, entries: Mapping[str, Any], prefixes: Mapping[str, Any] | None = None):
        self.entries = entries
        self.prefixes = prefixes if prefixes is not None else {}

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        named = (name.startswith(p) and len(name) > len(p) for p in self.prefixes)
        return name in self.entries or any(named)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def describe(self) -> str:
        return ", ".join([*self.entries, *(f"{p}<name>" for p in self.prefixes)])


class Registry:
    """The names of a registry that lives where its entries are implemented.

    Read on first use: ``fl_app.models`` imports torch and ``fl_app.data`` imports this
    module, so importing them here would make the config import torch, or a cycle.
    ``lookup`` names a function of the module that resolves a name (and raises KeyError
    for an unknown one), for registries that accept more than their keys; ``also`` says
    what more, for the error message.
    """

    def __init__(self, module: str, attribute: str, lookup: str = "", also: str = "") -> None:
        self.module = module
        self.attribute = attribute
        self.lookup = lookup
        self.also = also

    def entries(self) -> Mapping[str, Any] | tuple[str, ...]:
        entries: Mapping[str, Any] | tuple[str, ...] = getattr(
            importlib.import_module(self.module), self.attribute
        )
        return entries

    def __getitem__(self, name: str) -> Any:
        if self.lookup:
            return getattr(importlib.import_module(self.module), self.lookup)(name)
        entries = self.entries()
        if isinstance(entries, tuple):
            raise TypeError(f"{self.module}.{self.attribute} lists names only")
        return entries[name]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if not self.lookup:
            return name in self.entries()
        try:
            self[name]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries())

    def describe(self) -> str:
        return ", ".join(self) + (f" or {self.also}" if self.also else "")


Choices = tuple[str, ...] | Registry | Names

BOUNDS = (
    ("at_least", ">=", operator.ge),
    ("above", ">", operator.gt),
    ("at_most", "<=", operator.le),
    ("below", "<", operator.lt),
)


def option(default: Any, help: str, *, choices: Choices | None = None, **bounds: float) -> Any:
    """A config field with its help text and the values it allows.

    ``bounds``: any of ``at_least``, ``above``, ``at_most``, ``below`` (see ``BOUNDS``).
    """
    known = {name for name, _, _ in BOUNDS}
    if not set(bounds) <= known:
        raise TypeError(f"unknown bounds {sorted(set(bounds) - known)}: use {sorted(known)}")
    every_bound = dict.fromkeys(known) | bounds
    return field(default=default, metadata={"help": help, "choices": choices, **every_bound})


def key_of(name: str) -> str:
    """Config key (kebab-case) of a dataclass field name."""
    return name.replace("_", "-")
