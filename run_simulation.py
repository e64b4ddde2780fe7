"""Run the Flower app on Flower's simulation engine, in this process.

Defaults come from ``[tool.flwr.app.config]`` in pyproject.toml; every key is also a
flag (``--num-server-rounds 5``, ``--strategy hybrid``), and flags win.

    python run_simulation.py                                    # FedAvg on digits, 10 clients
    python run_simulation.py --strategy quality --partitioner dirichlet --dirichlet-alpha 0.3
    python run_simulation.py --compare simple quality fedavg hybrid   # same data and seed
    python run_simulation.py --preset linear-regression
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Before Flower and Ray are imported: no telemetry, no update check, quiet Ray.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# Ray logs every task's events in its GCS for its dashboard and state API (neither used
# here): about 4 KB per client-round that only stops growing at 100,000 tasks.
os.environ.setdefault("RAY_task_events_report_interval_ms", "0")

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

import fl_app.parts.presets  # part: presets
import fl_app.parts.ray_cluster  # part: ray-cluster
from fl_app.centralized import CENTRALIZED, check_pooled, train_centrally
from fl_app.comparison import SeedRun, write_comparison
from fl_app.engine.arrivals import arrivals
from fl_app.engine.loopback import loopback_ray
from fl_app.kit.checkpoint import CHECKPOINT_FILE, Checkpoint, load_checkpoint
from fl_app.kit.config import SWEEP_RUN_KEY, Preset, RunConfig, describe_choices
from fl_app.kit.keys import ConfigError, key_of
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
from fl_app.parts import absent_flag, unknown_key
from fl_app.parts.legacy.keys import secure_nodes  # part: legacy-api
from strategies.core.update import NothingAggregatedError

if TYPE_CHECKING:
    from fl_app.server_app import SweepOutcome


PYPROJECT = Path(__file__).resolve().parent / "pyproject.toml"
SIMULATION_FILE = "simulation.json"  # the run's simulation flags, for --resume
# --backend: where the engine runs the clients: Ray actors (Flower's own backend), or this
# process, one client at a time (fl_app/engine/inprocess.py); AUTO_BACKEND picks one (pick_backend).
BACKENDS = ("ray", "inprocess")
AUTO_BACKEND = "auto"
# Ray's start (about 9 s) and its dispatch per message (about 5 ms more than in process)
# pay off only with several clients side by side: from this many on (docs/performance.md).
RAY_FROM_WORKERS = 4
# --num-nodes: a pool sized by the clients a round asks for, or one node per client.
AUTO_NODES = "auto"
PER_CLIENT = "per-client"
Variants = dict[str, dict[str, Any]]

# Ready-made scenarios by name (--preset): the optional part presets.
PRESETS: dict[str, Preset] = {
    **fl_app.parts.presets.PRESETS,  # part: presets
}
# What checks the cluster --ray-address names, before any run: the optional part
# ray-cluster (without it, the runs join the cluster unchecked).
CLUSTER_CHECKS: list[Callable[[str, float, float], str]] = [
    fl_app.parts.ray_cluster.check_cluster,  # part: ray-cluster
]


def pyproject_defaults(path: Path = PYPROJECT) -> dict[str, Any]:
    """``[tool.flwr.app.config]`` of the project's pyproject.toml ({} when absent)."""
    if not path.is_file():
        return {}
    with path.open("rb") as f:
        return dict(
            tomllib.load(f).get("tool", {}).get("flwr", {}).get("app", {}).get("config", {})
        )


