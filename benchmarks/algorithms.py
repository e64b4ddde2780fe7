"""The baselines a new rule is compared against, on the same seeded partitions and clients:
each rule × server optimizer, FedProx, SCAFFOLD, and Flower's own FedAvg, FedProx and FedAdam
as references. Prints a Markdown table of the final central accuracy (%), each cell the mean
and the 95 % interval (Student's t) over the seeds.

Setups: digits split IID, digits with Dirichlet(0.3) and Dirichlet(0.1) label skew, digits
with 2 classes per client (Pathological(2), like the pathological non-IID split of McMahan et
al. 2017), and Synthetic(1, 1) (Li et al. 2020, the ``linear`` model; its central test set
pools 100 devices of their own models, so its central accuracy stays low). 10 clients, all
of them every round. Local steps are plain SGD (momentum 0) in every row, as SCAFFOLD's
variates need: every row takes the same local steps. The adaptive optimizers take Flower's
defaults (η = 0.1, β₁ = 0.9, β₂ = 0.99, τ = 1e-9), as the ``flower-fedadam`` row does. Every
run of every setup and seed runs in one start of Flower's engine (``comparisons.sweep``).

    python benchmarks/algorithms.py                  # about 9 minutes on 2 cores
    python benchmarks/algorithms.py --rounds 10 --local-epochs 10 --rows "fedavg + sgd" \
        SCAFFOLD --setups "Pathological(2)" --versus "fedavg + sgd"
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import tempfile
import time

import run_simulation
from fl_app.kit.results import summarize
from fl_app.parts import comparisons
from fl_app.parts.statistics import Estimate, t_quantile
from strategies import REGISTRY
from strategies.server_optimizer import OPTIMIZERS

SETUPS = {
    "IID": ["--partitioner", "iid"],
    "Dirichlet(0.3)": ["--partitioner", "dirichlet", "--dirichlet-alpha", "0.3"],
    "Dirichlet(0.1)": ["--partitioner", "dirichlet", "--dirichlet-alpha", "0.1"],
    "Pathological(2)": ["--partitioner", "pathological", "--classes-per-client", "2"],
    "Synthetic(1, 1)": ["--dataset", "synthetic", "--model", "linear"],
}
ADAPTIVE = ["--server-learning-rate", "0.1", "--server-tau", "1e-9"]  # Flower's defaults
MU = ["--proximal-mu", "0.1"]
ROWS = {
    f"{rule} + {optimizer}": [
        "--strategy", rule, "--server-optimizer", optimizer, *([] if optimizer == "sgd" else ADAPTIVE)
    ]
    for rule in REGISTRY
    for optimizer in OPTIMIZERS
}  # fmt: skip
ROWS |= {
    "FedProx (fedavg, μ = 0.1)": ["--strategy", "fedavg", *MU],
    "SCAFFOLD": ["--strategy", "scaffold"],
    "Flower's FedAvg": ["--strategy", "flower-fedavg"],
    "Flower's FedProx (μ = 0.1)": ["--strategy", "flower-fedavg", *MU],
    "Flower's FedAdam": ["--strategy", "flower-fedadam"],
}


def cell(values: list[float]) -> str:
    """Mean and 95 % interval of ``values`` (accuracies in [0, 1]) in percent."""
    estimate = Estimate(tuple(values))
    present = estimate.present
    if len(present) < 2:
        return f"{100 * estimate.mean:.1f}"
    half = t_quantile(len(present) - 1) * estimate.std / math.sqrt(len(present))
    return f"{100 * estimate.mean:.1f} ± {100 * half:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=3)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    parser.add_argument(
        "--versus", choices=list(ROWS), help="also each row's paired difference from this one"
    )
    options = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        base = [
            "--output-dir", out,
            "--num-clients", str(options.num_clients),
            "--min-fit-clients", str(options.num_clients),
            "--min-available-clients", str(options.num_clients),
            "--num-server-rounds", str(options.rounds),
            "--momentum", "0",
            "--local-epochs", str(options.local_epochs),
        ]  # fmt: skip
        cells = [
            (row, setup, seed)
            for row in options.rows
            for setup in options.setups
            for seed in options.seeds
        ]
        invocations = [
            run_simulation.parse(
                [*base, *SETUPS[setup], *ROWS[row], "--seed", str(seed), "--run-name", f"run-{i}"]
            )
            for i, (row, setup, seed) in enumerate(cells)
        ]
        with contextlib.redirect_stdout(io.StringIO()):  # one table, not a line per round
            finished, failed, interrupted = comparisons.sweep(
                [i.cfg for i in invocations], invocations[0].simulation
            )
        if interrupted:
            raise KeyboardInterrupt
    accuracy: dict[tuple[str, str], list[float]] = {}
    for (row, setup, _), invocation in zip(cells, invocations, strict=True):
        rounds = finished.get(invocation.cfg.run_name)
        final = None if rounds is None else summarize(rounds)["final_accuracy"]
        accuracy.setdefault((row, setup), []).append(math.nan if final is None else final)
    seeds = ", ".join(map(str, options.seeds))
    print(
        f"Final central accuracy (%), {options.num_clients} clients, {options.rounds} rounds of "
        f"{options.local_epochs} local epochs, "
        f"mean ± 95 % interval over seeds {seeds}\n"
    )
    print("| algorithm | " + " | ".join(options.setups) + " |")
    print("| --- |" + " ---: |" * len(options.setups))
    for row in options.rows:
        print(f"| {row} | " + " | ".join(cell(accuracy[row, s]) for s in options.setups) + " |")
    if options.versus:  # the seeds share splits and samples: differences are paired by seed
        print(f"\nPaired difference from {options.versus} (points)\n")
        print("| algorithm | " + " | ".join(options.setups) + " |")
        print("| --- |" + " ---: |" * len(options.setups))
        for row in options.rows:
            differences = [
                [a - b for a, b in zip(accuracy[row, s], accuracy[options.versus, s], strict=True)]
                for s in options.setups
            ]
            print(f"| {row} | " + " | ".join(cell(d) for d in differences) + " |")
    for name, error in failed.items():
        print(f"\n{name} failed: {error}")
    print(f"\n{len(cells)} runs in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
