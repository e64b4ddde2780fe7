"""What a user edits: the data, the model, and how a client trains and evaluates. No Flower.

Like Flower's quickstart ``task.py``, in order: the data, the model, training, evaluation. The
run config's ``dataset`` and ``model`` name entries of ``DATASETS`` and ``MODELS``.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from fl_app.kit.keys import ConfigError
from fl_app.kit.seeds import seed_for

Weights = list[NDArray[Any]]
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ArrayDataset:
    """Features ``x`` (float32, ``(N, *input_shape)``) and targets ``y`` (int64 labels, or
    float32 ``(N, targets)`` for regression)."""

    x: NDArray[np.float32]
    y: NDArray[Any]

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: NDArray[np.int64]) -> ArrayDataset:
        return ArrayDataset(self.x[indices], self.y[indices])

    @staticmethod
    def concat(parts: list[ArrayDataset]) -> ArrayDataset:
        return ArrayDataset(
            np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts])
        )


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know of the data: ``num_classes`` is its output width."""

    input_shape: tuple[int, ...]
    num_classes: int
    task: str = "classification"  # or "regression": the loss and the metrics


@dataclass(frozen=True)
class ServerData:
    test: ArrayDataset  # central evaluation
    val: ArrayDataset  # server-side quality scoring
    spec: DataSpec


class Dataset:
    """A dataset the config can name. ``features``: ``images`` (``(C, H, W)``) or ``vectors``.
    ``partitioned``: the ``partitioner`` splits it; when False (data made per client) the
    dataset implements the three methods itself."""

    features = "images"
    task = "classification"  # or "regression"
    partitioned = True

    def server_data(self, cfg: Any) -> ServerData:
        raise NotImplementedError

    def client_data(self, cfg: Any, partition_id: int, num_partitions: int) -> ArrayDataset:
        raise NotImplementedError

    def spec(self, cfg: Any) -> DataSpec:
        raise NotImplementedError


@dataclass(frozen=True)
class Pooled(Dataset):
    """A dataset loaded whole: ``load(cfg)`` gives ``(train, test or None)``. The kit
    (``fl_app.kit.data``) splits it, by seed, into the server's test and validation sets
    and a client pool that the ``partitioner`` splits over the clients."""

    load: Callable[[Any], tuple[ArrayDataset, ArrayDataset | None]]
    features: str = "images"
    task: str = "classification"


def _digits(cfg: Any) -> tuple[ArrayDataset, ArrayDataset | None]:
    """scikit-learn's bundled 8×8 digits, read from its file as ``load_digits`` does
    (importing scikit-learn would cost every simulation process a second)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("dataset 'digits' needs scikit-learn installed (it ships the file)")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    rows = np.loadtxt(path, delimiter=",")
    x = (rows[:, :-1].reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    return ArrayDataset(x, rows[:, -1].astype(np.int64)), None


# name -> dataset; prefix -> the family of datasets named "<prefix><name>".
DATASETS: dict[str, Dataset] = {"digits": Pooled(_digits)}
DATASET_PREFIXES: dict[str, Callable[[str], Dataset]] = {}


def dataset_of(name: str) -> Dataset:
    """The dataset ``name`` (KeyError for an unknown one)."""
    for prefix, make in DATASET_PREFIXES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return make(name.removeprefix(prefix))
    return DATASETS[name]


def mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """McMahan et al.'s "2NN": two hidden layers of 200 ReLU units."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), 200),
        nn.ReLU(),
        nn.Linear(200, 200),
        nn.ReLU(),
        nn.Linear(200, num_classes),
    )


@dataclass(frozen=True)
class Architecture:
    """A model's builder, and whether it needs image inputs ``(C, H, W)``."""

    build: Callable[[tuple[int, ...], int], nn.Module]
    images_only: bool = False


