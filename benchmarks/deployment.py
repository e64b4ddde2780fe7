"""A deployment against the same run in simulation, in one invocation.

A SuperLink and ``--supernodes`` SuperNodes on loopback (``scripts/local_deployment.py``),
each a client with its own partition, run the default workload for ``--rounds`` rounds with
every SuperNode sampled in every round, once per isolation (``warm``: ``--isolation
process`` beside ``scripts/warm_superexec.py``; ``subprocess``: Flower's default, a fresh
``flwr-clientapp`` per message); then ``run_simulation.py`` runs the same configuration with
as many clients. Per run it prints:

- start-up: seconds of ``up``, until every SuperNode listens (and its warm SuperExec is
  started);
- idle CPU: the cores the whole deployment (SuperLink, SuperNodes, SuperExecs) uses for
  10 s while it waits for a run, from 30 s after ``up``: the cost of its polls;
- steady s/round: the mean of rounds 2..R of the run's ``history.json`` (round 1 pays the
  first FAB install and data loads), and every round's seconds;
- answered: the updates received of those asked for, in each round;
- PSS per SuperNode: the proportional set size (shared pages counted once) of all
  SuperNodes' process trees (SuperNode, its SuperExec, its ClientApp processes, and the warm
  parent they share), divided by their number, sampled every second during the run: mean
  and peak. RSS would count the libraries every process maps once per process.

Every process is started with private Flower and Ray folders and stopped by PID.

    python benchmarks/deployment.py                     # 3 SuperNodes, 5 rounds: about 4 min
    python benchmarks/deployment.py --supernodes 20 --rounds 3
    python benchmarks/deployment.py --supernodes 20 --rounds 3 --isolation warm --database
    python benchmarks/deployment.py --rounds 4 --isolation warm --task-poll 0.05
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.scale import MIB, process_tree, pss_and_rss
from scripts import local_deployment as ld
from tests.processes import isolated_env, polling, read_history, run_simulation_cli, stat_fields

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    """What one run measured; ``startup`` and the memory are None for the simulation."""

    rounds: list[dict[str, Any]]  # history.json's round records, round 0 included
    wall: float  # from submitting (or starting) the run to its end
    startup: float | None = None
    pss: list[float] = field(default_factory=list)  # MiB per SuperNode, one per sample
    idle_cpu: float | None = None  # cores the whole deployment used, up and waiting

    @property
    def steady(self) -> float:
        return statistics.fmean(r["seconds"] for r in self.rounds if r["round"] >= 2)

    @property
    def answered(self) -> str:
        return ", ".join(f"{r['results']}/{r['sampled']}" for r in self.rounds if r["round"])


def supernode_side(deployment: ld.Deployment) -> list[int]:
    """The roots of the SuperNodes' process trees: SuperNodes, warm SuperExecs, warm parent."""
    shared = [deployment.warm_parent_pid] if deployment.warm_parent_pid else []
    return [*deployment.supernode_pids, *deployment.superexec_pids, *shared]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds ``pids`` have used so far (from /proc/PID/stat)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):  # gone meanwhile
            fields = stat_fields(pid)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def idle_cores(deployment: ld.Deployment, settle: float = 30.0, seconds: float = 10.0) -> float:
    """CPU cores the whole deployment uses while it waits for a run (its polls), ``settle``
    seconds after ``up``, when the SuperExecs it started last have imported Flower."""
    time.sleep(settle)
    roots = [deployment.superlink_pid, *supernode_side(deployment)]
    before, start = cpu_seconds(process_tree(*roots)), time.perf_counter()
    time.sleep(seconds)
    return (cpu_seconds(process_tree(*roots)) - before) / (time.perf_counter() - start)


def pss_per_supernode(deployment: ld.Deployment) -> float:
    """MiB of PSS of the SuperNodes' process trees (their shared warm parent and its
    ClientApp forks included), divided by their number."""
    roots = supernode_side(deployment)
    kib = sum(m[0] for pid in process_tree(*roots) if (m := pss_and_rss(pid)))
    return kib / MIB / len(deployment.supernode_pids)


