"""Aggregation speed and memory: the project's strategies against Flower's FedAvg.

For N clients and models of P float32 parameters, every strategy's ``aggregate_fit`` runs
on the same FitRes results as Flower's ``FedAvg.aggregate_fit`` with ``inplace=True``
(its default: streaming) and ``inplace=False`` (``aggregate``: all updates at once).
Prints a Markdown table: best-of-R wall time, its ratio to Flower's in-place FedAvg, and
the peak memory allocated during the call (tracemalloc, which numpy reports to) in MB
and in model sizes.

Flower's FedMedian and FedTrimmedAvg (the robust aggregators that scale to these sizes;
Krum and Bulyan compute all N² distances in a Python loop) stack every update at once.

    python benchmarks/aggregation.py                 # N in {10, 100, 1000}, P in {1e5, 1e6}, 1e7 for N <= 100
    python benchmarks/aggregation.py --quick         # N in {10, 100}, P = 1e5 (seconds)
    python benchmarks/aggregation.py --size 1000 1000000   # one size
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.common import Code, FitRes, Parameters, Scalar, Status, ndarrays_to_parameters
from flwr.server.strategy import FedAvg as FlowerFedAvg
from flwr.server.strategy import FedMedian, FedTrimmedAvg

import strategies

# Configurations whose inputs plus Flower's non-streaming copies would not fit are skipped.
MEMORY_BUDGET_BYTES = 14 * 2**30
# The contenders that hold every update at once (Flower's).
ALL_AT_ONCE = ("inplace=False", "FedMedian", "FedTrimmedAvg")


@dataclass
class Proxy:
    cid: str


def make_results(num_clients: int, num_params: int, seed: int = 0) -> tuple[list[Any], Parameters]:
    """FitRes of ``num_clients`` random float32 models (two layers), and a global model."""
    rng = np.random.default_rng(seed)
    small = min(1000, num_params // 10)
    shapes = [(num_params - small,), (small,)]
    global_model = [np.zeros(s, dtype=np.float32) for s in shapes]
    results = []
    for i in range(num_clients):
        arrays = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
        metrics: dict[str, Scalar] = {
            "val_accuracy": float(rng.uniform(0.5, 0.9)),
            "val_loss": float(rng.uniform(0.2, 1.0)),
        }
        fit_res = FitRes(
            Status(Code.OK, ""),
            ndarrays_to_parameters(arrays),
            int(rng.integers(10, 1000)),
            metrics,
        )
        results.append((Proxy(str(i)), fit_res))
        del arrays
    return results, ndarrays_to_parameters(global_model)


def contenders(global_parameters: Parameters) -> dict[str, Callable[[], Any]]:
    """Name -> a fresh strategy's ``aggregate_fit`` (the project's know the global model)."""

    def project(name: str, **kwargs: Any) -> Callable[[], Any]:
        def build() -> Any:
            strategy: Any = strategies.build(
                name, api="legacy", initial_parameters=global_parameters, **kwargs
            )
            strategy.initialize_parameters(client_manager=None)
            return strategy

        return build

    return {
        "flower FedAvg (inplace=True)": lambda: FlowerFedAvg(
            fit_metrics_aggregation_fn=lambda m: {}
        ),
        "flower FedAvg (inplace=False)": lambda: FlowerFedAvg(
            inplace=False, fit_metrics_aggregation_fn=lambda m: {}
        ),
        "fedavg": project("fedavg"),
        "simple": project("simple"),
        "quality": project("quality"),
        "hybrid": project("hybrid"),
        "hybrid + mad filter": project("hybrid", robust_filter="mad"),
        "hybrid + direction filter": project("hybrid", robust_filter="direction"),
        "flower FedMedian": lambda: FedMedian(fit_metrics_aggregation_fn=lambda m: {}),
        "flower FedTrimmedAvg (β=0.2)": lambda: FedTrimmedAvg(
            beta=0.2, fit_metrics_aggregation_fn=lambda m: {}
        ),
        "fedavg + server momentum": project("fedavg", server_momentum=0.9),
    }


def measure(build: Callable[[], Any], results: list[Any], repeats: int) -> tuple[float, int]:
    """Best wall time of ``repeats`` calls, and the peak bytes allocated during one call."""
    best = float("inf")
    for _ in range(repeats):
        strategy = build()
        gc.collect()
        start = time.perf_counter()
        parameters, _ = strategy.aggregate_fit(1, results, [])
        best = min(best, time.perf_counter() - start)
        del parameters, strategy
    strategy = build()
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    parameters, _ = strategy.aggregate_fit(1, results, [])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del parameters
    return best, peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--size",
        nargs=2,
        type=int,
        action="append",
        metavar=("CLIENTS", "PARAMETERS"),
        help="only this size (repeatable)",
    )
    args = parser.parse_args()
    if args.size:
        grid = [(n, p) for n, p in args.size]
    elif args.quick:
        grid = [(10, 10**5), (100, 10**5)]
    else:
        grid = [(n, p) for p in (10**5, 10**6) for n in (10, 100, 1000)] + [
            (10, 10**7),
            (100, 10**7),
        ]
    print(
        "| clients | parameters | aggregation | time (s) | × flower in-place | peak extra (MB) | peak / model |"
    )
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for num_clients, num_params in grid:
        results, global_parameters = make_results(num_clients, num_params)
        model_bytes = num_params * 4
        reference = None
        for name, build in contenders(global_parameters).items():
            all_at_once = any(tag in name for tag in ALL_AT_ONCE)
            if all_at_once and 3 * num_clients * model_bytes > MEMORY_BUDGET_BYTES:
                print(
                    f"| {num_clients} | {num_params:.0e} | {name} | skipped: needs > {MEMORY_BUDGET_BYTES >> 30} GB | | | |"
                )
                continue
            seconds, peak = measure(build, results, args.repeats)
            reference = reference or seconds
            print(
                f"| {num_clients} | {num_params:.0e} | {name} | {seconds:.3f} | {seconds / reference:.2f} | "
                f"{peak / 2**20:.1f} | {peak / model_bytes:.2f} |",
                flush=True,
            )
        del results
        gc.collect()


if __name__ == "__main__":
    main()
