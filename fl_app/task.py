"""What a user edits, like Flower's quickstart ``task.py``: the data, the model, training and
evaluation (no Flower). The run config's ``dataset`` and ``model`` name entries of
``DATASETS`` and ``MODELS``."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Iterator
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
    """A dataset the config can name, of ``images`` ``(C, H, W)`` or ``vectors``. The
    ``partitioner`` splits it, or (``partitioned = False``) it makes each client's data."""

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
    """A dataset loaded whole: ``load(cfg)`` gives ``(train, test or None)``, which the kit
    splits, by seed, into the server's test and validation sets and the clients' pool."""

    load: Callable[[Any], tuple[ArrayDataset, ArrayDataset | None]]
    features: str = "images"
    task: str = "classification"


def _digits(cfg: Any) -> tuple[ArrayDataset, ArrayDataset | None]:
    """scikit-learn's 8×8 digits, read from its file (importing scikit-learn costs a second)."""
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
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches on ``device``, shuffled when a ``generator`` is given (drawn on the CPU,
    so the same on any device)."""
    x = torch.from_numpy(data.x).to(device)
    y = torch.from_numpy(data.y).to(device)
    order = None if generator is None else torch.randperm(len(data), generator=generator).to(device)
    for start in range(0, len(data), batch_size):
        rows = slice(start, start + batch_size)
        yield (x[rows], y[rows]) if order is None else (x[order[rows]], y[order[rows]])


def loss_function(task: str, reduction: str = "mean") -> nn.Module:
    return (nn.MSELoss if task == "regression" else nn.CrossEntropyLoss)(reduction=reduction)


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
    proximal_mu: float = 0.0,
) -> float:
    """SGD on ``data`` for ``epochs``, in place; the mean training loss of the last epoch
    (NaN when there was none). ``proximal_mu`` μ > 0: FedProx (Li et al. 2020), each step's
    loss plus (μ/2)‖w − w_0‖², w_0 the weights it started from (the global model)."""
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum)
    criterion = loss_function(task)
    generator = torch.Generator().manual_seed(seed)
    start = [p.detach().clone() for p in model.parameters()] if proximal_mu else []
    loss_sum, seen = 0.0, 0
    for _ in range(epochs):
        loss_sum, seen = 0.0, 0
        for xb, yb in batches(data, batch_size, device, generator):
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(xb), yb)  # reported; the step's adds the proximal term
            pairs = zip(model.parameters(), start, strict=False)  # none while μ = 0
            pull = sum((p - p0).square().sum() for p, p0 in pairs)
            (loss + proximal_mu / 2 * pull if start else loss).backward()
            optimizer.step()
            loss_sum, seen = loss_sum + loss.item() * len(yb), seen + len(yb)
    return loss_sum / seen if seen else math.nan


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    task: str = "classification",
    batch_size: int = 1024,
) -> dict[str, float]:
    """``loss`` (the mean per example and output; NaN on no data) and, for classification,
    ``accuracy`` of ``model`` on ``data``."""
    if len(data) == 0:
        return {"loss": math.nan}
    model.to(device).eval()
    criterion = loss_function(task, reduction="sum")
    loss_sum, correct = 0.0, 0
    for xb, yb in batches(data, batch_size, device, generator=None):
        outputs = model(xb)
        loss_sum += criterion(outputs, yb).item()
        correct += (outputs.argmax(dim=1) == yb).sum().item() if task != "regression" else 0
    if task == "regression":  # the mean over every output of every example
        return {"loss": loss_sum / (len(data) * data.y.shape[1])}
    return {"loss": loss_sum / len(data), "accuracy": correct / len(data)}
