"""Final accuracy of each strategy under failing and malicious clients.

Digits, Dirichlet(0.3) label skew, 10 clients, every client in every round, same seed for
every cell. Scenarios: clean; 30 % of clients raising in fit; 20 % sending sign-flipped
updates; 20 % sending updates scaled ×10; 20 % sending −10× updates while reporting
perfect validation accuracy (lying about quality). Prints a Markdown table.

    python benchmarks/robustness.py                  # 5 rounds per run, about 5 minutes on 2 cores
    python benchmarks/robustness.py --rounds 10
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile

from rich.console import Console

import run_simulation
from fl_app.results import summarize

SCENARIOS = {
    "clean": [],
    "30 % failing": ["--fault-kind", "raise", "--fault-fraction", "0.3"],
    "20 % sign-flip": ["--fault-kind", "sign-flip", "--fault-fraction", "0.2"],
    "20 % scaled ×10": ["--fault-kind", "scale", "--fault-fraction", "0.2", "--fault-scale", "10"],
    "20 % lying quality": [
        "--fault-kind",
        "lie-quality",
        "--fault-fraction",
        "0.2",
        "--fault-scale",
        "10",
    ],
}
STRATEGIES = {
    "simple": ["--strategy", "simple"],
    "quality": ["--strategy", "quality"],
    "fedavg": ["--strategy", "fedavg"],
    "hybrid": ["--strategy", "hybrid"],
    "hybrid + mad filter": ["--strategy", "hybrid", "--robust-filter", "mad"],
}


def final_accuracy(flags: list[str]) -> float:
    invocation = run_simulation.parse(flags)
    cfg, simulation = invocation.cfg, invocation.simulation
    with contextlib.redirect_stdout(io.StringIO()):  # one table, not a line per round
        rounds = run_simulation.run(cfg, simulation, console=Console(file=io.StringIO()))
    accuracy = summarize(rounds)["final_accuracy"]
    return float("nan") if accuracy is None else float(accuracy)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=0.3, help="Dirichlet concentration")
    options = parser.parse_args()
    print(
        f"Final central accuracy, digits Dirichlet({options.alpha:g}), 10 clients, {options.rounds} rounds\n"
    )
    print("| strategy | " + " | ".join(SCENARIOS) + " |")
    print("| --- |" + " ---: |" * len(SCENARIOS))
    with tempfile.TemporaryDirectory() as out:
        base = [
            "--output-dir", out,
            "--num-server-rounds", str(options.rounds),
            "--partitioner", "dirichlet",
            "--dirichlet-alpha", str(options.alpha),
        ]  # fmt: skip
        for name, strategy in STRATEGIES.items():
            cells = []
            for scenario, faults in SCENARIOS.items():
                run_name = (
                    f"{name}-{scenario}".replace(" ", "_").replace("%", "pct").replace("×", "x")
                )
                cells.append(
                    f"{final_accuracy([*base, *strategy, *faults, '--run-name', run_name]):.1%}"
                )
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
