"""Scale: wall time and memory of a 10,000-client simulation, round by round.

Runs ``run_simulation.run`` (Flower's simulation engine, Ray) on the ``synthetic`` dataset
(FedProx Synthetic(α, β): each client's data comes from its own seed, so a client costs
nothing until it is sampled) with 10,000 logical clients, 100 sampled per round, one light
local epoch, so the run is dominated by the framework, not by training. The engine runs a
pool of as many virtual nodes as a round samples (``--num-nodes auto``, the default; pass
``--num-nodes per-client`` to see one node per client). A background thread
reads /proc every ``--interval`` seconds and sums the memory of the whole process tree: this
process and every descendant (Ray's gcs_server and raylet, its agents, the ClientApp actors),
as PSS (shared pages, such as Ray's /dev/shm object store, counted once) and as RSS.

Prints, per round, the wall time, the peak tree PSS during the round (in total and for the
driver, the Ray actors and the Ray services), the peak RSS sum and the number of processes;
then how much the peak grew from round 2 (round 1 includes starting Ray and the actors) to
the last round. A second run with 1,000 clients (the same 100 per round) shows whether the
total number of clients changes memory. Each run gets a fresh Python process, its own
RAY_TMPDIR and FLWR_HOME, and is checked to leave no process behind.

    python benchmarks/scale.py          # 10 rounds, 10,000 then 1,000 clients (about 2.5 min on 2 cores)
    python benchmarks/scale.py --quick  # 3 rounds, 10,000 clients only (about 40 s)
    python benchmarks/scale.py --num-clients 100000 --clients-per-round 1000 --rounds 3 \
        --compare-clients 0             # 1,000 of 100,000 clients a round (about 8 min)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

import run_simulation
from fl_app.kit import simulation as simulation_kit
from fl_app.kit.results import RoundRecord, RunListener
from strategies.sampling import SAMPLINGS
from tests.processes import TAG_VARIABLE, isolated_env, leftovers, stat_fields

ROLES = ("driver", "actors", "ray")  # this process; Ray's Python workers; Ray's services
# Ray names a Python worker "ray::IDLE" or after its actor once it has started; before, it
# shows its script.
WORKER_MARKS = (b"ray::ClientAppActor", b"ray::IDLE", b"default_worker.py")
MIB = 1024  # /proc reports KiB


@dataclass(frozen=True)
class Sample:
    """One reading of the process tree: PSS by role and RSS sum (KiB), process count."""

    time: float
    pss: dict[str, int]
    rss: int
    processes: int


@dataclass(frozen=True)
class RoundRow:
    """Round ``round``'s wall time and the peaks (MiB) sampled while it ran.

    Round 0 is start-up: from calling ``run`` to the end of the initial evaluation.
    Each role's peak is its own maximum in the round, so they need not add up to ``pss``.
    """

    round: int
    seconds: float
    clients: int
    pss: float
    driver: float
    actors: float
    ray: float
    rss: float
    processes: int


def process_tree(*roots: int) -> list[int]:
    """``roots`` and all their live descendants, from the parent PIDs in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            state, ppid = stat_fields(entry.name)[:2]
        except OSError:  # exited meanwhile
            continue
        if state != "Z":
            children.setdefault(int(ppid), []).append(int(entry.name))
    tree, pending = [], list(roots)
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, ()))
    return tree


def pss_and_rss(pid: int) -> tuple[int, int] | None:
    """PSS and RSS of ``pid`` in KiB (from /proc/PID/smaps_rollup); None once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return None
    values = {line.split()[0]: int(line.split()[1]) for line in lines[1:]}
    return values["Pss:"], values["Rss:"]


def role_of(pid: int) -> str:
    """Which of :data:`ROLES` ``pid`` plays."""
    if pid == os.getpid():
        return "driver"
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # exited meanwhile
        return "ray"
    return "actors" if any(mark in command for mark in WORKER_MARKS) else "ray"


class TreeSampler:
    """Samples this process's tree every ``interval`` seconds in a background thread."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.samples: list[Sample] = []
        self.cpu_seconds = 0.0  # the sampler's own cost (reading smaps_rollup is not free)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> Sample:
        """Read the tree now, and keep the reading."""
        cpu_start = time.thread_time()
        pss = dict.fromkeys(ROLES, 0)
        rss = processes = 0
        for pid in process_tree(os.getpid()):
            memory = pss_and_rss(pid)
            if memory is not None:
                pss[role_of(pid)] += memory[0]
                rss += memory[1]
                processes += 1
        reading = Sample(time.monotonic(), pss, rss, processes)
        self.samples.append(reading)
        self.cpu_seconds += time.thread_time() - cpu_start
        return reading


