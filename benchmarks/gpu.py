"""GPU sharing: clients per second per round for the cnn model, and CUDA against the CPU.

One run of ``run_simulation.py`` per client count and ``--num-gpus`` fraction, each in a
fresh process with its own Ray: the ``cnn`` model on ``digits`` (1×8×8 images, embedded in
scikit-learn, nothing to download), every client training every round, 1 CPU per client.
Prints the mean seconds of rounds 2..R (round 1 starts Ray and its workers) and the clients
trained per second. Then the same seed once on the CPU and once on CUDA, and the largest
per-round difference of their central accuracy.

    python benchmarks/gpu.py                                   # on a machine with a GPU
    python benchmarks/gpu.py --device cpu --fractions 0 --clients 4 --rounds 2   # a dry run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.processes import ROOT, TAG_VARIABLE, isolated_env, leftovers


def simulate(clients: int, fraction: float, device: str, num_rounds: int) -> list[dict[str, Any]]:
    """The round records of one run (checked to leave no process behind)."""
    with isolated_env() as env, tempfile.TemporaryDirectory(prefix="gpu-") as out:
        command = [
            sys.executable, "run_simulation.py",
            "--model", "cnn",
            "--num-clients", str(clients),
            "--num-gpus", str(fraction),
            "--num-cpus", "1",
            "--device", device,
            "--num-server-rounds", str(num_rounds),
            "--fraction-evaluate", "0",
            "--output-dir", out,
            "--run-name", "run",
        ]  # fmt: skip
        subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
        left = leftovers(env[TAG_VARIABLE])
        if left:
            raise RuntimeError(f"processes left after the run: {left}")
        rounds: list[dict[str, Any]] = json.loads((Path(out) / "run" / "history.json").read_text())[
            "rounds"
        ]
        return rounds


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run")
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args(argv)
    print("| clients | --num-gpus | device | s per round (2..R) | clients per s |")
    print("| ---: | ---: | --- | ---: | ---: |")
    for clients in options.clients:
        for fraction in options.fractions:
            rounds = simulate(clients, fraction, options.device, options.rounds)
            steady = [r["seconds"] for r in rounds[2:]]
            seconds = sum(steady) / len(steady)
            trained = sum(r["accepted"] for r in rounds[2:]) / len(steady)
            print(
                f"| {clients} | {fraction:g} | {options.device} | {seconds:.2f} "
                f"| {trained / seconds:.1f} |",
                flush=True,
            )
    clients, fraction = options.clients[0], options.fractions[0]
    cpu, other = (
        [float(r["central_accuracy"]) for r in simulate(clients, fraction, device, options.rounds)]
        for device in ("cpu", options.device)
    )
    gap = max(abs(a - b) for a, b in zip(cpu, other, strict=True))
    print(f"\ncentral accuracy per round, {clients} clients, same seed:")
    print(
        f"  cpu: {[round(a, 4) for a in cpu]}\n  {options.device}: {[round(a, 4) for a in other]}"
    )
    print(f"largest difference, cpu against {options.device}: {gap:.4f}")


if __name__ == "__main__":
    main()
