"""The engine seam: every use of Flower's and Ray's private objects. Each module here lists those
it touches (``TOUCHES``) and may name a ``PATCH`` to Flower's engine, which :func:`engine` applies
only where Flower and Ray are the tested versions and every touched object is as expected."""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import logging
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

# The versions every patch was tested on (tests/test_engine.py proves each takes effect).
TESTED = {"flwr": "1.42.0", "ray": "2.55.1"}
LOG = logging.getLogger("flwr.engine")


@dataclass(frozen=True)
class Touch:
    """A private object a patch replaces or relies on: ``module``'s ``attribute`` (dotted: of a
    class), with these ``parameters`` (None: any), whose source holds ``source`` (if given)."""

    module: str
    attribute: str
    parameters: tuple[str, ...] | None = None
    source: str = ""

    def problem(self) -> str | None:
        """Why this object is not what the patch was written for (None: it is)."""
        name = f"{self.module}.{self.attribute}"
        try:
            module = importlib.import_module(self.module)
            found: Any = functools.reduce(getattr, self.attribute.split("."), module)
        except (ImportError, AttributeError):
            return f"{name} is gone"
        names = None if self.parameters is None else tuple(inspect.signature(found).parameters)
        if names != self.parameters:
            return f"{name}{names} is not {self.parameters}"
        if self.source and self.source not in inspect.getsource(found):
            return f"{name} no longer has {self.source!r}"
        return None


def modules() -> list[ModuleType]:
    """This package's modules, each with its ``TOUCHES``."""
    return [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)]


def simulation() -> list[ModuleType]:
    """The modules :func:`engine` applies: all but those with ``SIMULATION = False``, which a
    caller of their own applies, checking them alone (``problem(modules=...)``)."""
    return [module for module in modules() if getattr(module, "SIMULATION", True)]


def problem(modules: list[ModuleType] | None = None) -> str | None:
    """Why the patches of ``modules`` (a simulation's by default) cannot be applied to the
    installed Flower and Ray, of those they touch (None: they can)."""
    checked = simulation() if modules is None else modules
    touches = [touch for module in checked for touch in getattr(module, "TOUCHES", ())]
    touched = {touch.module.partition(".")[0] for touch in touches}
    for package, version in TESTED.items():
        installed = importlib.import_module(package).__version__ if package in touched else version
        if installed != version:
            return f"{package} {installed} is installed, the engine seam was tested on {version}"
    return next((p for touch in touches if (p := touch.problem()) is not None), None)


@contextlib.contextmanager
def engine(*, joins_ray: bool = False, pollers: int = 1) -> Iterator[bool]:
    """Every ``PATCH`` in place for Flower's engine started in this block (sized for ``pollers``
    nodes; a Ray it ``joins_ray`` is the user's: left alone); yields whether the seam fits."""
    if (why := problem()) is not None:
        LOG.warning("running Flower's stock simulation engine (the same results, slower): %s", why)
        yield False
        return
    with contextlib.ExitStack() as stack:
        for module in simulation():
            if hasattr(module, "PATCH"):
                stack.enter_context(module.PATCH(joins_ray=joins_ray, pollers=pollers))
        yield True
