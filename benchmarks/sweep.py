"""A sweep in one engine: a 2-strategy × 2-seed comparison against one of its runs alone.

Runs ``run_simulation.py`` as a user does, each command in a fresh process with private
Ray and Flower folders: once ``--compare fedavg hybrid --seeds 1 2`` (four runs of the
default configuration inside one start of Flower's engine), once ``--strategy fedavg
--seed 1`` alone; prints both wall times and their ratio, for each backend (Ray, and the
clients in this process, which ``--backend auto`` picks on 2 CPUs). Before the engine served
a whole sweep, the comparison on Ray cost about 4× the run alone (every run started the
engine and its client actors again). In this process there is no start to share: the
ratio is about the runs' count, the wall times are what to compare.

    python benchmarks/sweep.py                      # the default run, about 1.5 minutes on 2 cores
    python benchmarks/sweep.py --num-server-rounds 3 --backends ray
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from fl_app.engine.inprocess import backends
from tests.processes import isolated_env

ROOT = Path(__file__).resolve().parent.parent


def wall_time(flags: Sequence[str]) -> float:
    """Seconds ``run_simulation.py flags`` takes from start to exit (it must succeed)."""
    with isolated_env() as env, tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "run_simulation.py", "--output-dir", out, *flags]
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-server-rounds", default="10", help="rounds of every run")
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=list(backends()),
        default=list(backends()),
        help="--backend",
    )
    options = parser.parse_args(argv)
    print(f"default run, {options.num_server_rounds} rounds, wall time of the command\n")
    print("| backend | command | runs | wall (s) | × one run alone |")
    print("| --- | --- | ---: | ---: | ---: |")
    for backend in options.backends:
        flags = ["--num-server-rounds", options.num_server_rounds, "--backend", backend]
        sweep = wall_time(["--compare", "fedavg", "hybrid", "--seeds", "1", "2", *flags])
        alone = wall_time(["--strategy", "fedavg", "--seed", "1", *flags])
        print(f"| {backend} | `--strategy fedavg --seed 1` | 1 | {alone:.1f} | 1.00 |")
        print(
            f"| {backend} | `--compare fedavg hybrid --seeds 1 2` | 4 | {sweep:.1f} "
            f"| {sweep / alone:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