def build_parser(defaults: dict[str, Any]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run the Flower app on Flower's simulation engine (Ray, in this process).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sim = parser.add_argument_group("simulation")
    sim.add_argument(
        "--num-nodes",
        default=AUTO_NODES,
        metavar="N",
        help=f"virtual nodes of Flower's engine: a number (a pool; each message names the "
        f"client it is for), {AUTO_NODES!r} (a pool of the clients a round asks for), or "
        f"{PER_CLIENT!r} (one node per client, as a deployment has)",
    )
    sim.add_argument(
        "--backend",
        choices=(AUTO_BACKEND, *BACKENDS),
        default=AUTO_BACKEND,
        help="where Flower's engine runs the clients: Ray actors, in parallel; or this "
        "process, one at a time (no Ray to start: for light workloads and debugging); "
        f"{AUTO_BACKEND!r}: Ray for GPUs, a Ray cluster, stragglers or at least "
        f"{RAY_FROM_WORKERS} clients at a time on this machine's CPUs, else this process",
    )
    sim.add_argument("--num-cpus", type=float, default=1.0, help="CPUs reserved per client")
    sim.add_argument(
        "--num-gpus", type=float, default=0.0, help="GPUs reserved per client (e.g. 0.25)"
    )
    sim.add_argument(
        "--ray-address",
        default="",
        help="run the clients on this running Ray cluster (e.g. 10.0.0.5:6379) instead of "
        "starting Ray; the cluster is left running. Without it a comparison starts one "
        "private local Ray for all its runs",
    )
    sim.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    if PRESETS:
        sim.add_argument(
            "--preset",
            help="a ready-made scenario: "
            + "; ".join(f"{name}: {preset.description}" for name, preset in PRESETS.items()),
        )
    sim.add_argument(
        "--compare",
        nargs="+",
        metavar="STRATEGY",
        help="run these strategies on the same data and seed (and 'centralized': the same "
        "model on the pooled client data, the same epochs); write comparison.md and .png",
    )
    sim.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        metavar="SEED",
        help="run every compared configuration (or the one run) once per seed; "
        "comparison.md gives mean ± std, 95%% intervals and paired tests over them",
    )
    sim.add_argument(
        "--num-seeds",
        type=int,
        metavar="N",
        help="the same with N seeds: --seed, --seed + 1, ..., --seed + N - 1",
    )
    sim.add_argument(
        "--target-accuracy",
        type=float,
        default=0.9,
        help="comparison table: rounds to reach this accuracy",
    )
    sim.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint, with its saved config "
        "(flags still win, e.g. --num-server-rounds to extend it)",
    )
    app = parser.add_argument_group("run config (keys of [tool.flwr.app.config])")
    for f in dataclasses.fields(RunConfig):
        key = key_of(f.name)
        help_text = f.metadata["help"]
        if f.metadata.get("choices") is not None:
            # Listed, not enforced by argparse: RunConfig refuses a bad value in one line.
            help_text += f" (one of: {describe_choices(f.metadata['choices'])})"
        kwargs: dict[str, Any] = {
            "default": defaults.get(key, f.default),
            "help": help_text,
            "dest": f.name,
        }
        if f.type == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = {"int": int, "float": float}.get(str(f.type), str)
        app.add_argument(f"--{key}", **kwargs)
    return parser


@dataclass(frozen=True)
class Simulation:
    """How Flower's simulation engine runs the clients: the flags that are not run config."""

    num_clients: int = 10
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    verbose: bool = False
    ray_address: str = ""  # a running Ray cluster to connect to ("": Flower starts Ray)
    num_nodes: str = AUTO_NODES  # a number, AUTO_NODES or PER_CLIENT
    backend: str = "ray"  # one of BACKENDS (AUTO_BACKEND is resolved by parse)

    def pool_size(self, configs: Sequence[RunConfig]) -> int | None:
        """The engine's virtual nodes for ``configs`` run in it (None: one per client).

        Auto: as many as the most clients any round of theirs asks for (training or
        evaluation), so that every node gets one message a round; one per client under
        SecAgg+, whose protocol keeps a client's state in its node.
        """
        if self.num_nodes == PER_CLIENT:
            return None
        if self.num_nodes != AUTO_NODES:
            return int(self.num_nodes)
        if any(cfg.secure_aggregation for cfg in configs):  # part: legacy-api
            return None  # part: legacy-api
        asked = max(
            max(c.fit_clients(self.num_clients), c.evaluate_clients(self.num_clients))
            for c in configs
        )
        return max(1, min(self.num_clients, asked))


