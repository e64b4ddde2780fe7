"""Local training and evaluation loops, model <-> numpy weights, and the server's model
(initial weights, central evaluation, scoring) that the federated server and the
centralized reference share. Knows nothing of Flower."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from fl_app.data import ArrayDataset, load_server_data, task_of
from fl_app.models import build_model

if TYPE_CHECKING:
    from fl_app.config import RunConfig

Weights = list[NDArray[np.float32]]


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def get_weights(model: nn.Module) -> Weights:
    """A copy of the model's state as numpy arrays, in ``state_dict`` order.

    A copy, not a view: the model keeps training (one model serves every client of a
    process) and must not change arrays already handed out.
    """
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[NDArray[np.float32]]) -> None:
    """Load numpy arrays (in ``state_dict`` order) into the model."""
    keys = model.state_dict().keys()
    if len(weights) != len(keys):
        raise ValueError(f"got {len(weights)} arrays for a model with {len(keys)} tensors")
    state = OrderedDict(
        (k, torch.from_numpy(np.asarray(w))) for k, w in zip(keys, weights, strict=True)
    )
    model.load_state_dict(state, strict=True)


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


def _batches(
    data: ArrayDataset, batch_size: int, device: torch.device, generator: torch.Generator | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches on ``device``, shuffled when a ``generator`` is given.

    The data goes to the device once per call (one copy per client and round on a GPU,
    not one per batch); the shuffle is drawn on the CPU, so it is the same on any device.
    """
    x = torch.from_numpy(data.x).to(device)
    y = torch.from_numpy(data.y).to(device)
    order = torch.randperm(len(data), generator=generator) if generator is not None else None
    if order is not None:
        order = order.to(device)
    for start in range(0, len(data), batch_size):
        rows = (
            order[start : start + batch_size]
            if order is not None
            else slice(start, start + batch_size)
        )
        yield x[rows], y[rows]


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
    """SGD on ``data`` for ``epochs``; returns the mean training loss of the last epoch.

    The loss is cross-entropy for classification and mean squared error for regression.
    """
    model.to(device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum)
    criterion = loss_function(task)
    generator = torch.Generator().manual_seed(seed)
    loss_sum, seen = 0.0, 0
    for _ in range(epochs):
        loss_sum, seen = 0.0, 0
        for xb, yb in _batches(data, batch_size, device, generator):
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(yb)
            seen += len(yb)
    return loss_sum / seen if seen else math.nan


def train_as_configured(
    cfg: RunConfig, model: nn.Module, data: ArrayDataset, *, device: torch.device, seed: int
) -> float:
    """:func:`train` with the run's local-training knobs (epochs, batch size, SGD)."""
    return train(
        model,
        data,
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        momentum=cfg.momentum,
        device=device,
        seed=seed,
        task=task_of(cfg.dataset),
    )


def loss_function(task: str, reduction: str = "mean") -> nn.Module:
    """Cross-entropy for classification, mean squared error for regression."""
    return (
        nn.MSELoss(reduction=reduction)
        if task == "regression"
        else nn.CrossEntropyLoss(reduction=reduction)
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    task: str = "classification",
    batch_size: int = 1024,
) -> EvalResult:
    """Mean loss and accuracy on ``data``; accuracy is NaN for regression or an empty set.

    For regression the loss is the mean squared error per example.
    """
    if len(data) == 0:
        return EvalResult(math.nan, math.nan, 0)
    model.to(device)
    model.eval()
    criterion = loss_function(task, reduction="sum")
    loss_sum, correct = 0.0, 0
    for xb, yb in _batches(data, batch_size, device, generator=None):
        outputs = model(xb)
        loss_sum += criterion(outputs, yb).item()
        if task != "regression":
            correct += (outputs.argmax(dim=1) == yb).sum().item()
    outputs_per_example = data.y.shape[1] if task == "regression" else 1
    accuracy = math.nan if task == "regression" else correct / len(data)
    return EvalResult(loss_sum / (len(data) * outputs_per_example), accuracy, len(data))


class ServerModel:
    """The server's model and data: the initial global model, central evaluation, scoring."""

    def __init__(self, cfg: RunConfig) -> None:
        self.data = load_server_data(cfg)
        self.device = pick_device(cfg.device)
        spec = self.data.spec
        self.model = build_model(cfg.model, spec.input_shape, spec.num_classes, cfg.seed).to(
            self.device
        )
        self.initial = get_weights(self.model)

    def central(self, arrays: list[NDArray[Any]] | None = None) -> dict[str, Any]:
        """``central_loss`` / ``central_accuracy`` of ``arrays`` (default: the model as it
        is) on the server test set."""
        if arrays is not None:
            set_weights(self.model, arrays)
        result = evaluate(self.model, self.data.test, device=self.device, task=self.data.spec.task)
        return {f"central_{k}": v for k, v in result.metrics().items()}

    def score(self, arrays: Sequence[Any]) -> dict[str, float]:
        """A client model's ``val_*`` metrics on the server validation set."""
        set_weights(self.model, list(arrays))
        return evaluate(
            self.model, self.data.val, device=self.device, task=self.data.spec.task
        ).metrics(prefix="val_")

    def save(self, arrays: Weights, path: Path) -> None:
        """``arrays`` as the model's torch ``state_dict`` in ``path``."""
        set_weights(self.model, arrays)
        torch.save(self.model.state_dict(), path)
