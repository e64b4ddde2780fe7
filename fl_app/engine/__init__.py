"""The engine seam: every use of Flower's and Ray's private objects. Each module here lists
the objects it touches (``TOUCHES``) and names a ``PATCH`` (a change to Flower's engine while a
run is in progress) or a ``BACKEND`` (where else than Flower's Ray actors the clients run).
:func:`engine` applies them only when the installed Flower and Ray are the tested versions and
every touched object is as expected; otherwise Flower's stock engine runs, after one warning.
"""

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
RAY = "ray"  # Flower's own backend: its Ray actors
LOG = logging.getLogger("flwr.engine")


@dataclass(frozen=True)
class Touch:
    """A private object of Flower or Ray that a patch replaces or relies on: ``module``'s
    ``attribute`` (dotted: an attribute of a class), with these ``parameters`` (None: any),
    whose source holds ``source`` (what makes the patch take effect; empty: not checked)."""

    module: str
    attribute: str
    parameters: tuple[str, ...] | None = None
    source: str = ""

    def problem(self) -> str | None:
        """Why this object is not what the patch was written for (None: it is)."""
        try:
            found: Any = functools.reduce(
                getattr, self.attribute.split("."), importlib.import_module(self.module)
            )
        except (ImportError, AttributeError):
            return f"{self.module}.{self.attribute} is gone"
        if self.parameters is not None:
            names = tuple(inspect.signature(found).parameters)
            if names != self.parameters:
                return f"{self.module}.{self.attribute}{names} is not {self.parameters}"
        if self.source and self.source not in inspect.getsource(found):
            return f"{self.module}.{self.attribute} no longer has {self.source!r}"
        return None


def modules() -> list[ModuleType]:
    """This package's modules, each with its ``TOUCHES``."""
    return [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)]


def backends() -> dict[str, Any]:
    """Where the clients can run, by name: Flower's Ray actors, or a module's ``BACKEND``."""
    found: dict[str, Any] = {RAY: None}
    found |= {m.__name__.rpartition(".")[2]: m for m in modules() if hasattr(m, "BACKEND")}
    return found


def problem() -> str | None:
    """Why the patches cannot be applied to the installed Flower and Ray (None: they can)."""
    for package, version in TESTED.items():
        installed = importlib.import_module(package).__version__
        if installed != version:
            return f"{package} {installed} is installed, the engine seam was tested on {version}"
    touches = [touch for module in modules() for touch in getattr(module, "TOUCHES", ())]
    return next((p for touch in touches if (p := touch.problem()) is not None), None)


@contextlib.contextmanager
def engine(backend: str = RAY, *, joins_ray: bool = False, pollers: int = 1) -> Iterator[bool]:
    """Flower's simulation engine started in this block runs its clients on ``backend``, with
    every ``PATCH`` in place (sized for ``pollers`` nodes; a Ray it ``joins_ray`` is the user's
    and left alone). Yields whether they are: when the seam does not fit, nothing changes."""
    why = problem()
    if why is not None:
        LOG.warning("running Flower's stock simulation engine (the same results, slower): %s", why)
        yield False
        return
    with contextlib.ExitStack() as stack:
        for module in modules():
            if hasattr(module, "PATCH"):
                stack.enter_context(module.PATCH(joins_ray=joins_ray, pollers=pollers))
        if backend != RAY:
            stack.enter_context(backends()[backend].BACKEND())
        yield True