@dataclass(frozen=True)
class Invocation:
    """What a command line asks for: one run, a comparison (``variants``), or a resume."""

    cfg: RunConfig
    simulation: Simulation
    variants: Variants = field(default_factory=dict)
    target_accuracy: float = 0.9
    resume: Path | None = None
    seeds: tuple[int, ...] = ()  # several: every variant runs once per seed


def parse(argv: Sequence[str] | None = None) -> Invocation:
    """The run config, the simulation flags, and the variants to compare (empty: one run)."""
    gone = absent_flag(sys.argv[1:] if argv is None else argv)
    if gone is not None:  # an optional part's flag, in a copy without that part
        raise ConfigError(gone)
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--preset")
    first.add_argument("--resume", type=Path)
    first.add_argument("--seeds", nargs="+")
    first.add_argument("--num-seeds")
    known = first.parse_known_args(argv)[0]
    if known.resume is not None and (known.seeds or known.num_seeds):
        raise ConfigError("--seeds/--num-seeds is not allowed with --resume (it continues one run)")
    defaults = pyproject_defaults(PYPROJECT)
    fields = [key_of(f.name) for f in dataclasses.fields(RunConfig)]
    for key in defaults.keys() - fields:  # e.g. a key of a part this copy dropped
        raise ConfigError(f"{PYPROJECT.name} [tool.flwr.app.config]: {unknown_key(key, fields)}")
    variants: Variants = {}
    if known.resume is not None:
        defaults = saved_run(known.resume)
    if known.preset is not None:
        if known.preset not in PRESETS:
            raise ConfigError(
                f"--preset {known.preset!r} is not allowed: must be one of {', '.join(PRESETS)}"
            )
        preset = PRESETS[known.preset]
        defaults |= preset.config | {"num-clients": preset.num_clients}
        variants = preset.variants
    args = build_parser(defaults).parse_args(argv)
    values = {key_of(f.name): getattr(args, f.name) for f in dataclasses.fields(RunConfig)}
    cfg = RunConfig.from_mapping(values)
    if args.compare:
        # "centralized" is the reference row: the same model on the pooled client data.
        variants = {
            name: {} if name == CENTRALIZED else {"strategy": name} for name in args.compare
        }
    for overrides in variants.values():  # a bad variant stops everything before any run
        RunConfig.from_mapping(values | overrides)
    if CENTRALIZED in variants:
        check_pooled(cfg)
    if args.num_nodes not in (AUTO_NODES, PER_CLIENT) and not (
        args.num_nodes.isdigit() and int(args.num_nodes) >= 1
    ):
        raise ConfigError(
            f"--num-nodes {args.num_nodes!r} is not allowed: must be a number >= 1, "
            f"{AUTO_NODES!r} or {PER_CLIENT!r}"
        )
    if args.backend == "inprocess" and args.ray_address:
        raise ConfigError(
            f"--ray-address {args.ray_address!r} is not allowed with --backend inprocess: "
            "the clients run in this process (use --backend ray)"
        )
    secure_nodes(cfg, args.num_nodes, (AUTO_NODES, PER_CLIENT))  # part: legacy-api
    seeds = seeds_of(args, cfg.seed)
    for seed in seeds:
        RunConfig.from_mapping(values | {"seed": seed})
    if len(seeds) > 1 and not variants:  # one configuration over several seeds
        variants = {cfg.strategy: {}}
    simulation = Simulation(
        cfg.num_clients,
        args.num_cpus,
        args.num_gpus,
        args.verbose,
        args.ray_address,
        args.num_nodes,
        pick_backend(args.backend, cfg, args.num_cpus, args.num_gpus, args.ray_address),
    )
    return Invocation(cfg, simulation, variants, args.target_accuracy, args.resume, seeds)


