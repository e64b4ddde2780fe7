"""A sweep in one engine: a 2-strategy × 2-seed comparison against one of its runs alone.

Runs ``run_simulation.py`` as a user does, each command in a fresh process with private
Ray and Flower folders: once ``--compare fedavg hybrid --seeds 1 2`` (four runs of the
default configuration inside one start of Flower's engine), once ``--strategy fedavg
--seed 1`` alone; prints both wall times and their ratio. Before the engine served a
whole sweep, the comparison cost about 4× the run alone (every run started the engine
and its client actors again).

    python benchmarks/sweep.py                      # the default run, about 1 minute on 2 cores
    python benchmarks/sweep.py --num-server-rounds 3
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

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
    options = parser.parse_args(argv)
    rounds = ["--num-server-rounds", options.num_server_rounds]
    sweep = wall_time(["--compare", "fedavg", "hybrid", "--seeds", "1", "2", *rounds])
    alone = wall_time(["--strategy", "fedavg", "--seed", "1", *rounds])
    print(f"default run, {options.num_server_rounds} rounds, wall time of the command\n")
    print("| command | runs | wall (s) | × one run alone |\n| --- | ---: | ---: | ---: |")
    print(f"| `--strategy fedavg --seed 1` | 1 | {alone:.1f} | 1.00 |")
    print(f"| `--compare fedavg hybrid --seeds 1 2` | 4 | {sweep:.1f} | {sweep / alone:.2f} |")


if __name__ == "__main__":
    main()
