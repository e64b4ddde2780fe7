"""Framework overhead: the project's Flower simulation against a plain PyTorch loop.

The same federated workload (partitions, model, local epochs, batch size, clients per
round, rounds, central evaluation after every round) runs three ways:

- ``project (Ray)``: ``run_simulation.py``'s simulation (Flower's simulation engine on Ray,
  the project's ClientApp, strategy, results and checkpoints);
- ``project (in process)``: the same with ``--backend inprocess`` (what ``--backend auto``
  picks on 2 CPUs);
- ``plain flower``: a minimal Flower app on the same engine, as in Flower's PyTorch
  quickstart: a NumPyClient that builds its model per call, Flower's built-in FedAvg;
- ``plain loop``: one process that trains each sampled client in turn with the same
  training code and averages the weights in memory (FedAvg).

Round r's time runs from the end of round r-1's central evaluation to the end of round r's.
``start-up`` is the wall time minus R steady rounds (the mean of rounds 2..R): Ray and
its worker processes, imports, first data loads, shutdown. ``× loop`` compares the steady
rounds; ``overhead`` is (steady time − the loop's steady time) / client-rounds. Each
contender runs ``--repeats`` times (3); the run with the median steady time counts.

    python benchmarks/overhead.py               # light and heavy workload, about 3 minutes on 2 cores
    python benchmarks/overhead.py --repeats 1   # about 1.5 minutes
    python benchmarks/overhead.py --workload light
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

# torch's optimizers import torch._dynamo at first use (about 1 s): imported before every clock.
import torch._dynamo
from flwr.client import Client, ClientApp, NumPyClient
from flwr.common import Context, NDArrays, Scalar, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg as FlowerFedAvg

import run_simulation
from fl_app.kit import simulation as simulation_kit
from fl_app.kit.config import RunConfig
from fl_app.kit.data import data_spec, load_client_data, load_server_data, pool
from fl_app.kit.results import RoundRecord, RunListener
from fl_app.kit.seeds import seed_for
from fl_app.kit.training import train_as_configured
from fl_app.task import build_model, evaluate, get_weights, set_weights

WORKLOADS = {
    # Overhead dominates: a client trains on about 11 digits for 3 epochs.
    "light": ["--model", "mlp", "--local-epochs", "3"],
    # Local training takes well over 100 ms per client-round.
    "heavy": ["--model", "cnn", "--local-epochs", "80"],
}
COMMON = [
    "--dataset", "digits", "--partitioner", "iid", "--num-clients", "100",
    "--fraction-fit", "0.1", "--min-fit-clients", "10", "--min-available-clients", "100",
    "--fraction-evaluate", "0", "--num-server-rounds", "5", "--batch-size", "16",
]  # fmt: skip


@dataclass
class Timing:
    """Wall time of a run and the end of each round's central evaluation (round 0 first);
    the final central accuracy and, where known, the clients each round trained."""

    wall: float = 0.0
    marks: list[float] = field(default_factory=list)
    accuracy: float = math.nan
    cohorts: list[list[int]] = field(default_factory=list)

    @property
    def rounds(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]

    @property
    def steady(self) -> float:
        """R steady rounds: R × the mean of rounds 2..R."""
        rounds = self.rounds
        return len(rounds) * statistics.mean(rounds[1:] or rounds)

    @property
    def start_up(self) -> float:
        return self.wall - self.steady


def timed(body: Callable[[Timing], None]) -> Timing:
    """Run ``body(timing)``, which appends a perf_counter time to ``timing.marks`` after each
    central evaluation and sets the final ``accuracy`` (and ``cohorts`` where it knows them).

    This process's data caches are emptied first, so no run starts with another's data.
    """
    for cached in (pool, load_server_data, load_client_data):
        cached.cache_clear()
    timing = Timing()
    start = time.perf_counter()
    body(timing)
    timing.wall = time.perf_counter() - start
    return timing


# ---- (a) the project ------------------------------------------------------------------


class Marks(RunListener):
    def __init__(self, marks: list[float]) -> None:
        self.marks = marks

    def round_done(self, rounds: Sequence[RoundRecord]) -> None:
        self.marks.append(time.perf_counter())


def project(flags: list[str]) -> Timing:
    """The project's simulation on Ray (``--backend ray``)."""
    return project_on([*flags, "--backend", "ray"])