def pick_backend(
    backend: str, cfg: RunConfig, num_cpus: float, num_gpus: float, ray_address: str
) -> str:
    """``backend``, or for :data:`AUTO_BACKEND` the one that runs ``cfg`` faster here.

    Both give the same results bit for bit: this is about time. Ray where clients side by
    side pay for its start and dispatch (at least :data:`RAY_FROM_WORKERS` at a time on
    this machine's CPUs), where only Ray can run them (GPUs, a cluster), and for
    stragglers (in this process a sleeping client holds up every other one); this process
    otherwise.
    """
    if backend != AUTO_BACKEND:
        return backend
    cpus = len(os.sched_getaffinity(0))
    workers = cpus / num_cpus if num_cpus > 0 else float(cpus)  # 0: Ray reserves nothing
    side_by_side = workers >= RAY_FROM_WORKERS
    side_by_side |= cfg.fault_kind == "straggle"  # part: faults
    return "ray" if side_by_side or num_gpus > 0 or ray_address else "inprocess"


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
        f"{cfg.strategy} on {cfg.dataset} ({cfg.partitioner}), {simulation.num_clients} clients, "
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


def simulate(
    runs: Sequence[PlannedRun], simulation: Simulation, outcome: SweepOutcome | None = None
) -> None:
    """Run ``runs`` one after another on one start of Flower's simulation engine, in this
    process: one run (its error stops it), or a sweep (``outcome`` collects each run's end).

    Every message of a sweep names its run (``SWEEP_RUN_KEY``), so one set of client
    actors serves all of them. The one call of ``flwr.simulation.run_simulation``,
    deprecated since Flower 1.41 (which points to ``flwr run``): when Flower removes it,
    this function is what changes, to ``flwr run . --run-config ...`` on the local
    simulation federation (see docs/running.md).
    """
    from flwr.simulation import run_simulation

    from fl_app.client_app import client_app_for
    from fl_app.server_app import ServerRun, poll_interval, server_app_for, sweep_server_app

    if not simulation.verbose:  # after Flower's import, which sets its logger's level
        logging.getLogger("flwr").setLevel(logging.ERROR)

    pool = simulation.pool_size([r.cfg for r in runs])
    partitions = None if pool is None else simulation.num_clients
    tagged = outcome is not None
    server_runs = [
        ServerRun(
            r.cfg,
            r.listeners,
            r.resume,
            num_partitions=partitions,
            tags={SWEEP_RUN_KEY: r.cfg.run_name} if tagged else {},
        )
        for r in runs
    ]
    pooled = pool is not None
    nodes = simulation.num_clients if pool is None else pool
    if outcome is None:
        (only,) = server_runs
        server_app = server_app_for(only)
        client_app = client_app_for(only.cfg, pooled=pooled)
    else:
        server_app = sweep_server_app(server_runs, outcome)
        client_app = client_app_for(pooled=pooled, sweep={r.cfg.run_name: r.cfg for r in runs})
    # The private Ray Flower starts here listens on loopback; a joined cluster is the user's.
    backend: contextlib.AbstractContextManager[None]
    if simulation.backend == "inprocess":
        from fl_app.engine.inprocess import in_process_clients

        backend = in_process_clients()
    else:
        backend = contextlib.nullcontext() if simulation.ray_address else loopback_ray()
    with arrivals(poll_interval(nodes)), backend:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
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


class RunsFailedError(Exception):
    """Some runs of a sweep failed (the others finished and were compared)."""


