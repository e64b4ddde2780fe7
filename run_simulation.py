"""Run the Flower app on Flower's simulation engine, in this process. Every key of
pyproject.toml's ``[tool.flwr.app.config]`` (where its default is) is also a flag.

    python run_simulation.py --strategy quality --partitioner dirichlet --dirichlet-alpha 0.3
    python run_simulation.py --resume outputs/<run-name>        # continue a stopped run
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

# Before Flower and Ray are imported: no telemetry, no update check, quiet Ray, no task events.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("RAY_task_events_report_interval_ms", "0")

from fl_app.kit import extensions  # part: cli-extensions
from fl_app.kit import simulation as sim
from fl_app.kit.checkpoint import saved_run
from fl_app.kit.config import RunConfig
from fl_app.kit.keys import PYPROJECT, ConfigError, key_of, pyproject_table
from fl_app.parts.backend_flags import BackendFlags  # part: fast-engine
from fl_app.parts.comparisons import ComparisonFlags  # part: comparisons
from fl_app.parts.presets import PresetFlags  # part: presets
from fl_app.parts.ray_cluster import ClusterFlags  # part: ray-cluster
from strategies.core.update import NothingAggregatedError

# What the parts add to this command line, in the order their hooks run.  # part: cli-extensions
EXTENSIONS: list[extensions.Extension] = [  # part: cli-extensions
    PresetFlags(),  # part: presets
    ComparisonFlags(),  # part: comparisons
    ClusterFlags(),  # part: ray-cluster
    BackendFlags(),  # part: fast-engine
]  # part: cli-extensions


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, as a bad config gets (not the usage)
        self.exit(2, f"error: {message}\n")


def build_parser(defaults: dict[str, Any]) -> argparse.ArgumentParser:
    parser = OneLineParser(
        description="Run the Flower app on Flower's simulation engine, in this process.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    flags = parser.add_argument_group("simulation")
    flags.add_argument("--num-cpus", type=float, default=1.0, help="CPUs reserved per client")
    flags.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per client, e.g. 0.25")
    flags.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    flags.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint, with its saved config "
        "(flags still win, e.g. --num-server-rounds to extend it): --resume-from with its config",
    )
    extensions.add_flags(EXTENSIONS, flags)  # part: cli-extensions
    app = parser.add_argument_group("run config (keys of [tool.flwr.app.config])")
    for f in dataclasses.fields(RunConfig):
        key, help_text, choices = key_of(f.name), f.metadata["help"], f.metadata.get("choices")
        if choices is not None:  # listed, not enforced: RunConfig refuses a bad value in one line
            help_text += f" (one of: {choices.describe()})"
        convert = {"int": int, "float": float}.get(str(f.type), str)
        kind = {"action": argparse.BooleanOptionalAction} if f.type == "bool" else {"type": convert}
        default = defaults.get(key, f.default)
        app.add_argument(f"--{key}", dest=f.name, default=default, help=help_text, **kind)
    return parser


@dataclass
class Invocation:
    """What a command line asks for: a run (the rest of one, with ``resume-from``) or a part's."""

    cfg: RunConfig
    simulation: sim.Simulation
    runner: extensions.Runner | None = None  # part: cli-extensions

    def run(self) -> Any:
        if self.runner is not None:  # part: cli-extensions
            return self.runner()  # part: cli-extensions
        return sim.run(self.cfg, self.simulation)


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
        defaults = saved_run(resume) | {"resume-from": str(resume)}
    defaults |= extensions.defaults(EXTENSIONS, argv)  # part: cli-extensions
    args = build_parser(defaults).parse_args(argv)
    cfg = RunConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)})
    simulation = sim.Simulation(args.num_cpus, args.num_gpus, args.verbose)
    simulation = extensions.check(EXTENSIONS, args, cfg, simulation)  # part: cli-extensions
    invocation = Invocation(cfg, simulation)
    invocation.runner = extensions.runner(EXTENSIONS, args, cfg, simulation)  # part: cli-extensions
    return invocation


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 done, 2 a bad flag or config, 1 a run stopped (nothing to aggregate, or
    the machine refused: a missing file, a full disk; the last checkpoint survives it)."""
    try:
        invocation = parse(argv)
        extensions.before(EXTENSIONS, invocation.simulation)  # part: cli-extensions
        invocation.run()
    except (
        ConfigError,
        NothingAggregatedError,
        OSError,
        extensions.RunError,  # part: cli-extensions
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    except KeyboardInterrupt:
        # The results are written; the server's thread may wait for replies that never come.
        print("interrupted: the finished runs' results are kept", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