# name -> model. Add a model: a builder above and one entry here.
MODELS: dict[str, Architecture] = {"mlp": Architecture(mlp)}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """Model ``name`` with weights initialised from ``seed`` (same seed: same weights)."""
    if name not in MODELS:
        raise ConfigError(
            f"config 'model' = {name!r} is not allowed: must be one of {', '.join(MODELS)}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(seed, "model-init"))
        return MODELS[name].build(input_shape, num_classes)


def get_weights(model: nn.Module) -> Weights:
    """The model's state as numpy arrays: copies (one model serves all clients of a process)."""
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def set_weights(model: nn.Module, weights: Weights) -> None:
    keys = model.state_dict().keys()
    if len(weights) != len(keys):
        raise ValueError(f"got {len(weights)} arrays for a model with {len(keys)} tensors")
    state = {k: torch.from_numpy(np.asarray(w)) for k, w in zip(keys, weights, strict=True)}
    model.load_state_dict(state, strict=True)


def batches(
    data: ArrayDataset, batch_size: int, device: torch.device, generator: torch.Generator | None
) -> Iterator[Batch]:
    """Mini-batches on ``device``, shuffled when a ``generator`` is given (drawn on the CPU,
    so the same on any device)."""
    x = torch.from_numpy(data.x).to(device)
    y = torch.from_numpy(data.y).to(device)
    order = None if generator is None else torch.randperm(len(data), generator=generator).to(device)
    for start in range(0, len(data), batch_size):
        rows = slice(start, start + batch_size)
        yield (x[rows], y[rows]) if order is None else (x[order[rows]], y[order[rows]])


def loss_function(task: str, reduction: str = "mean") -> nn.Module:
    if task == "regression":
        return nn.MSELoss(reduction=reduction)
    return nn.CrossEntropyLoss(reduction=reduction)


def train(
    model: nn.Module,
    data: ArrayDataset,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    momentum: float,
    device: torch.device,
    seed: int,
    task: str = "classification",
) -> float:
    """SGD on ``data`` for ``epochs``, in place; the mean training loss of the last epoch."""
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum)
    generator = torch.Generator().manual_seed(seed)

    def shuffled() -> Iterator[Batch]:
        return batches(data, batch_size, device, generator)

    return train_epochs(model, optimizer, loss_function(task), epochs, shuffled)


def train_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    epochs: int,
    epoch_batches: Callable[[], Iterable[Batch]],
) -> float:
    """The training loop; the mean loss of the last epoch (NaN when it saw no example)."""
    loss_sum, seen = 0.0, 0
    for _ in range(epochs):
        loss_sum, seen = 0.0, 0
        for xb, yb in epoch_batches():
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()  # also on an empty batch: an optimizer may add noise to it
            if len(yb):
                loss_sum += loss.item() * len(yb)
                seen += len(yb)
    return loss_sum / seen if seen else math.nan


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float  # NaN for regression
    num_examples: int

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """``{prefix}loss`` and, for classification, ``{prefix}accuracy``."""
        values = {f"{prefix}loss": self.loss}
        if not math.isnan(self.accuracy):
            values[f"{prefix}accuracy"] = self.accuracy
        return values


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    task: str = "classification",
    batch_size: int = 1024,
) -> EvalResult:
    """Mean loss (per example and output) and accuracy on ``data``; NaN for an empty set."""
    if len(data) == 0:
        return EvalResult(math.nan, math.nan, 0)
    model.to(device).eval()
    criterion = loss_function(task, reduction="sum")
    loss_sum, correct = 0.0, 0
    for xb, yb in batches(data, batch_size, device, generator=None):
        outputs = model(xb)
        loss_sum += criterion(outputs, yb).item()
        if task != "regression":
            correct += (outputs.argmax(dim=1) == yb).sum().item()
    if task == "regression":  # the mean over every output of every example
        return EvalResult(loss_sum / (len(data) * data.y.shape[1]), math.nan, len(data))
    return EvalResult(loss_sum / len(data), correct / len(data), len(data))