def compare(invocation: Invocation) -> Path:
    """One run per variant and seed (variants share data and clients for a seed), all in
    one start of Flower's engine, then comparison.md, comparison.png and comparison.json.

    A run that fails is reported and left out, the others go on; Ctrl-C stops after the
    run in progress and still compares the finished ones.
    """
    cfg, simulation = invocation.cfg, invocation.simulation
    seeds = invocation.seeds or (cfg.seed,)
    console = Console()
    name = cfg.run_name or f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    directory = run_directory(dataclasses.replace(cfg, run_name=name))
    runs, failed, interrupted = run_variants(invocation, seeds, name, console)
    varied = {key for overrides in invocation.variants.values() for key in overrides}
    data = cfg.dataset
    if "partitioner" not in varied:
        data += f", {cfg.partitioner}" + (
            f"({cfg.dirichlet_alpha:g})" if cfg.partitioner == "dirichlet" else ""
        )
    title = f"{data}, {simulation.num_clients} clients, {cfg.num_server_rounds} rounds"
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
        say(console, table.read_text())
        say(console, f"comparison: {table} and {plot}")
    if interrupted:
        raise KeyboardInterrupt
    if failed:
        raise RunsFailedError(
            f"{len(failed)} run(s) failed: "
            + "; ".join(f"{run}: {error}" for run, error in failed.items())
        )
    return directory


def sweep(
    cfgs: Sequence[RunConfig], simulation: Simulation, console: Console
) -> tuple[dict[str, list[RoundRecord]], dict[str, BaseException], bool]:
    """Run ``cfgs`` (distinct run names) one after another in one start of Flower's engine.

    Returns the finished runs' records and the failed runs' errors, by run name, and
    whether Ctrl-C stopped the sweep (the finished runs stay; the one in progress is not
    among them).
    """
    from fl_app.server_app import SweepOutcome

    planned = [plan(cfg, simulation, console, announce=False) for cfg in cfgs]
    outcome = SweepOutcome()
    interrupted = False
    try:
        simulate(planned, simulation, outcome)
    except KeyboardInterrupt:
        outcome.stop.set()
        interrupted = True
    finished: dict[str, list[RoundRecord]] = {}
    for p in planned:
        name = p.cfg.run_name
        if name in outcome.failed:
            say(console, f"run {name} failed: {outcome.failed[name]}")
        elif name in outcome.finished:
            finished[name] = finish(p, console)
    return finished, outcome.failed, interrupted


def run_variants(
    invocation: Invocation, seeds: Sequence[int], name: str, console: Console
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
        sweep([c for _, _, c in federated], simulation, console) if federated else ({}, {}, False)
    )
    for variant, seed, variant_cfg in federated:
        rounds = finished.get(variant_cfg.run_name)
        if rounds is not None:
            runs[variant].append(SeedRun(seed, rounds, float(rounds[-1]["elapsed"])))
    for seed, variant_cfg in centralized:
        if not interrupted:
            start = time.perf_counter()
            rounds = train_centrally(variant_cfg, simulation.num_clients)
            runs[CENTRALIZED].append(SeedRun(seed, rounds, time.perf_counter() - start))
    return runs, failed, interrupted


def execute(invocation: Invocation) -> None:
    """One run, a comparison, or a resumed run, as the command line asked."""
    simulation = invocation.simulation
    if simulation.ray_address:  # a bad address or a cluster too small: one line, at start
        for check in CLUSTER_CHECKS:
            print(check(simulation.ray_address, simulation.num_cpus, simulation.num_gpus))
    if invocation.variants:
        compare(invocation)
    elif invocation.resume is not None:
        checkpoint = load_checkpoint(invocation.resume / CHECKPOINT_FILE)
        run(invocation.cfg, invocation.simulation, resume=checkpoint)
    else:
        run(invocation.cfg, invocation.simulation)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 done, 2 a bad flag or config, 1 a run stopped (nothing to aggregate)."""
    try:
        execute(parse(argv))
    except (ConfigError, NothingAggregatedError, RunsFailedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    except KeyboardInterrupt:
        # The server's thread may still wait for replies the stopped engine will never
        # send: results are written, so leave without joining it.
        print("interrupted: the finished runs' results are kept", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
