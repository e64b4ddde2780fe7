"""A deployment round against the same round in simulation, in one invocation.

A SuperLink and 3 SuperNodes on loopback (``scripts/local_deployment.py``), each a client
with its own partition, run the default workload for ``--rounds`` rounds, once per
isolation (``warm``: ``--isolation process`` beside ``scripts/warm_superexec.py``;
``subprocess``: Flower's default, a fresh ``flwr-clientapp`` per message); then
``run_simulation.py`` runs the same configuration with 3 clients. Steady seconds per round
are the mean of rounds 2..R of each run's ``history.json`` (round 1 pays the first FAB
install and data loads). Every process is started with private Flower and Ray folders
and stopped by PID.

    python benchmarks/deployment.py                 # about 4 minutes on 2 cores
    python benchmarks/deployment.py --rounds 3 --isolation warm
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from scripts import local_deployment as ld
from tests.processes import isolated_env, read_history, run_simulation_cli

ROOT = Path(__file__).resolve().parent.parent
SUPERNODES = 3


def steady(run_dir: Path) -> float:
    """Mean seconds of rounds 2..R of the run written in ``run_dir``."""
    rounds = [r for r in read_history(run_dir)["rounds"] if r["round"] >= 2]
    return statistics.fmean(r["seconds"] for r in rounds)


def deployed(isolation: str, rounds: int, out: Path) -> tuple[float, float]:
    """(steady s/round, wall s from submit to finished) of a loopback deployment."""
    with isolated_env() as env:
        deployment = ld.up(
            out / f"deployment-{isolation}", SUPERNODES, env=env, isolation=isolation
        )
        try:
            start = time.perf_counter()
            config = f"num-server-rounds={rounds} output-dir='{out}' run-name='{isolation}'"
            status = ld.wait_for_run(deployment, ld.submit(deployment, ROOT, config, env), env)
            wall = time.perf_counter() - start
        finally:
            ld.stop(deployment)
    if status != "finished:completed":
        raise ld.DeploymentError(f"the {isolation} deployment's run ended {status}")
    return steady(out / isolation), wall


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every run (>= 2)")
    parser.add_argument(
        "--isolation", choices=ld.ISOLATIONS, nargs="+", default=list(ld.ISOLATIONS)
    )
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        rows = {i: deployed(i, options.rounds, out) for i in options.isolation}
        start = time.perf_counter()
        run_simulation_cli(
            out, "--run-name", "simulation", "--num-clients", str(SUPERNODES),
            "--num-server-rounds", str(options.rounds),
        )  # fmt: skip
        simulation = steady(out / "simulation"), time.perf_counter() - start
    print(
        f"default workload, {SUPERNODES} clients, {options.rounds} rounds; "
        "steady = mean of rounds 2..R\n"
    )
    print("| run | steady s/round | × simulation | wall (s) |\n| --- | ---: | ---: | ---: |")
    for isolation, (seconds, wall) in rows.items():
        how = ld.describe_isolation(isolation)
        ratio = seconds / simulation[0]
        print(f"| deployment, {isolation} ({how}) | {seconds:.2f} | {ratio:.1f} | {wall:.1f} |")
    print(f"| simulation (run_simulation.py) | {simulation[0]:.2f} | 1.0 | {simulation[1]:.1f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
