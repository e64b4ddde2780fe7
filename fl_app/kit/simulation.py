"""One run of the app on Flower's simulation engine, in this process: its folder, its
display, the engine's start, its records. ``run_simulation.py`` is the command line over
this; an optional part may run several (a sweep) through :func:`simulate`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fl_app.client_app import client_app_for
from fl_app.engine import RAY, engine
from fl_app.kit.checkpoint import CHECKPOINT_FILE, Checkpoint
from fl_app.kit.config import RunConfig
from fl_app.kit.keys import ConfigError
from fl_app.kit.results import (
    RoundCollector,
    RoundRecord,
    RunListener,
    describe,
    format_round,
    run_directory,
    summarize,
    write_json_atomically,
)
from fl_app.server_app import ServerRun, server_app_for

SIMULATION_FILE = "simulation.json"  # the run's simulation flags, beside its config
# --num-nodes: a pool sized by the clients a round asks for, or one node per client.
AUTO_NODES = "auto"
PER_CLIENT = "per-client"


class RunError(Exception):
    """A run could not do what it was asked (the command exits with status 1)."""


@dataclass(frozen=True)
class Simulation:
    """How Flower's simulation engine runs the clients: the flags that are not run config."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    verbose: bool = False
    ray_address: str = ""  # a running Ray cluster to connect to ("": Flower starts Ray)
    num_nodes: str = AUTO_NODES  # a number, AUTO_NODES or PER_CLIENT
    backend: str = RAY  # one of fl_app.engine.backends()

    def pool_size(self, configs: Sequence[RunConfig]) -> int | None:
        """The engine's virtual nodes for ``configs`` run in it (None: one per client).

        Auto: as many as the most clients any round of theirs asks for (training or
        evaluation), so that every node gets one message a round.
        """
        if self.num_nodes == PER_CLIENT:
            return None
        if self.num_nodes != AUTO_NODES:
            return int(self.num_nodes)
        if any(cfg.secure_aggregation for cfg in configs):  # part: legacy-api
            return None  # part: legacy-api
        asked = max(
            max(c.fit_clients(c.num_clients), c.evaluate_clients(c.num_clients)) for c in configs
        )
        return max(1, min(configs[0].num_clients, asked))


def saved_run(directory: Path) -> dict[str, Any]:
    """The config a run in ``directory`` was started with."""
    try:
        config: dict[str, Any] = json.loads((directory / "config.json").read_text())
        simulation = json.loads((directory / SIMULATION_FILE).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"--resume {str(directory)!r} is not allowed: not a run folder of this app ({err})"
        ) from err
    if not (directory / CHECKPOINT_FILE).is_file():
        raise ConfigError(
            f"--resume {str(directory)!r} is not allowed: it has no {CHECKPOINT_FILE}"
        )
    # A run folder of before num-clients was a config key has it with the simulation flags.
    return {"num-clients": int(simulation.get("num_clients", 10))} | config


class ProgressDisplay(RunListener):
    """A line per round, and (in a terminal) a progress bar with elapsed time, ETA, last score.

    ``header``, when given, is printed before the first round's line (a sweep's runs
    start one after another inside one engine).
    """

    def __init__(self, cfg: RunConfig, console: Console, header: str | None = None) -> None:
        self.cfg = cfg
        self.console = console
        self.header = header
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[last]}"),
            console=console,
            disable=not console.is_terminal,
        )
        self.task = self.progress.add_task(cfg.strategy, total=cfg.num_server_rounds, last="")

    def round_done(self, rounds: Sequence[RoundRecord]) -> None:
        record = rounds[-1]
        if self.header is not None:
            say(self.console, self.header)
            self.header = None
        say(self.console, format_round(record, self.cfg.num_server_rounds))
        last = (
            f"accuracy {record['central_accuracy']:.4f}"
            if "central_accuracy" in record
            else f"loss {record.get('central_loss', float('nan')):.4f}"
        )
        self.progress.update(self.task, completed=record["round"], last=last)


def say(console: Console, line: str) -> None:
    """Print ``line`` as it is (no markup, highlighting or wrapping by rich)."""
    console.print(line, markup=False, highlight=False, soft_wrap=True)


@dataclass
class PlannedRun:
    """A run about to start: its config (run name fixed), folder, display and records."""

    cfg: RunConfig
    directory: Path
    display: ProgressDisplay
    collected: RoundCollector
    listeners: list[RunListener]
    resume: Checkpoint | None = None


