"""Runs on Flower's simulation engine in this process: folders, printed lines, records, the
engine's start. ``run_simulation.py`` is the command line over this."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fl_app.client_app import client_app_for
from fl_app.engine import engine
from fl_app.engine.inprocess import RAY, on_backend  # part: fast-engine
from fl_app.kit import results
from fl_app.kit.checkpoint import resumed
from fl_app.kit.config import RunConfig
from fl_app.kit.data import check_split
from fl_app.kit.results import RoundRecord, RunListener
from fl_app.kit.training import pick_device
from fl_app.parts.pools import pool_runs, pool_size  # part: fast-engine
from fl_app.server_app import ServerRun, server_app_for

Apps = tuple[ServerApp, ClientApp]  # the apps that serve several runs in one engine start


@dataclass(frozen=True)
class Simulation:
    """How Flower's simulation engine runs the clients: the flags that are not run config."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    verbose: bool = False
    ray_address: str = ""  # a Ray cluster to join ("": Flower starts Ray)  # part: ray-cluster
    num_nodes: str = "auto"  # part: fast-engine
    backend: str = RAY  # part: fast-engine


@dataclass
class PlannedRun(RunListener):
    """A run about to start (config with its run name fixed, folder, listeners); it keeps the
    server's records and prints a line per round (``header`` first, when set)."""

    cfg: RunConfig
    directory: Path
    listeners: list[RunListener]
    header: str | None = None
    rounds: Sequence[RoundRecord] = ()

    def round_done(self, rounds: Sequence[RoundRecord]) -> None:
        self.rounds = rounds
        if self.header is not None:
            print(self.header, flush=True)
            self.header = None
        print(results.format_round(rounds[-1], self.cfg.num_server_rounds), flush=True)


def plan(
    cfg: RunConfig,
    simulation: Simulation,
    *,
    listeners: Sequence[RunListener] = (),
    announce: bool = True,
) -> PlannedRun:
    """Fix the run's name and folder (``resume-from``'s, if set), save its simulation flags;
    print its header line now when ``announce``, else before its first round."""
    cfg, resume = resumed(cfg)
    check_split(cfg)  # what the server refuses, refused before Flower's engine starts
    pick_device(cfg.device)
    directory = results.run_directory(cfg)
    cfg = dataclasses.replace(cfg, run_name=cfg.run_name or directory.name)  # fix the time stamp
    header = (
        f"{cfg.strategy} on {cfg.dataset} ({cfg.partitioner}), {cfg.num_clients} clients, "
        f"{cfg.num_server_rounds} rounds, model {cfg.model}"
    )
    if announce:
        print(header, flush=True)
    saved = {k: v for k, v in vars(simulation).items() if k not in ("verbose", "ray_address")}
    results.write_json_atomically(directory / "simulation.json", saved)  # beside the config
    rounds = resume.rounds if resume is not None else ()
    return PlannedRun(cfg, directory, [*listeners], None if announce else header, rounds)


def finish(planned: PlannedRun) -> list[RoundRecord]:
    """The run's records, after its summary line; an error when it stopped early."""
    rounds, cfg = planned.rounds, planned.cfg
    if len(rounds) < cfg.num_server_rounds + 1:
        raise RuntimeError(
            f"the simulation stopped after {max(len(rounds) - 1, 0)} of "
            f"{cfg.num_server_rounds} rounds; rerun with --verbose to see Flower's and Ray's logs"
        )
    summary = results.describe(results.summarize(rounds))
    print(f"done: {summary}; results: {planned.directory}", flush=True)
    return list(rounds)


def run(
    cfg: RunConfig, simulation: Simulation, *, listeners: Sequence[RunListener] = ()
) -> list[RoundRecord]:
    """One simulation (or the rest of one), a line per round and a summary; its records."""
    planned = plan(cfg, simulation, listeners=listeners)
    simulate([planned], simulation)
    return finish(planned)


def server_runs(runs: Sequence[PlannedRun], simulation: Simulation) -> list[ServerRun]:
    """What the ServerApp runs for ``runs`` (and what an optional part adds for ``simulation``)."""
    served = [ServerRun(r.cfg, [r, *r.listeners]) for r in runs]
    pool_runs(served, simulation.num_nodes)  # part: fast-engine
    return served


def simulate(runs: Sequence[PlannedRun], simulation: Simulation, apps: Apps | None = None) -> None:
    """Run ``runs`` on one start of Flower's engine (several need ``apps``); the one call of its
    ``run_simulation``, deprecated since Flower 1.41 for ``flwr run``."""
    from flwr.simulation import run_simulation

    verbose = simulation.verbose
    if not verbose:  # after Flower's import, which sets its logger's level
        logging.getLogger("flwr").setLevel(logging.ERROR)
    if apps is None:
        (only,) = server_runs(runs, simulation)
        client_app = client_app_for(
            only.cfg,
            pooled=only.num_partitions is not None,  # part: fast-engine
        )
        apps = server_app_for(only), client_app
    nodes = runs[0].cfg.num_clients  # one virtual node per client
    nodes = pool_size(simulation.num_nodes, [r.cfg for r in runs]) or nodes  # part: fast-engine
    level = "INFO" if verbose else "ERROR"
    ray_init: dict[str, Any] = {"logging_level": level, "log_to_driver": verbose}
    if simulation.ray_address:  # part: ray-cluster
        ray_init["address"] = simulation.ray_address  # part: ray-cluster
    resources: dict[str, Any] = {"num_cpus": simulation.num_cpus, "num_gpus": simulation.num_gpus}
    backend_config = {"client_resources": resources, "init_args": ray_init}
    patches = engine(joins_ray="address" in ray_init, pollers=nodes)  # a user's Ray: left alone
    patches = on_backend(patches, simulation.backend)  # part: fast-engine
    with patches:
        run_simulation(*apps, nodes, backend_config=backend_config, verbose_logging=verbose)
