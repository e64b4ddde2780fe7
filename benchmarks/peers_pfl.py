"""pfl-research's side of ``benchmarks/peers.py``: the workload peers.py exported, run by pfl.

It runs in pfl's own virtual environment (pfl 0.6 pins ``dp-accounting<0.6``; the project's
``flwr[dp]`` needs 0.6), which peers.py starts for it; what it takes from the project is
the model (``fl_app.models``, torch only), not Flower. The client datasets, the test set and
each round's cohort come in the workload file, so pfl trains on exactly the project's
partitions and the clients the project's seeded sampling picks.

pfl's single-process simulation (``SimulatedBackend``): the cohort trains one client after
another in this process; pfl's multi-worker mode (one process per worker, launched by its
own distributed setup) is not used. Local training is pfl's (``PyTorchModel`` with SGD and
momentum, a fresh optimizer per client); aggregation is pfl's FedAvg weighted by data points
and applied with a central SGD of learning rate 1 (θ += the weighted mean update).

    .venv-pfl/bin/python benchmarks/peers_pfl.py WORKLOAD.npz RESULT.json
    .venv-pfl/bin/python benchmarks/peers_pfl.py WORKLOAD.npz SEEN.npz --check
"""

from __future__ import annotations

import time

IMPORTS_START = time.perf_counter()

import argparse  # noqa: E402  (the imports are timed)
import functools  # noqa: E402
import json  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pfl  # noqa: E402
import torch  # noqa: E402
import torch._dynamo  # noqa: E402  (else imported at the first optimizer, in the clock)
from numpy.typing import NDArray  # noqa: E402
from pfl.aggregate.simulate import SimulatedBackend  # noqa: E402
from pfl.aggregate.weighting import WeightByDatapoints  # noqa: E402
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams  # noqa: E402
from pfl.callback.base import TrainingProcessCallback  # noqa: E402
from pfl.data.dataset import Dataset  # noqa: E402
from pfl.data.federated_dataset import FederatedDataset  # noqa: E402
from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams  # noqa: E402
from pfl.internal.ops.pytorch_ops import get_default_device  # noqa: E402
from pfl.metrics import Metrics, StringMetricName, Weighted  # noqa: E402
from pfl.model.pytorch import PyTorchModel  # noqa: E402
from torch import nn  # noqa: E402

from fl_app.task import build_model  # noqa: E402

IMPORTS_SECONDS = time.perf_counter() - IMPORTS_START
ACCURACY = StringMetricName("Central val | accuracy")


@dataclass(frozen=True)
class Workload:
    """What ``benchmarks/peers.py`` writes: the settings, every client's training data,
    the server's test set and each round's cohort (rows: rounds, columns: client ids)."""

    settings: dict[str, Any]
    clients: list[tuple[NDArray[np.float32], NDArray[np.int64]]]
    test: tuple[NDArray[np.float32], NDArray[np.int64]]
    cohorts: NDArray[np.int64]

    @staticmethod
    def load(path: Path) -> Workload:
        with np.load(path) as arrays:
            ends = np.cumsum(arrays["client_sizes"])
            xs = np.split(arrays["client_x"], ends[:-1])
            ys = np.split(arrays["client_y"], ends[:-1])
            return Workload(
                settings=json.loads(str(arrays["settings"])),
                clients=list(zip(xs, ys, strict=True)),
                test=(arrays["test_x"], arrays["test_y"]),
                cohorts=arrays["cohorts"],
            )