def project_on(flags: list[str]) -> Timing:
    """The project's simulation as ``flags`` (which name the backend) ask."""
    invocation = run_simulation.parse(flags)
    cfg, simulation = invocation.cfg, invocation.simulation

    def body(timing: Timing) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            records = simulation_kit.run(cfg, simulation, listeners=[Marks(timing.marks)])
        timing.accuracy = records[-1]["central_accuracy"]
        timing.cohorts = [list(record.get("sampled_partitions", [])) for record in records[1:]]

    return timed(body)


def project_in_process(flags: list[str]) -> Timing:
    """The project's simulation with its clients in this process (``--backend inprocess``)."""
    return project_on([*flags, "--backend", "inprocess"])


# ---- (b) a plain PyTorch loop ----------------------------------------------------------


def central_evaluation(cfg: RunConfig, model: torch.nn.Module) -> float:
    return evaluate(model, load_server_data(cfg).test, device=torch.device("cpu"))["accuracy"]


def plain_loop(flags: list[str]) -> Timing:
    invocation = run_simulation.parse(flags)
    cfg = invocation.cfg
    num_clients = cfg.num_clients
    per_round = cfg.fit_clients(num_clients)

    def body(timing: Timing) -> None:
        spec = data_spec(cfg)
        model = build_model(cfg.model, spec.input_shape, spec.num_classes, cfg.seed)
        global_weights = get_weights(model)
        central_evaluation(cfg, model)
        timing.marks.append(time.perf_counter())
        rng = np.random.default_rng(cfg.seed)
        for server_round in range(1, cfg.num_server_rounds + 1):
            total = [np.zeros_like(w) for w in global_weights]
            examples = 0
            cohort = rng.choice(num_clients, size=per_round, replace=False)
            timing.cohorts.append(sorted(int(client) for client in cohort))
            for client in cohort:
                data = load_client_data(cfg, int(client), num_clients).train
                set_weights(model, global_weights)
                seed = seed_for(cfg.seed, "local-training", server_round, int(client))
                train_as_configured(cfg, model, data, device=torch.device("cpu"), seed=seed)
                for acc, w in zip(total, get_weights(model), strict=True):
                    acc += len(data) * w
                examples += len(data)
            global_weights = [(acc / examples).astype(np.float32) for acc in total]
            set_weights(model, global_weights)
            timing.accuracy = central_evaluation(cfg, model)
            timing.marks.append(time.perf_counter())

    return timed(body)


# ---- (c) a plain Flower app ------------------------------------------------------------


class PlainClient(NumPyClient):
    def __init__(self, cfg: RunConfig, partition_id: int, num_partitions: int) -> None:
        self.cfg = cfg
        self.data = load_client_data(cfg, partition_id, num_partitions).train
        spec = data_spec(cfg)
        self.model = build_model(cfg.model, spec.input_shape, spec.num_classes, cfg.seed)

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        set_weights(self.model, parameters)
        train_as_configured(self.cfg, self.model, self.data, device=torch.device("cpu"), seed=0)
        return get_weights(self.model), len(self.data), {}


