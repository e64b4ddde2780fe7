"""Run the Flower app on Flower's simulation engine, in this process.

Defaults come from ``[tool.flwr.app.config]`` in pyproject.toml; every key is also a
flag (``--num-server-rounds 5``, ``--strategy hybrid``), and flags win.

    python run_simulation.py                       # default: FedAvg on digits, 10 clients
    python run_simulation.py --strategy quality --partitioner dirichlet --dirichlet-alpha 0.3
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Before Flower and Ray are imported: no telemetry, no update check, quiet Ray.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

from fl_app.config import ConfigError, RunConfig, key_of

PYPROJECT = Path(__file__).resolve().parent / "pyproject.toml"


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
        "--num-clients", type=int, default=10, help="number of virtual clients (SuperNodes)"
    )
    sim.add_argument("--num-cpus", type=float, default=1.0, help="CPUs reserved per client")
    sim.add_argument(
        "--num-gpus", type=float, default=0.0, help="GPUs reserved per client (e.g. 0.25)"
    )
    sim.add_argument("--verbose", action="store_true", help="show Flower and Ray logs")
    app = parser.add_argument_group("run config (keys of [tool.flwr.app.config])")
    for f in dataclasses.fields(RunConfig):
        key = key_of(f.name)
        default = defaults.get(key, f.default)
        help_text = f.metadata["help"]
        if f.metadata.get("choices") and key != "dataset":
            # Listed, not enforced by argparse: RunConfig refuses a bad value in one line.
            help_text += f" (one of: {', '.join(f.metadata['choices'])})"
        kwargs: dict[str, Any] = {"default": default, "help": help_text, "dest": f.name}
        if f.type == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = {"int": int, "float": float}.get(str(f.type), str)
        app.add_argument(f"--{key}", **kwargs)
    return parser


def parse(argv: Sequence[str] | None = None) -> tuple[RunConfig, argparse.Namespace]:
    defaults = pyproject_defaults()
    args = build_parser(defaults).parse_args(argv)
    values = {key_of(f.name): getattr(args, f.name) for f in dataclasses.fields(RunConfig)}
    cfg = RunConfig.from_mapping(values)
    if args.num_clients < 1:
        raise ConfigError(f"--num-clients {args.num_clients} is not allowed: must be >= 1")
    needed = max(cfg.min_available_clients, cfg.min_fit_clients)
    if needed > args.num_clients:
        raise ConfigError(
            f"--num-clients {args.num_clients} is not allowed: min-available-clients/min-fit-clients "
            f"need at least {needed} (the run would wait forever)"
        )
    return cfg, args


def run(cfg: RunConfig, args: argparse.Namespace) -> dict[str, Any]:
    """Run one simulation; print a line per round and a summary; return the summary."""
    from flwr.simulation import run_simulation

    from fl_app.client_app import client_app_for
    from fl_app.results import run_directory, summarize
    from fl_app.server_app import server_app_for
    from fl_app.server_loop import RoundRecord, format_round

    if not args.verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
    directory = run_directory(cfg)
    cfg = dataclasses.replace(cfg, run_name=directory.name)
    rounds: list[RoundRecord] = []

    def show(record: RoundRecord) -> None:
        rounds.append(record)
        print(format_round(record, cfg.num_server_rounds), flush=True)

    print(
        f"{cfg.strategy} on {cfg.dataset} ({cfg.partitioner}), {args.num_clients} clients, "
        f"{cfg.num_server_rounds} rounds, model {cfg.model}",
        flush=True,
    )
    run_simulation(
        server_app=server_app_for(cfg, listeners=[show]),
        client_app=client_app_for(cfg),
        num_supernodes=args.num_clients,
        backend_config={
            "client_resources": {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus},
            "init_args": {
                "logging_level": "INFO" if args.verbose else "ERROR",
                "log_to_driver": args.verbose,
            },
        },
        verbose_logging=args.verbose,
    )
    if len(rounds) < cfg.num_server_rounds + 1:
        raise RuntimeError(
            f"the simulation stopped after {max(len(rounds) - 1, 0)} of {cfg.num_server_rounds} rounds; "
            "rerun with --verbose to see Flower's and Ray's logs"
        )
    summary = summarize(rounds)
    print(
        f"done: final accuracy {summary['final_accuracy']:.4f}, best {summary['best_accuracy']:.4f}, "
        f"{summary['rounds']} rounds in {summary['seconds']:.1f} s; history: {directory / 'history.json'}",
        flush=True,
    )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg, args = parse(argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run(cfg, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
