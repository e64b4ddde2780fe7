"""Flower's SuperExec, whose ClientApp processes start warm: for ``--isolation process``.

A SuperNode runs each message's ClientApp in a fresh ``flwr-clientapp`` process (Flower's
``subprocess_executor.py``: ``subprocess.Popen(["flwr-clientapp", "--token", ...])``), which
imports Flower, torch and the app's libraries again, seconds a message before any training
(docs/performance.md). This is Flower's own ``flower-superexec`` (its command line, its task loop,
its tokens) with one difference: each ``flwr-clientapp`` is a fork of a parent that has
already imported all of that, and then runs Flower's ``flwr-clientapp`` entry point, so
the protocol with the SuperNode (pull the task, heartbeats, push the reply) is Flower's
and the SuperNode is unchanged. Run it beside a SuperNode started with
``--isolation process``::

    flower-supernode --isolation process --host 127.0.0.1 --port 9094 ... &
    python scripts/warm_superexec.py --runtime-api-address 127.0.0.1:9094 --insecure \\
        --parent-pid <the SuperNode's PID>

On a machine with several SuperNodes, one warm parent can serve them all: start it with
``--serve SOCKET`` (it listens on that Unix socket and runs no SuperExec), and each SuperExec
with ``--warm-parent SOCKET``; the imports are then held once per machine, not once per
SuperNode (``scripts/local_deployment.py`` does this). Without ``--warm-parent``, the warm
parent (the *zygote*) is this SuperExec's own, forked from this process before it imports the
app or starts a thread; it imports the app's ClientApp module (``--app``, by default the
``clientapp`` of ``pyproject.toml``) and then forgets the app's own modules, keeping every
library they imported: each task imports the app fresh from the FAB the SuperNode
installs (so a resubmitted app runs its new code), on top of a warm Flower and torch.
SuperExec asks its SuperNode for a task at Flower's interval
(``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``, 1 s): a shorter one starts a task sooner but costs
every SuperNode CPU while it waits (docs/performance.md).

Its patches of Flower are :mod:`fl_app.engine.warm`, checked first: where the installed Flower
is not the one they were tested on, this is Flower's plain ``flower-superexec`` (a fresh
``flwr-clientapp`` process per message, Flower's retry timing), after one warning line.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import selectors
import signal
import socket
import sys
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from fl_app.engine import warm

ROOT = Path(__file__).resolve().parents[1]


def default_app() -> str:
    """The module of the project's ClientApp (``[tool.flwr.app.components] clientapp``)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return str(config["tool"]["flwr"]["app"]["components"]["clientapp"]).partition(":")[0]


# Imported at first use, not at import: torch's optimizers import torch._dynamo when the
# first one is built (about a second), in every task again.
PRELOAD = ("torch._dynamo",)


# A warm ClientApp asks for its message a few ms after the SuperNode announces the task,
# before the SuperNode has pulled the message's content from the SuperLink. Flower's first
# retry of an unavailable object then waits 1 s (PULL_INITIAL_BACKOFF, the default
# initial_backoff of pull_objects), sized for a process that took seconds to start; here
# the first retry waits 50 ms, doubling from there as Flower's does (to its 10 s cap).
FIRST_RETRY = 0.05


def warm_up(app_module: str, project: Path, preload: Sequence[str] = PRELOAD) -> list[str]:
    """Import ``app_module``, every library it imports and ``preload`` (the ones imported
    only when used; those that are not installed are skipped), then drop the modules that are
    the project's own (files under ``project``, not in this Python's installation, which
    may be a venv inside the project); return the names dropped."""
    sys.path.insert(0, str(project))
    importlib.import_module(app_module)
    sys.path.remove(str(project))
    importlib.import_module("flwr.supernode.cli.flwr_clientapp")
    for name in preload:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    installed = [Path(p).resolve() for p in {sys.prefix, sys.base_prefix}]  # a venv in it too
    own = [
        name
        for name, module in list(sys.modules.items())
        if (path := getattr(module, "__file__", None))
        and Path(path).is_absolute()  # torch.ops and torch.classes have made-up names
        and (file := Path(path).resolve()).is_relative_to(project)
        and not any(file.is_relative_to(p) for p in installed)
    ]
    for name in own:
        del sys.modules[name]
    return own


