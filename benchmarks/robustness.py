"""Final accuracy of each aggregation rule under failing and malicious clients.

Digits, Dirichlet(0.3) label skew, 10 clients, every client in every round, 5 rounds;
every cell is the mean ± standard deviation over 3 seeds (the same seeds, data splits and
attackers for every row). Rows: FedAvg, the Hybrid with data-size weights (λ = 1) and
its norm (mad) or direction filter, and Flower's own robust aggregators run through the same app
(``strategies.flower_robust``; f = 2 assumed attackers, Bulyan f = 1 as it needs
K >= 4f + 3). Columns: clean; 30 % of clients raising in fit; 20 % sending sign-flipped
updates; 20 % sending updates scaled ×10; 20 % sending −10× updates while reporting
perfect validation accuracy (lying about quality); 20 % "little is enough" (the mean of
their own shard updates shifted by one standard deviation per coordinate). The last
column is each rule's aggregation time for one round of 10 updates of this model.

Each row's runs (every column × every seed) run in one start of Flower's engine
(``run_simulation.sweep``). Prints a Markdown table.

    python benchmarks/robustness.py                  # about 3 minutes on 2 cores
    python benchmarks/robustness.py --rounds 10 --seeds 1 2 3 4 5
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time

import numpy as np

import run_simulation
import strategies
from fl_app.kit.config import RunConfig
from fl_app.kit.data import data_spec
from fl_app.kit.results import summarize
from fl_app.parts import comparisons
from fl_app.task import build_model, get_weights
from strategies.core.codec import encode_tensors
from strategies.core.update import ClientUpdate

SCENARIOS = {
    "clean": [],
    "30 % failing": ["--fault-kind", "raise", "--fault-fraction", "0.3"],
    "20 % sign-flip": ["--fault-kind", "sign-flip", "--fault-fraction", "0.2"],
    "20 % scaled ×10": ["--fault-kind", "scale", "--fault-fraction", "0.2", "--fault-scale", "10"],
    "20 % lying quality": [
        "--fault-kind", "lie-quality", "--fault-fraction", "0.2", "--fault-scale", "10",
    ],
    "20 % little is enough": [
        "--fault-kind", "little-is-enough", "--fault-fraction", "0.2", "--fault-scale", "1",
    ],
}  # fmt: skip
KRUM = ["--num-malicious-clients", "2"]
ROWS = {
    "fedavg": ["--strategy", "fedavg"],
    "hybrid λ=1 + mad": ["--strategy", "hybrid", "--robust-filter", "mad", "--hybrid-lambda", "1"],
    "hybrid λ=1 + direction": [
        "--strategy",
        "hybrid",
        "--robust-filter",
        "direction",
        "--hybrid-lambda",
        "1",
    ],
    "flower-krum (f=2)": ["--strategy", "flower-krum", *KRUM],
    "flower-multikrum (f=2)": ["--strategy", "flower-multikrum", *KRUM],
    "flower-bulyan (f=1)": ["--strategy", "flower-bulyan", "--num-malicious-clients", "1"],
    "flower-median": ["--strategy", "flower-median"],
    "flower-trimmed-mean (β=0.2)": ["--strategy", "flower-trimmed-mean"],
}


def final_accuracies(runs: list[list[str]]) -> list[float]:
    """The final central accuracy of each run (``run_simulation.py`` flags, the same
    simulation flags in all), all run in one start of Flower's engine; NaN for a run that
    failed or has no accuracy."""
    invocations = [
        run_simulation.parse([*flags, "--run-name", f"run-{i}"]) for i, flags in enumerate(runs)
    ]
    with contextlib.redirect_stdout(io.StringIO()):  # one table, not a line per round
        finished, _, interrupted = comparisons.sweep(
            [i.cfg for i in invocations], invocations[0].simulation
        )
    if interrupted:
        raise KeyboardInterrupt
    accuracies = []
    for invocation in invocations:
        rounds = finished.get(invocation.cfg.run_name)
        accuracy = None if rounds is None else summarize(rounds)["final_accuracy"]
        accuracies.append(float("nan") if accuracy is None else float(accuracy))
    return accuracies


def aggregation_ms(flags: list[str], num_clients: int, repeats: int = 5) -> float:
    """Median wall time (ms) of one round of the rule: ``num_clients`` updates of the run's
    model (its initial weights plus noise), validated, combined, stepped."""
    cfg: RunConfig = run_simulation.parse(flags).cfg
    spec = data_spec(cfg)
    initial = get_weights(build_model(cfg.model, spec.input_shape, spec.num_classes, cfg.seed))
    rng = np.random.default_rng(0)
    updates = [
        [(w + rng.normal(scale=0.01, size=w.shape)).astype(w.dtype) for w in initial]
        for _ in range(num_clients)
    ]
    rule_type = strategies.rule_type(cfg.strategy)
    times = []
    for _ in range(repeats):
        rule = rule_type(rule_type.Options.from_config(cfg))
        rule.global_model = initial
        round_updates = [
            ClientUpdate(str(i), encode_tensors(list(u)), 100, {"val_accuracy": 0.9})
            for i, u in enumerate(updates)
        ]
        start = time.perf_counter()
        rule.aggregate(1, round_updates, [])
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * spread:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--alpha", type=float, default=0.3, help="Dirichlet concentration")
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    options = parser.parse_args()
    print(
        f"Final central accuracy (%), digits Dirichlet({options.alpha:g}), "
        f"{options.num_clients} clients, {options.rounds} rounds, mean ± std over seeds "
        f"{', '.join(map(str, options.seeds))}\n"
    )
    print("| rule | " + " | ".join(SCENARIOS) + " | aggregation (ms/round) |")
    print("| --- |" + " ---: |" * (len(SCENARIOS) + 1), flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        base = [
            "--output-dir", out,
            "--num-clients", str(options.num_clients),
            "--num-server-rounds", str(options.rounds),
            "--partitioner", "dirichlet",
            "--dirichlet-alpha", str(options.alpha),
        ]  # fmt: skip
        for row in options.rows:  # a row's cells and seeds in one engine start
            runs = [
                [*base, *ROWS[row], *faults, "--seed", str(seed)]
                for faults in SCENARIOS.values()
                for seed in options.seeds
            ]
            accuracies = final_accuracies(runs)
            per_cell = len(options.seeds)
            cells = [
                cell(accuracies[i : i + per_cell]) for i in range(0, len(accuracies), per_cell)
            ]
            ms = aggregation_ms([*base, *ROWS[row]], options.num_clients)
            print(f"| {row} | " + " | ".join(cells) + f" | {ms:.1f} |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
