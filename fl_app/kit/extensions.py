"""The hooks through which optional parts add flags to ``run_simulation.py`` and what it runs
instead of one run: each part's :class:`Extension`, called in the order ``run_simulation.py``
lists them (its ``EXTENSIONS``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from fl_app.kit.config import RunConfig
from fl_app.kit.simulation import Simulation

Runner = Callable[[], Any]  # what runs instead of one run


class RunError(Exception):
    """What a part runs could not do what it was asked (the command exits with status 1)."""


class Extension:
    """What an optional part adds to ``run_simulation.py``; each hook does nothing here."""

    def add_flags(self, group: argparse._ArgumentGroup) -> None:
        """Add the part's flags to the simulation flags."""

    def defaults(self, argv: Sequence[str]) -> dict[str, Any]:
        """Config values the part sets before the flags are read (flags still win)."""
        return {}

    def check(self, args: argparse.Namespace, cfg: RunConfig, simulation: Simulation) -> Simulation:
        """The simulation flags as the part resolves them; ``ConfigError`` for what it cannot do."""
        return simulation

    def before(self, simulation: Simulation) -> None:
        """Called once before anything runs."""

    def runner(
        self, args: argparse.Namespace, cfg: RunConfig, simulation: Simulation
    ) -> Runner | None:
        """What runs instead of one run, when the part's flags ask for it (None: one run)."""
        return None


def add_flags(extensions: Sequence[Extension], group: argparse._ArgumentGroup) -> None:
    for extension in extensions:
        extension.add_flags(group)


def defaults(extensions: Sequence[Extension], argv: Sequence[str] | None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for extension in extensions:
        values |= extension.defaults(sys.argv[1:] if argv is None else argv)
    return values


def check(
    extensions: Sequence[Extension],
    args: argparse.Namespace,
    cfg: RunConfig,
    simulation: Simulation,
) -> Simulation:
    for extension in extensions:
        simulation = extension.check(args, cfg, simulation)
    return simulation


def before(extensions: Sequence[Extension], simulation: Simulation) -> None:
    for extension in extensions:
        extension.before(simulation)


def runner(
    extensions: Sequence[Extension],
    args: argparse.Namespace,
    cfg: RunConfig,
    simulation: Simulation,
) -> Runner | None:
    """The first part's runner that is not None (None: one run)."""
    runners = (extension.runner(args, cfg, simulation) for extension in extensions)
    return next((r for r in runners if r is not None), None)
