"""Final central accuracy against the privacy spent, central (client-level) DP.

Digits, IID, every client in every round, the same seeds for every cell; each column's
noise multiplier z is the one that spends exactly that ε at δ after the last round (found
by bisection on the same accountant the runs report with), or, with
``--noise-multipliers``, the given z with the ε it spends; ∞ is no DP at all. Prints a
Markdown table.

    python benchmarks/privacy.py                       # ε 8, 3, 1: 10 clients, 10 rounds, 3 seeds
    python benchmarks/privacy.py --noise-multipliers 0.1 0.3 1
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

# benchmarks/ is on the path when a script in it runs: the same quiet run as the robustness table.
from robustness import cell, final_accuracy

from fl_app.ray_cluster import ray_node
from strategies.privacy import epsilon

ROWS = {
    "fedavg": ["--strategy", "fedavg"],
    "hybrid": ["--strategy", "hybrid"],
}


def noise_for(target: float, rounds: int, delta: float) -> float:
    """The noise multiplier that spends ``target`` ε at ``delta`` over ``rounds`` rounds of
    every client (bisection; ε falls as the noise grows)."""
    low, high = 1e-3, 1e4
    for _ in range(100):
        middle = math.sqrt(low * high)
        if epsilon([(1, 1)] * rounds, middle, delta) > target:
            low = middle
        else:
            high = middle
    return high


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 3.0, 1.0])
    choice.add_argument("--noise-multipliers", type=float, nargs="+")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--clipping-norm", type=float, default=1.0)
    options = parser.parse_args()
    every_round = [(1, 1)] * options.rounds
    if options.noise_multipliers:
        noises = {epsilon(every_round, z, options.delta): z for z in options.noise_multipliers}
    else:
        noises = {t: noise_for(t, options.rounds, options.delta) for t in options.epsilons}
    print(
        f"Final central accuracy (%), digits IID, {options.num_clients} clients, "
        f"{options.rounds} rounds, central DP (C = {options.clipping_norm:g}, δ = "
        f"{options.delta:g}), mean ± std over seeds {', '.join(map(str, options.seeds))}\n"
    )
    columns = ["ε = ∞ (no DP)", *(f"ε = {t:.3g} (z = {z:.3g})" for t, z in noises.items())]
    print("| strategy | " + " | ".join(columns) + " |")
    print("| --- |" + " ---: |" * len(columns), flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out, ray_node() as address:
        base = [
            "--output-dir", out,
            "--run-name", "run",
            "--num-clients", str(options.num_clients),
            "--num-server-rounds", str(options.rounds),
        ]  # fmt: skip
        private = ["--dp", "central", "--dp-clipping-norm", str(options.clipping_norm)]
        private += ["--dp-delta", str(options.delta)]
        settings: list[list[str]] = [[]] + [
            [*private, "--dp-noise-multiplier", str(z)] for z in noises.values()
        ]
        for row, flags in ROWS.items():
            cells = []
            for dp in settings:
                values = [
                    final_accuracy([*base, *flags, *dp, "--seed", str(seed)], address)
                    for seed in options.seeds
                ]
                cells.append(cell(values))
            print(f"| {row} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
