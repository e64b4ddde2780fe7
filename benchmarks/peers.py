"""Peers side by side: pfl-research, a plain Flower app and this project on one workload.

One workload, the same seed for all: digits IID over 100 clients, 10 sampled a round, 20
rounds, the MLP (McMahan et al.'s 2NN), 3 local epochs of SGD (learning rate 0.05, momentum
0.9, batch 16), FedAvg weighted by examples, central evaluation on the server's test set
before training and after every round. The contenders:

- ``pfl``: pfl-research (``pfl`` 0.6, its PyTorch backend) in its single-process
  simulation, run by ``benchmarks/peers_pfl.py`` in pfl's own virtual environment (pfl pins
  ``dp-accounting<0.6``, the project's ``flwr[dp]`` needs 0.6). It is handed the project's
  client datasets (the same partitioner and seed), the project's initial model and the
  clients the project's seeded sampling picks each round;
- ``plain flower``: overhead.py's plain Flower app (a NumPyClient as in Flower's PyTorch
  quickstart, Flower's FedAvg and its own unseeded sampling) on Flower's simulation engine;
- ``project (Ray)`` and ``project (in process)``: ``run_simulation.py``'s simulation with
  ``--backend ray`` and ``--backend inprocess`` (``auto`` picks the latter on 2 CPUs), as in
  overhead.py;
- ``plain loop``: overhead.py's plain PyTorch loop in this process, for reference.

Definitions as in overhead.py: round r runs from the end of round r-1's central evaluation
to the end of round r's; *steady* is the mean of rounds 2..R; *start-up* is the wall time
minus R × steady. Each contender runs ``--repeats`` times (3); the run with the median
steady time counts. pfl's wall time is taken inside its process from loading the workload
on; its interpreter start and imports are reported apart, as this process's imports of
torch and Flower precede the others' clocks.

    python benchmarks/peers.py                # about 2 minutes on 2 cores (or python -m benchmarks.peers)
    python benchmarks/peers.py --repeats 1    # about 45 seconds
    python benchmarks/peers.py --pfl-python PATH/TO/python   # pfl's environment elsewhere

pfl's environment, once (``.venv-pfl`` at the repository root, git-ignored; about 1.5
minutes here, most of it torch; pfl 0.6 needs Python 3.10 to 3.12):

    python3.11 -m venv .venv-pfl && .venv-pfl/bin/pip install 'pfl[pytorch]==0.6.0'

Without it the other contenders still run, and the reason and that command are printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: import benchmarks.* from this checkout
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import run_simulation  # noqa: E402
from benchmarks.overhead import (  # noqa: E402
    COMMON,
    WORKLOADS,
    Timing,
    median,
    plain_flower,
    plain_loop,
    project_in_process,
)
from benchmarks.overhead import project as project_run  # noqa: E402
from fl_app.kit.config import RunConfig  # noqa: E402
from fl_app.kit.data import data_spec, load_client_data, load_server_data  # noqa: E402
from strategies.sampling import SeededSampler  # noqa: E402

PFL_SIDE = REPO / "benchmarks" / "peers_pfl.py"
PFL_VENV = REPO / ".venv-pfl"
PFL_REQUIREMENT = "pfl[pytorch]==0.6.0"
PFL_TIMEOUT = 600  # seconds for one pfl run (it takes a few here)
# Why pfl cannot share the project's environment (from both packages' metadata).
PFL_CONFLICT = (
    "pfl 0.6.0 requires dp-accounting<0.6 (and Python <3.13), the project's flwr[dp] 1.42 "
    "requires dp-accounting>=0.6,<0.7: pfl runs in an environment of its own"
)


def workload_flags(rounds: int, seed: int, output_dir: str) -> list[str]:
    """overhead.py's light workload, for ``rounds`` rounds."""
    return [
        *COMMON,
        *WORKLOADS["light"],
        "--num-server-rounds", str(rounds),
        "--seed", str(seed),
        "--output-dir", output_dir,
    ]  # fmt: skip