def plan(
    cfg: RunConfig,
    simulation: Simulation,
    console: Console,
    *,
    resume: Checkpoint | None = None,
    listeners: Sequence[RunListener] = (),
    announce: bool = True,
) -> PlannedRun:
    """Fix the run's name and folder, save its simulation flags, set up its display
    (the header printed now when ``announce``, else before its first round)."""
    directory = run_directory(cfg)
    cfg = dataclasses.replace(cfg, run_name=cfg.run_name or directory.name)  # fix the time stamp
    header = (
        f"{cfg.strategy} on {cfg.dataset} ({cfg.partitioner}), {cfg.num_clients} clients, "
        f"{cfg.num_server_rounds} rounds, model {cfg.model}"
    )
    if announce:
        say(console, header)
    saved = {
        k: v
        for k, v in dataclasses.asdict(simulation).items()
        if k not in ("verbose", "ray_address")
    }
    write_json_atomically(directory / SIMULATION_FILE, saved)
    display = ProgressDisplay(cfg, console, None if announce else header)
    collected = RoundCollector(resume.rounds if resume is not None else ())
    if resume is not None:
        display.progress.update(display.task, completed=resume.round)
    return PlannedRun(cfg, directory, display, collected, [display, collected, *listeners], resume)


def finish(planned: PlannedRun, console: Console) -> list[RoundRecord]:
    """The run's records, after its summary line; an error when it stopped early."""
    rounds, cfg = planned.collected.rounds, planned.cfg
    if len(rounds) < cfg.num_server_rounds + 1:
        raise RuntimeError(
            f"the simulation stopped after {max(len(rounds) - 1, 0)} of "
            f"{cfg.num_server_rounds} rounds; rerun with --verbose to see Flower's and Ray's logs"
        )
    say(console, f"done: {describe(summarize(rounds))}; results: {planned.directory}")
    return list(rounds)


def run(
    cfg: RunConfig,
    simulation: Simulation,
    *,
    console: Console | None = None,
    resume: Checkpoint | None = None,
    listeners: Sequence[RunListener] = (),
) -> list[RoundRecord]:
    """Run one simulation (or continue one); print a line per round and a summary; return the records.

    ``listeners`` are told about every round too (benchmarks use them to take timings).
    """
    console = console or Console()
    planned = plan(cfg, simulation, console, resume=resume, listeners=listeners)
    with planned.display.progress:
        simulate([planned], simulation)
    return finish(planned, console)


def server_runs(runs: Sequence[PlannedRun], simulation: Simulation) -> list[ServerRun]:
    """What the ServerApp runs for ``runs``: each one's config, listeners and resume point,
    and the logical clients its messages name when a pool of nodes serves them."""
    pool = simulation.pool_size([r.cfg for r in runs])
    partitions = None if pool is None else runs[0].cfg.num_clients
    return [ServerRun(r.cfg, r.listeners, r.resume, num_partitions=partitions) for r in runs]


def simulate(
    runs: Sequence[PlannedRun],
    simulation: Simulation,
    apps: tuple[ServerApp, ClientApp] | None = None,
) -> None:
    """Run ``runs`` on one start of Flower's simulation engine, in this process: one run,
    or with ``apps`` (the ServerApp and ClientApp that run them) several (a part's sweep).

    The one call of ``flwr.simulation.run_simulation``, deprecated since Flower 1.41 (which
    points to ``flwr run``): when Flower removes it, this function is what changes, to
    ``flwr run . --run-config ...`` on the local simulation federation (docs/running.md).
    """
    from flwr.simulation import run_simulation

    if not simulation.verbose:  # after Flower's import, which sets its logger's level
        logging.getLogger("flwr").setLevel(logging.ERROR)
    pool = simulation.pool_size([r.cfg for r in runs])
    if apps is None:
        (only,) = server_runs(runs, simulation)
        apps = server_app_for(only), client_app_for(only.cfg, pooled=pool is not None)
    nodes = runs[0].cfg.num_clients if pool is None else pool
    joins_ray = bool(simulation.ray_address)  # a cluster of the user's
    with engine(simulation.backend, joins_ray=joins_ray, pollers=nodes):
        run_simulation(
            server_app=apps[0],
            client_app=apps[1],
            num_supernodes=nodes,
            backend_config={
                "client_resources": {
                    "num_cpus": simulation.num_cpus,
                    "num_gpus": simulation.num_gpus,
                },
                "init_args": {
                    "logging_level": "INFO" if simulation.verbose else "ERROR",
                    "log_to_driver": simulation.verbose,
                    **({"address": simulation.ray_address} if simulation.ray_address else {}),
                },
            },
            verbose_logging=simulation.verbose,
        )


class Extension:
    """What an optional part adds to ``run_simulation.py``'s command line (a subclass a
    part, listed there on its registration line); each hook does nothing here."""

    def add_flags(self, group: argparse._ArgumentGroup) -> None:
        """Add the part's flags to the simulation flags."""

    def defaults(self, argv: Sequence[str]) -> dict[str, Any]:
        """Config values the part sets before the flags are read (flags still win)."""
        return {}

    def check(self, args: argparse.Namespace, cfg: RunConfig, simulation: Simulation) -> Simulation:
        """Refuse what the part's flags cannot do (``ConfigError``); the simulation flags as
        the part resolves them."""
        return simulation

    def before(self, simulation: Simulation) -> None:
        """Called once before anything runs."""

    def runner(
        self, args: argparse.Namespace, cfg: RunConfig, simulation: Simulation
    ) -> Callable[[], Any] | None:
        """What runs instead of one run, when the part's flags ask for it (None: one run)."""
        return None
