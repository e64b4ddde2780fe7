"""The warm SuperExec's patches of Flower (``scripts/warm_superexec.py``, part
deployment-scripts): Flower's subprocess executor hands each ``flwr-clientapp`` command to a
warm parent that forks it, and a forked ClientApp asks again sooner for an object that is
not there yet.

Not a simulation's: :func:`fl_app.engine.engine` leaves this module out (``SIMULATION``),
and the script checks these touches alone (:func:`fits`), so a change in one leaves the
other's patches in place.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

from fl_app import engine

SIMULATION = False  # applied by the warm SuperExec alone
CLIENTAPP_COMMAND = "flwr-clientapp"
INFLATABLE = "flwr.supercore.inflatable.inflatable_utils"
EXECUTOR = "flwr.supercore.superexec.executor"
TREE = ("object_tree", "pull_object_fn", "confirm_object_received_fn", "return_type")
PULL = ("max_concurrent_pulls", "max_time", "max_tries_per_object", "initial_backoff")
TOUCHES = [
    # The task's message: pulled with Flower's default backoff (a keyword-only default,
    # set by retry_sooner), passed on to pull_objects, whose retries start from it.
    engine.Touch(
        "flwr.supernode.runtime.run_clientapp",
        "pull_task_input",
        ("client",),
        source="pull_and_inflate_object_from_tree(",
    ),
    engine.Touch(
        INFLATABLE,
        "pull_and_inflate_object_from_tree",
        (*TREE, *PULL, "backoff_cap"),
        source="initial_backoff=initial_backoff",
    ),
    engine.Touch(
        INFLATABLE,
        "pull_objects",
        ("object_ids", "pull_object_fn", *PULL, "backoff_cap"),
        source="delay = initial_backoff",
    ),
    # flower-superexec's default executor, and its two calls of what it knows as
    # `subprocess` (tasks_through replaces that name): WarmPopen.Popen takes both.
    engine.Touch(
        f"{EXECUTOR}.factory",
        "get_executor",
        ("executor_type", "executor_config", "insecure", "root_certificates_path"),
        source="return SubprocessExecutor()",
    ),
    engine.Touch(f"{EXECUTOR}.subprocess_executor", "subprocess"),
    engine.Touch(
        f"{EXECUTOR}.subprocess_executor",
        "SubprocessExecutor.launch",
        ("self", "spec"),
        source="subprocess.Popen(args)",
    ),
    engine.Touch(
        f"{EXECUTOR}.subprocess_executor",
        "SubprocessExecutor.launch",
        ("self", "spec"),
        source="stdout=subprocess.DEVNULL,",
    ),
    # What each fork runs: the flwr-clientapp command's entry point, on sys.argv.
    engine.Touch("flwr.supernode.cli.flwr_clientapp", "flwr_clientapp", ()),
]


def fits() -> bool:
    """Whether the warm SuperExec's patches fit the installed Flower (the seam's check of this
    module alone); where they do not, one warning line says that Flower's plain SuperExec
    runs instead."""
    if (why := engine.problem(modules=[sys.modules[__name__]])) is None:
        return True
    engine.LOG.warning(
        "running Flower's plain SuperExec (a fresh flwr-clientapp process per message, "
        "Flower's retry timing): %s",
        why,
    )
    return False


@contextmanager
def retry_sooner(first_retry: float) -> Iterator[None]:
    """Flower's pulls of a ClientApp's message retry an object that is not there yet after
    ``first_retry`` s, doubling from there as Flower's do (to its cap)."""
    from flwr.supercore.inflatable import inflatable_utils

    saved: list[tuple[dict[str, Any], float]] = []
    for pull in (inflatable_utils.pull_and_inflate_object_from_tree, inflatable_utils.pull_objects):
        assert pull.__kwdefaults__ is not None  # its keyword-only defaults
        saved.append((pull.__kwdefaults__, pull.__kwdefaults__["initial_backoff"]))
        pull.__kwdefaults__["initial_backoff"] = first_retry
    try:
        yield
    finally:
        for kwdefaults, backoff in saved:
            kwdefaults["initial_backoff"] = backoff


class WarmPopen:
    """What Flower's subprocess executor sees as ``subprocess``: ``Popen`` of a
    ``flwr-clientapp`` command writes it to the warm parent (JSON: the arguments and whether
    to silence it); any other command is a real subprocess."""

    def __init__(self, requests: Any, real: Any) -> None:
        self._requests, self._real = requests, real
        self.DEVNULL = real.DEVNULL

    def Popen(self, args: list[str], stdout: Any = None, stderr: Any = None) -> Any:  # noqa: N802
        if args[0] != CLIENTAPP_COMMAND:
            return self._real.Popen(args, stdout=stdout, stderr=stderr)
        quiet = stdout is self._real.DEVNULL
        self._requests.write(json.dumps({"arguments": args[1:], "quiet": quiet}) + "\n")
        self._requests.flush()
        return SimpleNamespace(args=args)


@contextmanager
def tasks_through(requests: Any) -> Iterator[None]:
    """Flower's subprocess executor writes each ``flwr-clientapp`` command to ``requests``
    (:class:`WarmPopen`) instead of starting it."""
    executor: Any = importlib.import_module(f"{EXECUTOR}.subprocess_executor")
    real = executor.subprocess
    executor.subprocess = WarmPopen(requests, real)
    try:
        yield
    finally:
        executor.subprocess = real