def deployed(isolation: str, supernodes: int, rounds: int, out: Path, options: Any) -> Run:
    """A run of ``rounds`` rounds on a fresh loopback deployment of ``supernodes`` nodes."""
    with isolated_env() as env:
        if options.task_poll is not None:
            env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(options.task_poll)
        start = time.perf_counter()
        deployment = ld.up(
            out / f"deployment-{isolation}", supernodes, env=env, isolation=isolation,
            database=options.database,
        )  # fmt: skip
        startup = time.perf_counter() - start
        try:
            idle = idle_cores(deployment)
            # A reply the SuperLink lost would stall its round forever: count it as a failure.
            config = (
                f"num-server-rounds={rounds} num-clients={supernodes} round-timeout=300.0 "
                f"min-available-clients={supernodes} output-dir='{out}' run-name='{isolation}'"
            )
            pss: list[float] = []
            with polling(lambda: pss.append(pss_per_supernode(deployment)), every=1.0):
                start = time.perf_counter()
                run_id = ld.submit(deployment, ROOT, config, env)
                status = ld.wait_for_run(deployment, run_id, env, timeout=3600)
                wall = time.perf_counter() - start
        finally:
            ld.stop(deployment)
    if status != "finished:completed":
        raise ld.DeploymentError(f"the {isolation} deployment's run ended {status}")
    return Run(read_history(out / isolation)["rounds"], wall, startup, pss, idle)


def simulated(clients: int, rounds: int, out: Path) -> Run:
    start = time.perf_counter()
    run_simulation_cli(
        out, "--run-name", "simulation", "--num-clients", str(clients),
        "--num-server-rounds", str(rounds),
    )  # fmt: skip
    return Run(read_history(out / "simulation")["rounds"], time.perf_counter() - start)


def row(name: str, run: Run, simulation: Run) -> str:
    startup = f"{run.startup:.1f}" if run.startup is not None else "–"
    seconds = ", ".join(f"{r['seconds']:.1f}" for r in run.rounds if r["round"])
    memory = f"{statistics.fmean(run.pss):.0f} / {max(run.pss):.0f}" if run.pss else "–"
    idle = f"{run.idle_cpu:.2f}" if run.idle_cpu is not None else "–"
    return (
        f"| {name} | {startup} | {idle} | {run.steady:.2f} | {run.steady / simulation.steady:.1f} "
        f"| {seconds} | {run.answered} | {memory} | {run.wall:.1f} |"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--supernodes", type=int, default=3, help="SuperNodes (= clients)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every run (>= 2)")
    parser.add_argument(
        "--isolation", choices=ld.ISOLATIONS, nargs="+", default=list(ld.ISOLATIONS)
    )
    parser.add_argument(
        "--database", action="store_true", help="the SuperLink's state in SQLite (up --database)"
    )
    parser.add_argument(
        "--task-poll",
        type=float,
        default=None,
        help="seconds between SuperExec's task polls (default: Flower's, 1 s)",
    )
    parser.add_argument(
        "--keep", type=Path, default=None, help="write the runs and logs here (else a temp dir)"
    )
    options = parser.parse_args(argv)
    if options.rounds < 2 or options.supernodes < 2:
        parser.error("--rounds and --supernodes: at least 2")
    with tempfile.TemporaryDirectory() as scratch:
        out = options.keep.resolve() if options.keep else Path(scratch)
        runs = {
            i: deployed(i, options.supernodes, options.rounds, out, options)
            for i in options.isolation
        }
        simulation = simulated(options.supernodes, options.rounds, out)
    poll = f"{options.task_poll} s" if options.task_poll is not None else "Flower's 1 s"
    state = "SQLite (--database)" if options.database else "in memory"
    print(
        f"default workload, {options.supernodes} clients (all sampled), {options.rounds} "
        f"rounds; steady = mean of rounds 2..R; SuperLink state {state}; task poll {poll}\n"
    )
    print(
        "| run | start-up (s) | idle CPU (cores) | steady s/round | × simulation | rounds (s) "
        "| answered | PSS per SuperNode, mean / peak (MiB) | wall (s) |\n" + "| --- " * 9 + "|"
    )
    for isolation, run in runs.items():
        print(row(f"deployment, {ld.describe_isolation(isolation)}", run, simulation))
    print(row("simulation (run_simulation.py)", simulation, simulation))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
