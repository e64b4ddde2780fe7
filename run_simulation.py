"""Run the Flower app on Flower's simulation engine, in this process. Defaults come from
pyproject.toml's ``[tool.flwr.app.config]``; every key is also a flag, and flags win.

    python run_simulation.py                                    # the default run
    python run_simulation.py --strategy quality --partitioner dirichlet --dirichlet-alpha 0.3
    python run_simulation.py --resume outputs/<run-name>        # continue a stopped run
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Before Flower and Ray are imported: no telemetry, no update check, quiet Ray, and no task
# events (Ray keeps them in memory for a dashboard and state API not used here).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("RAY_task_events_report_interval_ms", "0")

from fl_app.kit import simulation as sim
from fl_app.kit.checkpoint import CHECKPOINT_FILE, load_checkpoint
from fl_app.kit.config import RunConfig, describe_choices
from fl_app.kit.keys import PYPROJECT, ConfigError, key_of, pyproject_table
from fl_app.parts.backend_flags import BackendFlags  # part: fast-engine
from fl_app.parts.comparisons import ComparisonFlags  # part: comparisons
from fl_app.parts.presets import PresetFlags  # part: presets
from fl_app.parts.ray_cluster import ClusterFlags  # part: ray-cluster
from strategies.core.update import NothingAggregatedError

# What optional parts add to this command line: their flags and what they run.
EXTENSIONS: list[sim.Extension] = [
    PresetFlags(),  # part: presets
    ComparisonFlags(),  # part: comparisons
    ClusterFlags(),  # part: ray-cluster
    BackendFlags(),  # part: fast-engine
]


def build_parser(defaults: dict[str, Any]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run the Flower app on Flower's simulation engine, in this process.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    flags = parser.add_argument_group("simulation")
    flags.add_argument("--num-cpus", type=float, default=1.0, help="CPUs reserved per client")
    flags.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per client, e.g. 0.25")
    flags.add_argument(
        "--ray-address",
        default="",
        help="run the clients on this running Ray cluster (e.g. 10.0.0.5:6379) instead of "
        "starting Ray; the cluster is left running",
    )
    flags.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    flags.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint, with its saved config "
        "(flags still win, e.g. --num-server-rounds to extend it)",
    )
    for extension in EXTENSIONS:
        extension.add_flags(flags)
    app = parser.add_argument_group("run config (keys of [tool.flwr.app.config])")
    for f in dataclasses.fields(RunConfig):
        key = key_of(f.name)
        help_text = f.metadata["help"]
        if f.metadata.get("choices") is not None:
            # Listed, not enforced by argparse: RunConfig refuses a bad value in one line.
            help_text += f" (one of: {describe_choices(f.metadata['choices'])})"
        kwargs: dict[str, Any] = {"default": defaults.get(key, f.default), "help": help_text}
        if f.type == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = {"int": int, "float": float}.get(str(f.type), str)
        app.add_argument(f"--{key}", dest=f.name, **kwargs)
    return parser


@dataclass(frozen=True)
class Invocation:
    """What a command line asks for: one run (or a resumed one), or what a part runs."""

    cfg: RunConfig
    simulation: sim.Simulation
    resume: Path | None = None
    runner: Callable[[], Any] | None = None


def parse(argv: Sequence[str] | None = None) -> Invocation:
    """The run config, the simulation flags, and what runs them."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--resume", type=Path)
    resume = first.parse_known_args(argv)[0].resume
    defaults = pyproject_table(PYPROJECT)
    try:  # a bad key or value of the pyproject: one line, before anything else
        RunConfig.from_mapping(defaults)
    except ConfigError as err:
        raise ConfigError(f"{PYPROJECT.name} [tool.flwr.app.config]: {err}") from None
    if resume is not None:
        defaults = sim.saved_run(resume)
    for extension in EXTENSIONS:
        defaults |= extension.defaults(sys.argv[1:] if argv is None else argv)
    args = build_parser(defaults).parse_args(argv)
    fields = dataclasses.fields(RunConfig)
    cfg = RunConfig.from_mapping({key_of(f.name): getattr(args, f.name) for f in fields})
    simulation = sim.Simulation(args.num_cpus, args.num_gpus, args.verbose, args.ray_address)
    for extension in EXTENSIONS:
        simulation = extension.check(args, cfg, simulation)
    runners = (extension.runner(args, cfg, simulation) for extension in EXTENSIONS)
    return Invocation(cfg, simulation, resume, next((r for r in runners if r is not None), None))


def main(argv: Sequence[str] | None = None) -> int:
    """One run, a resumed run, or what a part runs, as the command line asks. Exit status: 0
    done, 2 a bad flag or config, 1 a run stopped (nothing to aggregate)."""
    try:
        invocation = parse(argv)
        for extension in EXTENSIONS:
            extension.before(invocation.simulation)
        if invocation.runner is not None:
            invocation.runner()
        elif invocation.resume is not None:
            checkpoint = load_checkpoint(invocation.resume / CHECKPOINT_FILE)
            sim.run(invocation.cfg, invocation.simulation, resume=checkpoint)
        else:
            sim.run(invocation.cfg, invocation.simulation)
    except (ConfigError, NothingAggregatedError, sim.RunError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    except KeyboardInterrupt:
        # The server's thread may wait for replies the stopped engine will never send: the
        # results are written, so leave without joining it.
        print("interrupted: the finished runs' results are kept", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