def plain_flower(flags: list[str]) -> Timing:
    from flwr.simulation import run_simulation as flower_run_simulation

    invocation = run_simulation.parse(flags)
    cfg, simulation = invocation.cfg, invocation.simulation
    spec = data_spec(cfg)

    def client_fn(context: Context) -> Client:
        node = context.node_config
        return PlainClient(cfg, int(node["partition-id"]), int(node["num-partitions"])).to_client()

    def body(timing: Timing) -> None:
        model = build_model(cfg.model, spec.input_shape, spec.num_classes, cfg.seed)

        def evaluate_fn(
            server_round: int, parameters: NDArrays, config: dict[str, Scalar]
        ) -> tuple[float, dict[str, Scalar]]:
            set_weights(model, parameters)
            timing.accuracy = central_evaluation(cfg, model)
            timing.marks.append(time.perf_counter())
            return 0.0, {"accuracy": timing.accuracy}

        def server_fn(context: Context) -> ServerAppComponents:
            strategy = FlowerFedAvg(
                fraction_fit=cfg.fraction_fit,
                fraction_evaluate=0.0,
                min_fit_clients=cfg.min_fit_clients,
                min_available_clients=cfg.min_available_clients,
                evaluate_fn=evaluate_fn,
                initial_parameters=ndarrays_to_parameters(get_weights(model)),
            )
            return ServerAppComponents(
                strategy=strategy, config=ServerConfig(num_rounds=cfg.num_server_rounds)
            )

        flower_run_simulation(
            server_app=ServerApp(server_fn=server_fn),
            client_app=ClientApp(client_fn=client_fn),
            num_supernodes=cfg.num_clients,
            backend_config={
                "client_resources": {"num_cpus": simulation.num_cpus, "num_gpus": 0.0},
                "init_args": {"logging_level": "ERROR", "log_to_driver": False},
            },
        )

    return timed(body)


# ---- report ----------------------------------------------------------------------------


def median(timings: Sequence[Timing]) -> Timing:
    """The run with the median steady time (of an even number, the faster middle one)."""
    ordered = sorted(timings, key=lambda timing: timing.steady)
    return ordered[(len(ordered) - 1) // 2]


def median_run(run: Callable[[list[str]], Timing], flags: list[str], repeats: int) -> Timing:
    """Of ``repeats`` runs, the one with the median steady time."""
    return median([run(flags) for _ in range(repeats)])


def report(workload: str, flags: list[str], repeats: int) -> None:
    cfg = run_simulation.parse(flags).cfg
    client_rounds = 10 * cfg.num_server_rounds
    loop = median_run(plain_loop, flags, repeats)
    runs = {
        "plain loop": loop,
        "plain flower": median_run(plain_flower, flags, repeats),
        "project (Ray)": median_run(project, flags, repeats),
        "project (in process)": median_run(project_in_process, flags, repeats),
    }
    per_client = 1000 * loop.steady / client_rounds
    print(
        f"\n{workload}: {cfg.dataset} {cfg.model}, 100 clients, 10 per round, "
        f"{cfg.num_server_rounds} rounds, {cfg.local_epochs} local epochs; the plain loop "
        f"spends {per_client:.1f} ms per client-round (training, averaging, evaluation)\n"
    )
    print(
        "| run | wall (s) | start-up (s) | round 1 (s) | rounds 2..R mean (s) "
        "| steady (s) | × loop (wall) | × loop (steady) | overhead / client-round (ms) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, timing in runs.items():
        overhead = 1000 * (timing.steady - loop.steady) / client_rounds
        print(
            f"| {name} | {timing.wall:.2f} | {timing.start_up:.2f} | {timing.rounds[0]:.3f} "
            f"| {statistics.mean(timing.rounds[1:]):.3f} | {timing.steady:.2f} "
            f"| {timing.wall / loop.wall:.2f} | {timing.steady / loop.steady:.2f} "
            f"| {overhead:.1f} |",
            flush=True,
        )


def main() -> None:
    logging.getLogger("flwr").setLevel(logging.ERROR)  # the plain Flower app's round logs
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each; the median (by steady time) counts"
    )
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}; the plain loop trains with {torch.get_num_threads()} threads, "
        "the simulations run one single-threaded client per CPU"
    )
    with tempfile.TemporaryDirectory() as out:
        for workload, flags in WORKLOADS.items():
            if args.workload in (workload, "all"):
                report(workload, [*COMMON, *flags, "--output-dir", out], args.repeats)


if __name__ == "__main__":
    main()