class RoundReporter(RunListener):
    """Prints a row per round, as it ends, from the samples taken since the last one."""

    def __init__(self, sampler: TreeSampler, start: float) -> None:
        self.out = sys.stdout  # as it is before measure() silences the run's own lines
        self.sampler = sampler
        self.last_end = start
        self.rows: list[RoundRow] = []

    def round_done(self, rounds: Sequence[RoundRecord]) -> None:
        record = rounds[-1]
        end = self.sampler.sample().time
        window = [s for s in self.sampler.samples if self.last_end < s.time <= end]
        row = RoundRow(
            round=record["round"],
            seconds=record["seconds"] if record["round"] > 0 else end - self.last_end,
            clients=int(record.get("accepted", 0)),
            pss=max(sum(s.pss.values()) for s in window) / MIB,
            driver=max(s.pss["driver"] for s in window) / MIB,
            actors=max(s.pss["actors"] for s in window) / MIB,
            ray=max(s.pss["ray"] for s in window) / MIB,
            rss=max(s.rss for s in window) / MIB,
            processes=max(s.processes for s in window),
        )
        self.rows.append(row)
        self.last_end = end
        print(format_row(row), file=self.out, flush=True)


HEADER = (
    "| round | seconds | clients | tree PSS peak (MiB) | driver | actors | ray services "
    "| RSS sum peak (MiB) | processes |\n" + "| ---: " * 9 + "|"
)


def format_row(row: RoundRow) -> str:
    name = "start-up" if row.round == 0 else str(row.round)
    return (
        f"| {name} | {row.seconds:.2f} | {row.clients} | {row.pss:.0f} | {row.driver:.0f} "
        f"| {row.actors:.0f} | {row.ray:.0f} | {row.rss:.0f} | {row.processes} |"
    )


def simulation_flags(
    num_clients: int, per_round: int, rounds: int, output_dir: str, sampling: str
) -> list[str]:
    """``run_simulation.py`` flags: ``per_round`` of ``num_clients`` clients, one light epoch."""
    return [
        # seeded: round 1 first asks every client its partition id (once per run).
        "--client-sampling", sampling,
        "--dataset", "synthetic",
        "--model", "mlp",
        "--strategy", "fedavg",
        "--num-clients", str(num_clients),
        "--fraction-fit", str(per_round / num_clients),
        "--min-fit-clients", str(per_round),
        # Round 1 waits until every client is registered, so any of them can be sampled.
        "--min-available-clients", str(num_clients),
        "--fraction-evaluate", "0",
        "--num-server-rounds", str(rounds),
        "--local-epochs", "1",
        "--batch-size", "64",
        "--device", "cpu",
        "--num-cpus", "1",
        # On Ray (what --backend auto picks only from 4 CPUs on): its processes' memory is
        # part of what this measures.
        "--backend", "ray",
        "--output-dir", output_dir,
        "--run-name", f"scale-{num_clients}",
    ]  # fmt: skip


def measure(options: argparse.Namespace) -> None:
    """One run in this process: print its rows; write them and the run's wall time as JSON."""
    with tempfile.TemporaryDirectory(prefix="scale-") as output_dir:
        flags = [
            *simulation_flags(
                options.num_clients,
                options.clients_per_round,
                options.rounds,
                output_dir,
                options.client_sampling,
            ),
            "--num-nodes",
            options.num_nodes,
        ]
        print(f"run_simulation.py {' '.join(flags)}\n\n{HEADER}", flush=True)
        invocation = run_simulation.parse(flags)
        cfg, simulation = invocation.cfg, invocation.simulation
        with TreeSampler(options.interval) as sampler:
            start = sampler.sample().time
            reporter = RoundReporter(sampler, start)
            with contextlib.redirect_stdout(io.StringIO()):  # the rows, not the run's lines
                simulation_kit.run(cfg, simulation, listeners=[reporter])
            seconds = time.monotonic() - start
    cpu = sampler.cpu_seconds
    print(
        f"\nwhole run: {seconds:.1f} s (start-up, rounds, Ray's shutdown); sampler: "
        f"{len(sampler.samples)} readings, {cpu:.1f} s CPU ({cpu / seconds:.1%} of a core)"
    )
    rows = [asdict(row) for row in reporter.rows]
    options.measure.write_text(json.dumps({"seconds": seconds, "rows": rows}))


