"""Comparisons: several strategies (and the centralized reference) over several seeds, on
the same partitions and clients, in one start of Flower's engine (the optional part
``comparisons``; the statistics are :mod:`fl_app.parts.statistics`).

    python run_simulation.py --compare simple quality fedavg hybrid centralized --seeds 1 2 3

A comparison writes ``comparison.md``, ``comparison.png`` and ``comparison.json``. Every
message of a sweep names its run (``SWEEP_RUN_KEY``), so one set of clients serves all of
them.
"""

from __future__ import annotations

import argparse
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from logging import WARNING
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fl_app.client_app import client_app_for, sent_config
from fl_app.kit.config import RunConfig
from fl_app.kit.extensions import Extension, RunError
from fl_app.kit.keys import ConfigError
from fl_app.kit.results import RoundRecord, run_directory
from fl_app.kit.simulation import Simulation, finish, plan, server_runs, simulate
from fl_app.parts.centralized import CENTRALIZED, check_pooled, train_centrally
from fl_app.parts.statistics import SeedRun, write_comparison
from fl_app.server_app import ServerRun, run_server

# The message-config key naming the run a message is for, when one engine runs a sweep.
SWEEP_RUN_KEY = "sweep-run"
Variants = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Comparison:
    """What a comparison runs: each variant (config overrides) once per seed."""

    cfg: RunConfig
    simulation: Simulation
    variants: Variants
    seeds: tuple[int, ...] = ()
    target_accuracy: float = 0.9

    def __call__(self) -> Path:
        return compare(self)


class ComparisonFlags(Extension):
    """``--compare``, ``--seeds``, ``--num-seeds`` and ``--target-accuracy``."""

    def add_flags(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--compare",
            nargs="+",
            metavar="STRATEGY",
            help="run these strategies on the same data and seed (and 'centralized': the same "
            "model on the pooled client data, the same epochs); write comparison.md and .png",
        )
        group.add_argument(
            "--seeds",
            nargs="+",
            type=int,
            metavar="SEED",
            help="run every compared configuration (or the one run) once per seed; "
            "comparison.md gives mean ± std, 95%% intervals and paired tests over them",
        )
        group.add_argument(
            "--num-seeds",
            type=int,
            metavar="N",
            help="the same with N seeds: --seed, --seed + 1, ..., --seed + N - 1",
        )
        group.add_argument(
            "--target-accuracy",
            type=float,
            default=0.9,
            help="comparison table: rounds to reach this accuracy",
        )

    def runner(
        self, args: argparse.Namespace, cfg: RunConfig, simulation: Simulation
    ) -> Callable[[], Any] | None:
        return comparison_of(args, cfg, simulation, {})


def comparison_of(
    args: argparse.Namespace, cfg: RunConfig, simulation: Simulation, variants: Variants
) -> Comparison | None:
    """What ``args`` asks to compare (None: one run), every variant and seed checked."""
    if args.resume is not None and (args.seeds or args.num_seeds):
        raise ConfigError("--seeds/--num-seeds is not allowed with --resume (it continues one run)")
    if args.compare:
        # "centralized" is the reference row: the same model on the pooled client data.
        variants = {
            name: {} if name == CENTRALIZED else {"strategy": name} for name in args.compare
        }
    for overrides in variants.values():  # a bad variant stops everything before any run
        RunConfig.from_mapping(cfg.run_config | overrides)
    if CENTRALIZED in variants:
        check_pooled(cfg)
    seeds = seeds_of(args, cfg.seed)
    for seed in seeds:
        RunConfig.from_mapping(cfg.run_config | {"seed": seed})
    if len(seeds) > 1 and not variants:  # one configuration over several seeds
        variants = {cfg.strategy: {}}
    if not variants:
        return None
    return Comparison(cfg, simulation, variants, seeds, args.target_accuracy)


def seeds_of(args: argparse.Namespace, seed: int) -> tuple[int, ...]:
    """The seeds asked for by ``--seeds`` or ``--num-seeds`` (just ``seed`` otherwise)."""
    if args.seeds is not None and args.num_seeds is not None:
        raise ConfigError("--seeds and --num-seeds are not allowed together: give one of them")
    if args.num_seeds is not None:
        if args.num_seeds < 1:
            raise ConfigError(f"--num-seeds {args.num_seeds} is not allowed: must be >= 1")
        return tuple(range(seed, seed + args.num_seeds))
    if args.seeds is None:
        return (seed,)
    repeated = sorted({s for s in args.seeds if args.seeds.count(s) > 1})
    if repeated:
        raise ConfigError(
            f"--seeds {' '.join(map(str, args.seeds))} is not allowed: "
            f"{', '.join(map(str, repeated))} repeated (each seed once)"
        )
    return tuple(args.seeds)


class RunsFailedError(RunError):
    """Some runs of a sweep failed (the others finished and were compared)."""


