"""Final central accuracy against the privacy spent, for each DP mode.

Digits, IID, every client in every round, the same seeds for every cell. Modes: central
(client-level: the server clips and noises the aggregate), local (client-level: each
client clips and noises its update), dp-sgd (sample-level: Opacus DP-SGD in each
client's training; ε of the client whose schedule spends most). Each column's noise
multiplier z is the one that spends exactly that ε at δ after the last round (found by
bisection on the accountant the runs report with), or, with ``--noise-multipliers``, the
given z with the ε it spends; ∞ is no DP at all. Prints a Markdown table.

    python benchmarks/privacy.py                       # central, ε 8, 3, 1: 10 clients, 10 rounds
    python benchmarks/privacy.py --modes local dp-sgd
    python benchmarks/privacy.py --noise-multipliers 0.1 0.3 1
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable

# benchmarks/ is on the path when a script in it runs: the same quiet run as the robustness table.
from robustness import cell, final_accuracies

import run_simulation
from fl_app.kit.config import RunConfig
from fl_app.kit.data import load_client_data
from strategies.accounting import dp_sgd_schedule, epsilon, sample_epsilon
from strategies.privacy import DP_MODES

ROWS = {
    "fedavg": ["--strategy", "fedavg"],
    "hybrid": ["--strategy", "hybrid"],
}


def client_level(rounds: int) -> Callable[[float, float], float]:
    """ε(z, δ) after ``rounds`` rounds of every client (central DP's aggregate, or a local-DP
    client's own releases: the same Gaussian mechanism, once per round)."""
    return lambda z, delta: epsilon([(1, 1)] * rounds, z, delta)


def sample_level(cfg: RunConfig, num_clients: int) -> Callable[[float, float], float]:
    """ε(z, δ) of the client that spends most after ``cfg.num_server_rounds`` rounds of
    DP-SGD (the largest sample rate; every client takes part in every round)."""
    sizes = {len(load_client_data(cfg, p, num_clients).train) for p in range(num_clients)}
    schedules = {dp_sgd_schedule(n, cfg.batch_size, cfg.local_epochs) for n in sizes}
    rounds = cfg.num_server_rounds
    return lambda z, delta: max(sample_epsilon([s] * rounds, z, delta) for s in schedules)


def noise_for(target: float, spent: Callable[[float, float], float], delta: float) -> float:
    """The noise multiplier that spends ``target`` ε at ``delta`` (bisection; ε falls as the
    noise grows)."""
    low, high = 1e-2, 1e4
    for _ in range(60):
        middle = math.sqrt(low * high)
        if spent(middle, delta) > target:
            low = middle
        else:
            high = middle
    return high


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modes", nargs="+", choices=DP_MODES[1:], default=["central"])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 3.0, 1.0])
    choice.add_argument("--noise-multipliers", type=float, nargs="+")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--clipping-norm", type=float, default=1.0)
    options = parser.parse_args()
    base = [
        "--num-clients", str(options.num_clients),
        "--num-server-rounds", str(options.rounds),
        "--dp-clipping-norm", str(options.clipping_norm),
        "--dp-delta", str(options.delta),
    ]  # fmt: skip
    spenders = {
        "central": client_level(options.rounds),
        "local": client_level(options.rounds),
        "dp-sgd": sample_level(run_simulation.parse(base).cfg, options.num_clients),
    }
    print(
        f"Final central accuracy (%), digits IID, {options.num_clients} clients, "
        f"{options.rounds} rounds, C = {options.clipping_norm:g}, δ = {options.delta:g}, "
        f"mean ± std over seeds {', '.join(map(str, options.seeds))}\n"
    )
    levels = options.noise_multipliers or options.epsilons
    what = "z" if options.noise_multipliers else "ε"
    columns = ["no DP", *(f"{what} = {level:g}" for level in levels)]
    print("| DP | strategy | " + " | ".join(columns) + " | " + ("ε" if what == "z" else "z") + " |")
    print("| --- | --- |" + " ---: |" * (len(columns) + 1), flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        base += ["--output-dir", out]

        def accuracies(cells: list[list[str]]) -> list[str]:
            """Each cell's mean ± std over the seeds, every run in one engine start."""
            runs = [
                [*base, *flags, "--seed", str(seed)] for flags in cells for seed in options.seeds
            ]
            finals = final_accuracies(runs)
            n = len(options.seeds)
            return [cell(finals[i : i + n]) for i in range(0, len(finals), n)]

        clear = dict(zip(ROWS, accuracies(list(ROWS.values())), strict=True))
        for mode in options.modes:
            spent = spenders[mode]
            if options.noise_multipliers:
                noises = options.noise_multipliers
                other = [spent(z, options.delta) for z in noises]
            else:
                noises = [noise_for(t, spent, options.delta) for t in options.epsilons]
                other = noises
            for row, flags in ROWS.items():
                cells = accuracies(
                    [[*flags, "--dp", mode, "--dp-noise-multiplier", str(z)] for z in noises]
                )
                given = " / ".join(f"{v:.3g}" for v in other)
                print(
                    f"| {mode} | {row} | {clear[row]} | " + " | ".join(cells) + f" | {given} |",
                    flush=True,
                )
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
