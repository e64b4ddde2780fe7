"""The engine seam: every use of Flower's and Ray's private objects, applied through one
function, :func:`engine`, and checked first.

A simulation runs on Flower's own engine. This package changes three things about it,
each by replacing a private object of Flower or Ray while a run is in progress:

- :mod:`~fl_app.engine.loopback`: the Ray a simulation starts listens on 127.0.0.1 only;
- a module that names a ``BACKEND`` runs the clients somewhere else than Flower's Ray
  actors (a backend is one such module of this package);
- a module that names a ``PATCH`` changes how the engine waits for messages.

:func:`engine` checks, before it changes anything, that the installed Flower and Ray are
the versions this was tested on and that every object it touches is there with the
signature it expects (each module lists them in ``TOUCHES``). Otherwise it runs Flower's
stock engine, with one warning line: the same results, only slower.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import logging
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

# The versions every patch was tested on (and the tests prove each took effect).
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
    """This package's modules: the patches, each with its ``TOUCHES``."""
    return [
        importlib.import_module(f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
    ]


def backends() -> dict[str, Any]:
    """Where Flower's engine can run the clients: its Ray actors, and each module's ``BACKEND``
    by the module's name."""
    found: dict[str, Any] = {RAY: None}
    for module in modules():
        if hasattr(module, "BACKEND"):
            found[module.__name__.rpartition(".")[2]] = module
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
    """Flower's simulation engine started inside this block runs as this project runs it:
    its Ray (unless it ``joins_ray``: a cluster of the user's) on loopback, the clients on
    ``backend`` (a name of :func:`backends`), each module's ``PATCH`` in place (its waits
    sized for ``pollers`` nodes). Yields whether the patches are in place: when the
    installed Flower or Ray is not what they were tested on, nothing is changed and one
    line says why (Flower's stock engine: the same results, only slower)."""
    why = problem()
    if why is not None:
        LOG.warning("running Flower's stock simulation engine (the same results, slower): %s", why)
        yield False
        return
    patches: list[Callable[..., Any]] = [
        module.PATCH for module in modules() if hasattr(module, "PATCH")
    ]
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch(joins_ray=joins_ray, pollers=pollers))
        if backend != RAY:
            stack.enter_context(backends()[backend].BACKEND())
        yield True