def pfl_cohorts(cfg: RunConfig, num_clients: int) -> list[list[int]]:
    """Each round's clients as the project's seeded sampling draws them."""
    sampler = SeededSampler(cfg.seed)
    per_round = cfg.fit_clients(num_clients)
    return [
        sampler.draw(server_round, "train", num_clients, per_round)
        for server_round in range(1, cfg.num_server_rounds + 1)
    ]


def export_workload(cfg: RunConfig, num_clients: int, path: Path) -> None:
    """The workload for peers_pfl.py: settings, every client's training data (the project's
    partition, less its local validation split, as the project's clients train on), the
    server test set and each round's cohort."""
    spec = data_spec(cfg)
    clients = [load_client_data(cfg, i, num_clients).train for i in range(num_clients)]
    test = load_server_data(cfg).test
    settings = {
        "model": cfg.model,
        "input_shape": list(spec.input_shape),
        "num_classes": spec.num_classes,
        "seed": cfg.seed,
        "local_epochs": cfg.local_epochs,
        "batch_size": cfg.batch_size,
        "learning_rate": cfg.learning_rate,
        "momentum": cfg.momentum,
    }
    np.savez(
        path,
        settings=np.array(json.dumps(settings)),
        client_sizes=np.array([len(c) for c in clients], dtype=np.int64),
        client_x=np.concatenate([c.x for c in clients]),
        client_y=np.concatenate([c.y for c in clients]),
        test_x=test.x,
        test_y=test.y,
        cohorts=np.array(pfl_cohorts(cfg, num_clients), dtype=np.int64),
    )


def pfl_setup_command(venv: Path = PFL_VENV) -> str:
    """The command that creates pfl's environment (pfl supports Python 3.10 to 3.12)."""
    python = sys.executable if sys.version_info < (3, 13) else "python3.12"
    return (
        f"{shlex.quote(python)} -m venv {shlex.quote(str(venv))} && "
        f"{shlex.quote(str(venv / 'bin' / 'pip'))} install '{PFL_REQUIREMENT}'"
    )


class PflUnavailableError(Exception):
    """pfl cannot run here; the message says exactly why."""


class Pfl:
    """pfl's side, run as a contender: ``Pfl(python)(flags)`` is a Timing like the others'.

    ``outside_clock`` holds each run's subprocess time beyond its wall time (interpreter
    start, imports, the result's write), ``info`` what the last run reported of itself
    (versions, threads, device, import time).
    """

    def __init__(self, python: Path) -> None:
        self.python = python
        self.outside_clock: list[float] = []
        self.info: dict[str, object] = {}

    def problem(self) -> str | None:
        """Why pfl cannot run with this interpreter (None: it can be tried)."""
        if not self.python.exists():
            return (
                f"pfl not run: no interpreter at {self.python}. {PFL_CONFLICT}; "
                f"create it with: {pfl_setup_command(self.python.parent.parent)}"
            )
        return None

    def __call__(self, flags: list[str]) -> Timing:
        invocation = run_simulation.parse(flags)
        cfg, num_clients = invocation.cfg, invocation.cfg.num_clients
        with tempfile.TemporaryDirectory() as scratch:
            workload, result = Path(scratch) / "workload.npz", Path(scratch) / "result.json"
            export_workload(cfg, num_clients, workload)
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            start = time.perf_counter()
            try:
                done = subprocess.run(
                    [str(self.python), str(PFL_SIDE), str(workload), str(result)],
                    cwd=REPO,
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=PFL_TIMEOUT,
                )
            except subprocess.TimeoutExpired as err:
                raise PflUnavailableError(
                    f"pfl not run: {PFL_SIDE.name} did not finish in {PFL_TIMEOUT} s"
                ) from err
            process_seconds = time.perf_counter() - start
            if done.returncode != 0:
                tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
                raise PflUnavailableError(
                    f"pfl not run: {self.python} {PFL_SIDE.name} exited with "
                    f"{done.returncode}:\n{tail}"
                )
            reported = json.loads(result.read_text())
        self.info = {k: v for k, v in reported.items() if k not in ("wall", "marks", "accuracy")}
        self.outside_clock.append(process_seconds - reported["wall"])
        return Timing(
            wall=reported["wall"],
            marks=reported["marks"],
            accuracy=reported["accuracy"],
            cohorts=pfl_cohorts(cfg, num_clients),
        )