def _run_clientapp(arguments: list[str], quiet: bool) -> None:  # pragma: no cover - a fork
    """In a fork of the zygote: Flower's ``flwr-clientapp`` with ``arguments``."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the ClientApp may wait for its own
        if quiet:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        sys.argv = [warm.CLIENTAPP_COMMAND, *arguments]
        from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

        flwr_clientapp()
        code = 0
    except SystemExit as done:  # flwr_exit ends every task with sys.exit
        code = done.code if isinstance(done.code, int) else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class Requests:
    """The request lines the zygote reads: from the pipe of its one SuperExec (they end when
    the pipe closes), or from every SuperExec that connects to ``source``, a listening Unix
    socket (they never end: a shared warm parent runs until it is stopped)."""

    def __init__(self, source: int | socket.socket) -> None:
        self._listener = source if isinstance(source, socket.socket) else None
        self._selector = selectors.DefaultSelector()
        self._selector.register(source, selectors.EVENT_READ)
        self._pending: dict[int, bytes] = {}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while self._selector.get_map():
            for key, _ in self._selector.select():
                if key.fileobj is self._listener:
                    connection, _ = self._listener.accept()
                    self._selector.register(connection, selectors.EVENT_READ)
                    continue
                fd = key.fd
                data = os.read(fd, 1 << 16)
                if not data:  # that SuperExec is gone
                    self._selector.unregister(key.fileobj)
                    os.close(fd)
                    self._pending.pop(fd, None)
                    continue
                *lines, self._pending[fd] = (self._pending.get(fd, b"") + data).split(b"\n")
                yield from (json.loads(line) for line in lines)

    def close(self) -> None:
        """In a fork: let go of the pipe, the socket and the SuperExecs' connections."""
        for key in list(self._selector.get_map().values()):
            os.close(key.fd)


def serve(source: int | socket.socket, app_module: str, project: Path) -> None:  # pragma: no cover
    """The zygote: warm up, then fork one ClientApp process per request (JSON: the arguments
    and whether to silence it), retrying sooner."""
    warm_up(app_module, project)
    # Collections in the forks would write to every warm object and so copy its memory page.
    gc.freeze()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps finished tasks
    requests = Requests(source)
    with warm.retry_sooner(FIRST_RETRY):
        for request in requests:
            if os.fork() == 0:
                requests.close()
                _run_clientapp(request["arguments"], request["quiet"])
    os._exit(0)


def serve_machine(path: str, app_module: str) -> None:  # pragma: no cover - a process of its own
    """One warm parent for every SuperExec of this machine, on the Unix socket ``path``."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by a warm parent that was killed
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    serve(listener, app_module, ROOT)


def requests_to(warm_parent: str | None, app_module: str) -> IO[str]:
    """Where this SuperExec writes its tasks: the shared warm parent at the Unix socket
    ``warm_parent``, or a zygote of its own, forked here (before any import of the app)."""
    if warm_parent:
        connection = socket.socket(socket.AF_UNIX)
        connection.connect(warm_parent)
        return connection.makefile("w")
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # pragma: no cover - the zygote
        os.close(write_end)
        serve(read_end, app_module, ROOT)
    os.close(read_end)
    return os.fdopen(write_end, "w")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--app", default=None)
    parser.add_argument("--serve", default=None, help="be the warm parent on this Unix socket")
    parser.add_argument("--warm-parent", default=None, help="the socket of --serve")
    ours, flowers = parser.parse_known_args(argv)
    app_module = ours.app or default_app()
    if ours.serve:
        serve_machine(ours.serve, app_module)
    sys.argv = ["flower-superexec", *flowers]
    from flwr.supercore.cli.flower_superexec import flower_superexec

    if not warm.fits():  # Flower's own SuperExec, as flower-superexec runs it
        flower_superexec()
        return
    with requests_to(ours.warm_parent, app_module) as requests, warm.tasks_through(requests):
        flower_superexec()


if __name__ == "__main__":
    main()