def compare(invocation: Comparison) -> Path:
    """One run per variant and seed (variants share data and clients for a seed), all in
    one start of Flower's engine, then comparison.md, comparison.png and comparison.json.

    A run that fails is reported and left out, the others go on; Ctrl-C stops after the
    run in progress and still compares the finished ones.
    """
    cfg = invocation.cfg
    seeds = invocation.seeds or (cfg.seed,)
    name = cfg.run_name or f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    directory = run_directory(dataclasses.replace(cfg, run_name=name))
    runs, failed, interrupted = run_variants(invocation, seeds, name)
    varied = {key for overrides in invocation.variants.values() for key in overrides}
    data = cfg.dataset
    if "partitioner" not in varied:
        data += f", {cfg.partitioner}" + (
            f"({cfg.dirichlet_alpha:g})" if cfg.partitioner == "dirichlet" else ""
        )
    title = f"{data}, {cfg.num_clients} clients, {cfg.num_server_rounds} rounds"
    if len(seeds) > 1:
        title += f", seeds {', '.join(map(str, seeds))}"
    compared = {variant: seed_runs for variant, seed_runs in runs.items() if seed_runs}
    if compared:
        table, plot = write_comparison(
            directory,
            compared,
            target=invocation.target_accuracy,
            title=title,
            references={CENTRALIZED},
        )
        print(table.read_text(), flush=True)
        print(f"comparison: {table} and {plot}", flush=True)
    if interrupted:
        raise KeyboardInterrupt
    if failed:
        raise RunsFailedError(
            f"{len(failed)} run(s) failed: "
            + "; ".join(f"{run}: {error}" for run, error in failed.items())
        )
    return directory


def sweep(
    cfgs: Sequence[RunConfig], simulation: Simulation
) -> tuple[dict[str, list[RoundRecord]], dict[str, BaseException], bool]:
    """Run ``cfgs`` (distinct run names) one after another in one start of Flower's engine.

    Returns the finished runs' records and the failed runs' errors, by run name, and
    whether Ctrl-C stopped the sweep (the finished runs stay; the one in progress is not
    among them).
    """
    planned = [plan(cfg, simulation, announce=False) for cfg in cfgs]
    outcome = SweepOutcome()
    runs = server_runs(planned, simulation)
    for run in runs:  # every message names its run: one set of clients serves them all
        run.tags = {SWEEP_RUN_KEY: run.cfg.run_name}
    by_name = {run.cfg.run_name: run.cfg for run in runs}

    def config(context: Context, message: Message) -> RunConfig:
        return by_name[str(sent_config(message, SWEEP_RUN_KEY))]

    client_app = client_app_for(
        config,
        pooled=runs[0].num_partitions is not None,  # part: fast-engine
    )
    apps = sweep_server_app(runs, outcome), client_app
    interrupted = False
    try:
        simulate(planned, simulation, apps)
    except KeyboardInterrupt:
        outcome.stop.set()
        interrupted = True
    finished: dict[str, list[RoundRecord]] = {}
    for p in planned:
        name = p.cfg.run_name
        if name in outcome.failed:
            print(f"run {name} failed: {outcome.failed[name]}", flush=True)
        elif name in outcome.finished:
            finished[name] = finish(p)
    return finished, outcome.failed, interrupted


def run_variants(
    invocation: Comparison, seeds: Sequence[int], name: str
) -> tuple[dict[str, list[SeedRun]], dict[str, BaseException], bool]:
    """Every variant's runs, one per seed (seed by seed), the federated ones in one engine;
    with the runs that failed (by folder) and whether Ctrl-C stopped the sweep."""
    cfg, simulation = invocation.cfg, invocation.simulation
    runs: dict[str, list[SeedRun]] = {variant: [] for variant in invocation.variants}
    federated: list[tuple[str, int, RunConfig]] = []
    centralized: list[tuple[int, RunConfig]] = []
    for seed in seeds:
        for variant, overrides in invocation.variants.items():
            folder = f"{name}/{variant}" + (f"/seed-{seed}" if len(seeds) > 1 else "")
            variant_cfg = RunConfig.from_mapping(
                cfg.run_config | overrides | {"seed": seed, "run-name": folder}
            )
            if variant == CENTRALIZED:
                centralized.append((seed, variant_cfg))
            else:
                federated.append((variant, seed, variant_cfg))
    finished, failed, interrupted = (
        sweep([c for _, _, c in federated], simulation) if federated else ({}, {}, False)
    )
    for variant, seed, variant_cfg in federated:
        rounds = finished.get(variant_cfg.run_name)
        if rounds is not None:
            runs[variant].append(SeedRun(seed, rounds, float(rounds[-1]["elapsed"])))
    for seed, variant_cfg in centralized:
        if not interrupted:
            start = time.perf_counter()
            rounds = train_centrally(variant_cfg, variant_cfg.num_clients)
            runs[CENTRALIZED].append(SeedRun(seed, rounds, time.perf_counter() - start))
    return runs, failed, interrupted


@dataclass
class SweepOutcome:
    """What a sweep's runs came to: their names in finishing order, the failed ones'
    errors, and the event that stops the sweep between runs."""

    finished: list[str] = field(default_factory=list)
    failed: dict[str, BaseException] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)


def sweep_server_app(runs: Sequence[ServerRun], outcome: SweepOutcome) -> ServerApp:
    """A ServerApp running ``runs`` one after another on one grid (one simulation engine
    for a whole sweep). A run that fails is recorded in ``outcome.failed`` with its
    error and the next one starts; ``outcome.stop`` set ends the sweep after the current
    run."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        for run in runs:
            if outcome.stop.is_set():
                return
            try:
                run_server(grid, run)
            except Exception as error:  # recorded; the sweep goes on
                log(WARNING, "run %s failed: %s", run.cfg.run_name, error)
                outcome.failed[run.cfg.run_name] = error
            else:
                outcome.finished.append(run.cfg.run_name)

    return server_app