def row(name: str, timings: list[Timing]) -> str:
    """The median run's figures, and every run's final accuracy."""
    timing = median(timings)
    every = ", ".join(f"{100 * t.accuracy:.1f}" for t in timings)
    return (
        f"| {name} | {timing.wall:.2f} | {timing.start_up:.2f} "
        f"| {timing.steady / len(timing.rounds):.3f} | {100 * timing.accuracy:.1f} | {every} |"
    )


def main() -> None:
    logging.getLogger("flwr").setLevel(logging.ERROR)  # the plain Flower app's round logs
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pfl-python",
        type=Path,
        default=PFL_VENV / "bin" / "python",
        help="the interpreter of pfl's environment (default: %(default)s)",
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each; the median (by steady time) counts"
    )
    args = parser.parse_args()
    pfl = Pfl(args.pfl_python)
    with tempfile.TemporaryDirectory() as out:
        flags = workload_flags(args.rounds, args.seed, out)
        cfg = run_simulation.parse(flags).cfg
        print(
            f"digits IID, {cfg.model}, 100 clients, 10 a round, {cfg.num_server_rounds} rounds, "
            f"{cfg.local_epochs} local epochs, batch {cfg.batch_size}, SGD lr "
            f"{cfg.learning_rate} momentum {cfg.momentum}, FedAvg, seed {cfg.seed}; "
            f"median of {args.repeats} run(s) each; torch {torch.__version__}, "
            f"{os.cpu_count()} CPUs",
            flush=True,
        )
        contenders: dict[str, Callable[[list[str]], Timing]] = {
            "plain loop (reference)": plain_loop,
            "pfl": pfl,
            "plain flower": plain_flower,
            "project (Ray)": project_run,
            "project (in process)": project_in_process,
        }
        problem = pfl.problem()
        runs: dict[str, list[Timing]] = {}
        for name, run in contenders.items():
            if run is pfl and problem is not None:
                continue
            try:
                runs[name] = [run(flags) for _ in range(args.repeats)]
            except PflUnavailableError as err:
                problem = str(err)
    print(
        "\n| contender | wall (s) | start-up (s) | steady (s/round) | final accuracy (%) "
        "| final accuracy, every run (%) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, timings in runs.items():
        print(row(name, timings))
    print()
    if problem is not None:
        print(problem)
    else:
        same = all(t.cohorts == runs["project (Ray)"][0].cohorts for t in runs["pfl"])
        print(
            f"pfl {pfl.info['pfl']} (torch {pfl.info['torch']}, {pfl.info['threads']} torch "
            f"threads, {pfl.info['device']}), single process (SimulatedBackend; its "
            "multi-worker mode not used). Its process spent "
            f"{statistics.median(pfl.outside_clock):.2f} s more on interpreter start and "
            f"imports ({pfl.info['imports']:.2f} s importing torch, pfl and the project's "
            "model), outside its clock. Same clients each round as the project: "
            f"{'yes' if same else 'NO'}."
        )
    print(
        "plain flower samples with Flower's own unseeded sampler: other clients than the "
        "rest, and other ones each run."
    )
    print(
        "The plain loop trains with "
        f"{torch.get_num_threads()} torch threads in this process; plain flower and "
        "project (Ray) run one single-threaded client per CPU on Ray, project (in process) "
        "one client at a time on one thread."
    )


if __name__ == "__main__":
    main()