def run_isolated(options: argparse.Namespace, num_clients: int) -> tuple[list[RoundRow], float]:
    """``measure`` in a fresh Python process with private Ray and Flower folders.

    Returns its rows and its wall time. Fails if any process it started (Ray's included)
    is still alive 15 s after it ended.
    """
    with isolated_env() as env, tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "rows.json"
        command = [
            sys.executable, __file__,
            "--num-clients", str(num_clients),
            "--clients-per-round", str(options.clients_per_round),
            "--rounds", str(options.rounds),
            "--interval", str(options.interval),
            "--client-sampling", options.client_sampling,
            "--num-nodes", options.num_nodes,
            "--measure", str(result),
        ]  # fmt: skip
        subprocess.run(command, env=env, check=True)
        left = leftovers(env[TAG_VARIABLE])
        if left:
            raise RuntimeError("processes left running:\n" + "\n".join(left))
        print("processes left after the run: none")
        measured = json.loads(result.read_text())
        return [RoundRow(**row) for row in measured["rows"]], float(measured["seconds"])


def growth(rows: Sequence[RoundRow]) -> str:
    """How the peaks moved from round 2 (after Ray's start-up) to the last round."""
    steady = [row for row in rows if row.round >= 2]
    first, last = steady[0], steady[-1]
    slope = np.polyfit([r.round for r in steady], [r.pss for r in steady], 1)[0]
    roles = ", ".join(f"{role} {getattr(last, role) - getattr(first, role):+.1f}" for role in ROLES)
    return (
        f"tree PSS peak, round {first.round} -> {last.round}: {last.pss - first.pss:+.1f} MiB "
        f"({(last.pss - first.pss) / first.pss:+.1%}), fitted slope {slope:+.2f} MiB/round "
        f"({roles} MiB); RSS sum {last.rss - first.rss:+.1f} MiB; "
        f"processes {first.processes} -> {last.processes}"
    )


def steady_state(rows: Sequence[RoundRow], seconds: float) -> dict[str, float]:
    """Wall times (s) and the largest peaks of rounds 2 and later (MiB), by label."""
    steady = [row for row in rows if row.round >= 2]
    peaks = {"tree PSS": "pss", **{f"{role} PSS": role for role in ROLES}, "RSS sum": "rss"}
    return {
        "whole run (s)": seconds,
        "start-up (s)": rows[0].seconds,
        "round 1 (s)": rows[1].seconds,
        "rounds 2+, mean (s)": float(np.mean([r.seconds for r in steady])),
        **{
            f"{label} peak (MiB)": max(getattr(r, key) for r in steady)
            for label, key in peaks.items()
        },
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds, no comparison run")
    parser.add_argument("--num-clients", type=int, default=10_000)
    parser.add_argument("--clients-per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--compare-clients",
        type=int,
        default=1_000,
        help="a second run with this many clients (0: none)",
    )
    parser.add_argument(
        "--client-sampling",
        choices=SAMPLINGS,
        default="seeded",
        help="seeded draws the round's partitions from the seed; flower is Flower's "
        "unseeded random.sample (with one node per client, seeded asks every node its "
        "partition id in round 1)",
    )
    parser.add_argument(
        "--num-nodes",
        default="auto",
        help="the engine's virtual nodes (run_simulation.py --num-nodes)",
    )
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between readings")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # one run, in a child
    options = parser.parse_args(argv)
    if options.measure is not None:
        measure(options)
        return
    if options.quick:
        options.rounds, options.compare_clients = 3, 0
    if options.rounds < 2:
        parser.error("--rounds must be at least 2: round 1 includes Ray's start-up")
    start = time.monotonic()
    memory_gib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    print(
        f"{options.clients_per_round} of N clients per round, {options.rounds} rounds, "
        f"N = {', '.join(str(n) for n in (options.num_clients, options.compare_clients) if n)}; "
        f"memory read every {options.interval} s\n"
        f"{os.cpu_count()} cores, {memory_gib:.1f} GiB, Python {platform.python_version()}, "
        + ", ".join(f"{p} {version(p)}" for p in ("flwr", "ray", "torch", "numpy")),
        flush=True,
    )
    runs: dict[int, tuple[list[RoundRow], float]] = {}
    for num_clients in (options.num_clients, options.compare_clients):
        if num_clients:
            print(f"\n## {num_clients} clients\n", flush=True)
            runs[num_clients] = run_isolated(options, num_clients)
            print(growth(runs[num_clients][0]), flush=True)
    if len(runs) == 2:
        stats = {n: steady_state(*run) for n, run in runs.items()}
        big, small = runs
        print(f"\n## {big} against {small} clients\n")
        print(f"| | {big} clients | {small} clients | difference |\n| --- | ---: | ---: | ---: |")
        for key in stats[big]:
            a, b = stats[big][key], stats[small][key]
            print(f"| {key} | {a:.1f} | {b:.1f} | {a - b:+.1f} ({(a - b) / b:+.0%}) |")
    print(f"\nwhole benchmark: {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