class Classifier(nn.Module):
    """The project's model with the ``loss`` and ``metrics`` that pfl's PyTorchModel calls."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)  # type: ignore[no-any-return]

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.train()
        return nn.functional.cross_entropy(self(inputs), targets)

    @torch.no_grad()
    def metrics(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        self.eval()
        logits = self(inputs)
        n = len(targets)
        return {
            "loss": Weighted(
                nn.functional.cross_entropy(logits, targets, reduction="sum").item(), n
            ),
            "accuracy": Weighted((logits.argmax(dim=1) == targets).sum().item(), n),
        }


def classifier(settings: dict[str, Any]) -> Classifier:
    """The project's architecture with the project's initial weights (same seed)."""
    net = build_model(
        settings["model"], tuple(settings["input_shape"]), settings["num_classes"], settings["seed"]
    )
    return Classifier(net)


def cohort_sampler(cohorts: NDArray[np.int64]) -> Iterator[int]:
    """pfl's user sampler (called once per user): the rounds' cohorts, one after another."""
    for cohort in cohorts:
        yield from (int(user) for user in cohort)


def federated_dataset(workload: Workload) -> FederatedDataset:
    tensors = [
        (torch.from_numpy(x), torch.from_numpy(y)) for x, y in workload.clients
    ]  # pfl's own benchmarks hand it tensors (``numpy_to_tensor``)
    users = cohort_sampler(workload.cohorts)
    return FederatedDataset.from_slices(tensors, lambda: next(users))


class CentralEvaluation(TrainingProcessCallback):
    """Central evaluation of the global model before training and after every round, and
    the time each ends. (pfl's CentralEvaluationCallback does not evaluate after round 1:
    it reports its evaluation before training as round 1's.)"""

    def __init__(self, test: Dataset, eval_params: NNEvalHyperParams) -> None:
        self.test = test
        self.eval_params = eval_params
        self.marks: list[float] = []
        self.accuracy = float("nan")

    def evaluate(self, model: PyTorchModel) -> Metrics:
        metrics = model.evaluate(
            self.test,
            name_formatting_fn=lambda name: StringMetricName(f"Central val | {name}"),
            eval_params=self.eval_params,
        )
        self.accuracy = float(metrics[ACCURACY].overall_value)
        self.marks.append(time.perf_counter())
        return metrics

    def on_train_begin(self, *, model: PyTorchModel) -> Metrics:
        # Not reported: pfl adds these metrics to round 1's, which reports its own.
        self.evaluate(model)
        return Metrics()

    def after_central_iteration(
        self, aggregate_metrics: Metrics, model: PyTorchModel, *, central_iteration: int
    ) -> tuple[bool, Metrics]:
        return False, self.evaluate(model)


def run(path: Path) -> dict[str, Any]:
    """Load the workload and train: the wall time runs from loading it to the end."""
    start = time.perf_counter()
    workload = Workload.load(path)
    settings = workload.settings
    torch.manual_seed(settings["seed"])
    np.random.seed(settings["seed"])  # pfl's own seeds (its per-user seeds) come from numpy
    network = classifier(settings)
    model = PyTorchModel(
        model=network,
        local_optimizer_create=functools.partial(torch.optim.SGD, momentum=settings["momentum"]),
        central_optimizer=torch.optim.SGD(network.parameters(), lr=1.0),
    )
    backend = SimulatedBackend(
        training_data=federated_dataset(workload),
        val_data=None,
        postprocessors=[WeightByDatapoints()],
    )
    rounds = len(workload.cohorts)
    evaluation = CentralEvaluation(
        Dataset(raw_data=[torch.from_numpy(a) for a in workload.test]),
        NNEvalHyperParams(local_batch_size=1024),
    )
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(
            central_num_iterations=rounds,
            # pfl evaluates the training cohort before and after local training whenever
            # central_iteration % evaluation_frequency == 0: only in round 1 here.
            evaluation_frequency=rounds,
            train_cohort_size=workload.cohorts.shape[1],
            val_cohort_size=None,
        ),
        backend=backend,
        model=model,
        model_train_params=NNTrainHyperParams(
            local_num_epochs=settings["local_epochs"],
            local_learning_rate=settings["learning_rate"],
            local_batch_size=settings["batch_size"],
        ),
        model_eval_params=NNEvalHyperParams(local_batch_size=settings["batch_size"]),
        callbacks=[evaluation],
    )
    return {
        "wall": time.perf_counter() - start,
        "marks": [mark - start for mark in evaluation.marks],
        "accuracy": evaluation.accuracy,
        "imports": IMPORTS_SECONDS,
        "pfl": pfl.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(get_default_device()),
    }


def check(path: Path) -> dict[str, NDArray[Any]]:
    """What pfl is handed, without training: each round's cohort as pfl's FederatedDataset
    yields it (user ids and their data, concatenated) and the model's initial parameters."""
    workload = Workload.load(path)
    federated = federated_dataset(workload)
    seen: dict[str, NDArray[Any]] = {}
    users = []
    for r in range(len(workload.cohorts)):
        cohort = [dataset for dataset, _ in federated.get_cohort(workload.cohorts.shape[1])]
        users.append([int(dataset.user_id) for dataset in cohort])
        seen[f"round{r + 1}_x"] = np.concatenate([d.raw_data[0].numpy() for d in cohort])
        seen[f"round{r + 1}_y"] = np.concatenate([d.raw_data[1].numpy() for d in cohort])
    seen["users"] = np.array(users, dtype=np.int64)
    network = classifier(workload.settings)
    for i, parameter in enumerate(network.parameters()):
        seen[f"parameter{i}"] = parameter.detach().numpy()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--check", action="store_true", help=check.__doc__)
    args = parser.parse_args()
    if args.check:
        seen: dict[str, Any] = check(args.workload)
        np.savez(args.out, **seen)
    else:
        args.out.write_text(json.dumps(run(args.workload)))


if __name__ == "__main__":
    main()
